//! Every stable error code the relay sends — in admin API error bodies, in
//! control-channel `hello_result`, `error` and reply frames — as one enum.
//!
//! Code that refuses something names an [`ErrorCode`], never a string: a
//! typo is a compile error, and [`ErrorCode::as_str`], [`ErrorCode::ALL`]
//! and the surfaces a code appears on come from one list (a new variant
//! without a name or a surface does not compile). Tests check the protocol
//! document and the OpenAPI document against these lists.

/// Where a code can appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Both the admin API (error bodies) and the control channel (replies).
    Both,
    /// The admin HTTP API only.
    Admin,
    /// The control channel only (`hello_result`, `error`).
    Channel,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $surface:ident; )+) => {
        /// A stable error code (snake_case on the wire).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: [ErrorCode; [$($name),+].len()] = [$(ErrorCode::$variant),+];

            /// Its name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)+
                }
            }

            /// Where it can appear.
            pub fn surface(self) -> Surface {
                match self {
                    $(ErrorCode::$variant => Surface::$surface,)+
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON of the expected shape.
    InvalidJson => "invalid_json", Both;
    /// A field has a value outside its range or format.
    InvalidField => "invalid_field", Both;
    /// The session request is refused by the relay's rules (a range, a
    /// credential rule).
    InvalidSpec => "invalid_spec", Both;
    /// A session id is not 16 hex digits.
    InvalidId => "invalid_id", Both;
    /// No such session (or another tenant's).
    UnknownSession => "unknown_session", Both;
    /// A connector named another tenant.
    ForbiddenTenant => "forbidden_tenant", Channel;
    /// An address the peer policy refuses (the relay's own, a private network...).
    ForbiddenAddress => "forbidden_address", Both;
    /// An update needs credentials the session does not hold.
    MissingCredentials => "missing_credentials", Both;
    /// The tenant holds its maximum of sessions or ports.
    QuotaExceeded => "quota_exceeded", Both;
    /// No free ports.
    PortsExhausted => "ports_exhausted", Both;
    /// A shard's command queue is full; retry.
    Busy => "busy", Both;
    /// The relay drains and takes no new sessions.
    Draining => "draining", Both;
    /// The relay is a cluster standby; another node serves.
    Standby => "standby", Both;
    /// A cluster node could not store the change in its shared store in
    /// time; nothing was created. Retry.
    NotReplicated => "not_replicated", Both;
    /// The relay (or the shard holding the session) has stopped.
    Stopped => "stopped", Both;
    /// A replicated session cannot resume here (its ports or slot are in
    /// use, or the layout differs from the relay that exported it).
    RestoreConflict => "restore_conflict", Admin;
    /// No or wrong bearer token.
    Unauthorized => "unauthorized", Admin;
    /// Tokenless mode and a `Host` that is not localhost.
    ForbiddenHost => "forbidden_host", Admin;
    /// A malformed query string.
    InvalidQuery => "invalid_query", Admin;
    /// No such route.
    NotFound => "not_found", Admin;
    /// The route does not take that method.
    MethodNotAllowed => "method_not_allowed", Admin;
    /// The body is over the limit.
    BodyTooLarge => "body_too_large", Admin;
    /// The body is not `application/json`.
    UnsupportedMediaType => "unsupported_media_type", Admin;
    /// Starting or draining.
    NotReady => "not_ready", Admin;
    /// A shard thread failed.
    ShardFailed => "shard_failed", Admin;
    /// Unknown tenant or wrong token.
    BadCredentials => "bad_credentials", Channel;
    /// Too many failed logins from this source.
    LockedOut => "locked_out", Channel;
    /// The tenant already has a connector (`second_connector = "reject"`).
    Duplicate => "duplicate", Channel;
    /// Another connector took over the tenant.
    Replaced => "replaced", Channel;
    /// The tenant was removed from the configuration.
    TenantRemoved => "tenant_removed", Channel;
    /// The connector asked to expose a service it may not.
    UnknownService => "unknown_service", Channel;
    /// A protocol version this relay does not speak.
    UnsupportedVersion => "unsupported_version", Channel;
    /// The stream does not start with the frame magic.
    BadMagic => "bad_magic", Channel;
    /// A frame type this side does not know.
    UnknownFrameType => "unknown_frame_type", Channel;
    /// A frame over 64 KiB.
    FrameTooLarge => "frame_too_large", Channel;
    /// A frame whose payload is not its message.
    BadMessage => "bad_message", Channel;
    /// A frame other than `hello` before authentication.
    NotAuthenticated => "not_authenticated", Channel;
    /// A frame this side does not expect here.
    UnexpectedFrame => "unexpected_frame", Channel;
    /// No hello in time, or three silent heartbeat intervals.
    Timeout => "timeout", Channel;
    /// The relay is shutting down.
    Shutdown => "shutdown", Channel;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s).ok_or(())
    }
}

impl ErrorCode {
    /// Whether the admin API can answer with it.
    pub fn on_admin_api(self) -> bool {
        matches!(self.surface(), Surface::Both | Surface::Admin)
    }

    /// Whether the control channel can send it.
    pub fn on_control_channel(self) -> bool {
        matches!(self.surface(), Surface::Both | Surface::Channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(c.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{c}");
            assert_eq!(c.as_str().parse::<ErrorCode>(), Ok(c));
        }
    }
}
