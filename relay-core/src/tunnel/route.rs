//! SNI → tenant routing: explicit names first, then domain patterns whose
//! leftmost label is a configured tenant (`{tenant}.relay.example`; any
//! other label is an unknown name, refused as cheaply as one), then — for
//! hellos without SNI only — an optional default tenant.

use std::collections::{HashMap, HashSet};

/// Why a connection has no tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReject {
    /// The hello has no SNI and there is no default tenant.
    NoSni,
    /// No name or pattern matches the SNI.
    UnknownSni,
}

impl RouteReject {
    /// Stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteReject::NoSni => "no_sni",
            RouteReject::UnknownSni => "unknown_sni",
        }
    }
}

/// A pattern or name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteConfigError(pub String);

/// The routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniRouter {
    names: HashMap<String, String>,
    /// Suffixes (".relay.example") of `{tenant}.relay.example` patterns.
    suffixes: Vec<String>,
    /// The tenants a pattern may name.
    tenants: HashSet<String>,
    default_tenant: Option<String>,
}

impl SniRouter {
    /// A router from explicit `name → tenant` pairs, `{tenant}.domain`
    /// patterns (whose label must be one of `tenants`: the configured ones)
    /// and the tenant for hellos without SNI.
    pub fn new(
        names: impl IntoIterator<Item = (String, String)>,
        patterns: &[String],
        tenants: impl IntoIterator<Item = String>,
        default_tenant: Option<String>,
    ) -> Result<Self, RouteConfigError> {
        let mut suffixes = Vec::new();
        for p in patterns {
            let Some(suffix) = p.strip_prefix("{tenant}") else {
                return Err(RouteConfigError(format!("pattern {p:?} must start with {{tenant}}.")));
            };
            let ok = suffix.starts_with('.')
                && suffix.len() > 1
                && !suffix.contains('{')
                && suffix[1..].split('.').all(|l| !l.is_empty());
            if !ok {
                return Err(RouteConfigError(format!("pattern {p:?} must look like {{tenant}}.relay.example")));
            }
            suffixes.push(suffix.to_ascii_lowercase());
        }
        let names = names.into_iter().map(|(n, t)| (n.trim_end_matches('.').to_ascii_lowercase(), t)).collect();
        Ok(Self { names, suffixes, tenants: tenants.into_iter().collect(), default_tenant })
    }

    /// The tenant for a hello's server name (already lowercased).
    pub fn route(&self, sni: Option<&str>) -> Result<String, RouteReject> {
        let Some(name) = sni else {
            return self.default_tenant.clone().ok_or(RouteReject::NoSni);
        };
        if let Some(t) = self.names.get(name) {
            return Ok(t.clone());
        }
        for suffix in &self.suffixes {
            if let Some(label) = name.strip_suffix(suffix.as_str()) {
                if !label.contains('.') && self.tenants.contains(label) {
                    return Ok(label.to_string());
                }
            }
        }
        Err(RouteReject::UnknownSni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_then_patterns_then_default_for_no_sni_only() {
        let r = SniRouter::new(
            [("pbx.globex.com.".to_string(), "globex".to_string())],
            &["{tenant}.relay.example".to_string()],
            ["acme".to_string(), "globex".to_string()],
            Some("fallback".into()),
        )
        .expect("valid");
        assert_eq!(r.route(Some("pbx.globex.com")), Ok("globex".into()));
        assert_eq!(r.route(Some("acme.relay.example")), Ok("acme".into()));
        assert_eq!(r.route(Some("ghost.relay.example")), Err(RouteReject::UnknownSni), "not a configured tenant");
        assert_eq!(r.route(Some("a.b.relay.example")), Err(RouteReject::UnknownSni), "one label only");
        assert_eq!(r.route(Some("relay.example")), Err(RouteReject::UnknownSni));
        assert_eq!(r.route(Some("evilrelay.example")), Err(RouteReject::UnknownSni));
        assert_eq!(r.route(Some("other.example")), Err(RouteReject::UnknownSni), "the default is for no SNI only");
        assert_eq!(r.route(None), Ok("fallback".into()));
        let strict = SniRouter::new([], &[], [], None).expect("empty");
        assert_eq!(strict.route(None), Err(RouteReject::NoSni));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["relay.example", "{tenant}relay.example", "{tenant}.", "x.{tenant}.example", "{tenant}..example"] {
            assert!(SniRouter::new([], &[p.to_string()], [], None).is_err(), "{p}");
        }
    }
}
