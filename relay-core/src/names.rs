//! Enums whose values have stable names: settings (`latch = "window"`,
//! `datapath = "uring"`) with one parser for the library, the admin API, the
//! control channel and the `ucmrc` configuration file, and code lists.
//!
//! `named!` declares such an enum from one list of variants and names: the
//! settings here, and the code lists (error codes, drop reasons, tunnel
//! rejections) whose names are stable on the wire and in metrics.
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

/// Declares an enum whose variants carry no data, each with its stable
/// name, from one list: the enum, `ALL` (every variant in declaration order:
/// it sizes counter arrays), `NAMES`, `as_str`, `Display`, `FromStr` (with
/// [`UnknownName`]) and, with the `serde` feature, `Serialize`/`Deserialize`
/// as the name. A variant without a name does not compile.
///
/// ```text
/// named! {
///     /// Which packets must carry a valid tag.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum Verify {
///         /// Only packets that try to latch.
///         Latch => "latch",
///         /// Every packet.
///         All => "all",
///     }
/// }
/// ```
#[allow(unused_macros)] // a build with no features declares none
macro_rules! named {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $ty {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// Its stable name (configuration, wire, metrics labels).
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
    crate::names::named! {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Colour {
            Red => "red",
            Green => "green",
        }
    }

    #[test]
    fn names_parse_print_and_refuse_what_is_not_one_of_them() {
        assert_eq!("green".parse::<Colour>(), Ok(Colour::Green));
        assert_eq!(Colour::Red.to_string(), "red");
        assert_eq!(Colour::NAMES, ["red", "green"]);
        assert_eq!(Colour::ALL, [Colour::Red, Colour::Green]);
        let e = "Green".parse::<Colour>().expect_err("names are case-sensitive");
        assert_eq!(e.to_string(), "\"Green\" is not one of red, green");
    }
}
