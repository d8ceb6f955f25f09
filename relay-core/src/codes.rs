//! Every stable error code the relay sends — in admin API error bodies, in
//! control-channel `hello_result`, `error` and reply frames — as one enum.
//!
//! Code that refuses something names an [`ErrorCode`], never a string: a
//! typo is a compile error, and [`ErrorCode::as_str`] and [`ErrorCode::ALL`]
//! come from one list (`names::named!`), the surfaces a code appears on from
//! an exhaustive match (a new variant without a name or a surface does not
//! compile). Tests check the protocol
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

crate::names::named! {
    /// A stable error code (snake_case on the wire).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum ErrorCode {
        /// The body is not JSON of the expected shape.
        InvalidJson => "invalid_json",
        /// A field has a value outside its range or format.
        InvalidField => "invalid_field",
        /// The session request is refused by the relay's rules (a range, a
        /// credential rule).
        InvalidSpec => "invalid_spec",
        /// A session id is not 16 hex digits.
        InvalidId => "invalid_id",
        /// No such session (or another tenant's).
        UnknownSession => "unknown_session",
        /// A connector named another tenant.
        ForbiddenTenant => "forbidden_tenant",
        /// An address the peer policy refuses (the relay's own, a private network...).
        ForbiddenAddress => "forbidden_address",
        /// An update needs credentials the session does not hold.
        MissingCredentials => "missing_credentials",
        /// The tenant holds its maximum of sessions or ports.
        QuotaExceeded => "quota_exceeded",
        /// No free ports.
        PortsExhausted => "ports_exhausted",
        /// A shard's command queue is full; retry.
        Busy => "busy",
        /// The relay drains and takes no new sessions.
        Draining => "draining",
        /// The relay is a cluster standby; another node serves.
        Standby => "standby",
        /// A cluster node could not store the change in its shared store in
        /// time; nothing was created. Retry.
        NotReplicated => "not_replicated",
        /// The relay (or the shard holding the session) has stopped.
        Stopped => "stopped",
        /// A replicated session cannot resume here (its ports or slot are in
        /// use, or the layout differs from the relay that exported it).
        RestoreConflict => "restore_conflict",
        /// No or wrong bearer token.
        Unauthorized => "unauthorized",
        /// Tokenless mode and a `Host` that is not localhost.
        ForbiddenHost => "forbidden_host",
        /// A malformed query string.
        InvalidQuery => "invalid_query",
        /// No such route.
        NotFound => "not_found",
        /// The route does not take that method.
        MethodNotAllowed => "method_not_allowed",
        /// The body is over the limit.
        BodyTooLarge => "body_too_large",
        /// The body is not `application/json`.
        UnsupportedMediaType => "unsupported_media_type",
        /// Starting or draining.
        NotReady => "not_ready",
        /// A shard thread failed.
        ShardFailed => "shard_failed",
        /// Unknown tenant or wrong token.
        BadCredentials => "bad_credentials",
        /// Too many failed logins from this source.
        LockedOut => "locked_out",
        /// The tenant already has a connector (`second_connector = "reject"`).
        Duplicate => "duplicate",
        /// Another connector took over the tenant.
        Replaced => "replaced",
        /// The tenant was removed from the configuration.
        TenantRemoved => "tenant_removed",
        /// The connector asked to expose a service it may not.
        UnknownService => "unknown_service",
        /// A protocol version this relay does not speak.
        UnsupportedVersion => "unsupported_version",
        /// The stream does not start with the frame magic.
        BadMagic => "bad_magic",
        /// A frame type this side does not know.
        UnknownFrameType => "unknown_frame_type",
        /// A frame over 64 KiB.
        FrameTooLarge => "frame_too_large",
        /// A frame whose payload is not its message.
        BadMessage => "bad_message",
        /// A frame other than `hello` before authentication.
        NotAuthenticated => "not_authenticated",
        /// A frame this side does not expect here.
        UnexpectedFrame => "unexpected_frame",
        /// No hello in time, or three silent heartbeat intervals.
        Timeout => "timeout",
        /// The relay is shutting down.
        Shutdown => "shutdown",
        /// TURN credentials were asked for, but the relay has no TURN realm
        /// with shared secrets for the channel's tenant.
        TurnNotConfigured => "turn_not_configured",
    }
}

impl ErrorCode {
    /// Where it can appear (matched exhaustively: a new code names its
    /// surface or does not compile).
    pub fn surface(self) -> Surface {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidField
            | ErrorCode::InvalidSpec
            | ErrorCode::InvalidId
            | ErrorCode::UnknownSession
            | ErrorCode::ForbiddenAddress
            | ErrorCode::MissingCredentials
            | ErrorCode::QuotaExceeded
            | ErrorCode::PortsExhausted
            | ErrorCode::Busy
            | ErrorCode::Draining
            | ErrorCode::Standby
            | ErrorCode::NotReplicated
            | ErrorCode::Stopped => Surface::Both,
            ErrorCode::ForbiddenTenant
            | ErrorCode::BadCredentials
            | ErrorCode::LockedOut
            | ErrorCode::Duplicate
            | ErrorCode::Replaced
            | ErrorCode::TenantRemoved
            | ErrorCode::UnknownService
            | ErrorCode::UnsupportedVersion
            | ErrorCode::BadMagic
            | ErrorCode::UnknownFrameType
            | ErrorCode::FrameTooLarge
            | ErrorCode::BadMessage
            | ErrorCode::NotAuthenticated
            | ErrorCode::UnexpectedFrame
            | ErrorCode::Timeout
            | ErrorCode::Shutdown
            | ErrorCode::TurnNotConfigured => Surface::Channel,
            ErrorCode::RestoreConflict
            | ErrorCode::Unauthorized
            | ErrorCode::ForbiddenHost
            | ErrorCode::InvalidQuery
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::BodyTooLarge
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::NotReady
            | ErrorCode::ShardFailed => Surface::Admin,
        }
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
            assert_eq!(c.as_str().parse::<ErrorCode>().ok(), Some(c));
        }
    }
}
