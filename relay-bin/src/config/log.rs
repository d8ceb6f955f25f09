//! `[log]`: format, filter and address redaction.

use serde::{Deserialize, Serialize};

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `ucmrc=debug,info`.
    pub level: String,
    /// Write `redacted` instead of client addresses in logs.
    pub redact_addresses: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: "human".into(), level: "info".into(), redact_addresses: false }
    }
}

/// Whether `level` is a usable `tracing` filter. Non-ASCII text is refused
/// before the parser sees it: tracing-subscriber 0.3 panics on some
/// multi-byte input (found by the `config` fuzz target). Every directive must
/// be a level or `target=level`: a bare word such as `verbose` parses as "the
/// target `verbose` at every level", which silences everything else.
pub fn valid_log_filter(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directives_ok = level.split(',').map(str::trim).all(|d| {
        !d.is_empty()
            && match d.rsplit_once('=') {
                Some((target, lvl)) => !target.is_empty() && LEVELS.contains(&lvl.to_ascii_lowercase().as_str()),
                None => LEVELS.contains(&d.to_ascii_lowercase().as_str()),
            }
    });
    level.is_ascii() && directives_ok && tracing_subscriber::EnvFilter::try_new(level).is_ok()
}

/// The format is one of ours and the level a usable filter.
pub(super) fn check(l: &LogSection) -> Result<(), (String, String)> {
    match l.format.as_str() {
        "human" | "json" => {}
        other => return Err(("log.format".into(), format!("{other:?} is not one of human, json"))),
    }
    if !valid_log_filter(&l.level) {
        return Err((
            "log.level".into(),
            format!(
                "{:?} is not a level (error, warn, info, debug, trace, off) or a list of target=level directives",
                l.level
            ),
        ));
    }
    Ok(())
}
