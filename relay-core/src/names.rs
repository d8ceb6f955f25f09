//! Settings that take one of a few names (`latch = "window"`,
//! `datapath = "uring"`): one parser for the library, the admin API, the
//! control channel and the `ucmrc` configuration file.
//!
//! `named!` gives a core enum `as_str`, `NAMES`, `Display`,
//! `FromStr` (with [`UnknownName`]) and, with the `serde` feature,
//! `Serialize`/`Deserialize` as its name — from one list, matched
//! exhaustively, so a new variant without a name does not compile.
#![forbid(unsafe_code)]

/// A name that is not one of a setting's choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not one of {}", expected.join(", "))]
pub struct UnknownName {
    /// What was given.
    pub value: String,
    /// The names accepted.
    pub expected: &'static [&'static str],
}

/// Implements names for an existing enum whose variants carry no data:
/// `named!(Verify { Latch => "latch", All => "all" });`
#[allow(unused_macros)] // without `engine` or `control`, no enum uses it
macro_rules! named {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// Its name in configuration and on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::names::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err($crate::names::UnknownName { value: other.to_string(), expected: Self::NAMES }),
                }
            }
        }

        $crate::names::named_serde!($ty);
    };
}

/// `Serialize`/`Deserialize` as the name (the `serde` feature).
#[cfg(feature = "serde")]
#[allow(unused_macros)]
macro_rules! named_serde {
    ($ty:ident) => {
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <String as ::serde::Deserialize>::deserialize(d)?;
                name.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

/// Without the `serde` feature: nothing.
#[cfg(not(feature = "serde"))]
#[allow(unused_macros)]
macro_rules! named_serde {
    ($ty:ident) => {};
}

#[allow(unused_imports)]
pub(crate) use named;
#[allow(unused_imports)]
pub(crate) use named_serde;

#[cfg(test)]
mod tests {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Colour {
        Red,
        Green,
    }
    crate::names::named!(Colour { Red => "red", Green => "green" });

    #[test]
    fn names_parse_print_and_refuse_what_is_not_one_of_them() {
        assert_eq!("green".parse::<Colour>(), Ok(Colour::Green));
        assert_eq!(Colour::Red.to_string(), "red");
        assert_eq!(Colour::NAMES, ["red", "green"]);
        let e = "Green".parse::<Colour>().expect_err("names are case-sensitive");
        assert_eq!(e.to_string(), "\"Green\" is not one of red, green");
    }
}
