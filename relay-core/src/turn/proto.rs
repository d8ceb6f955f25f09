//! TURN's wire vocabulary (RFC 8656, RFC 6062, RFC 8489): methods,
//! attributes, error codes, message types, and the ChannelData framing.

use std::net::{IpAddr, SocketAddr};

use crate::wire::stun::StunClass;

/// TURN and STUN methods the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Method {
    /// STUN Binding (a client's server-reflexive address).
    Binding = 0x001,
    /// Allocate.
    Allocate = 0x003,
    /// Refresh.
    Refresh = 0x004,
    /// Send (indication).
    Send = 0x006,
    /// Data (indication).
    Data = 0x007,
    /// CreatePermission.
    CreatePermission = 0x008,
    /// ChannelBind.
    ChannelBind = 0x009,
    /// Connect (RFC 6062).
    Connect = 0x00a,
    /// ConnectionBind (RFC 6062).
    ConnectionBind = 0x00b,
    /// ConnectionAttempt (RFC 6062 indication).
    ConnectionAttempt = 0x00c,
}

impl Method {
    /// Every method, in metric-label order.
    pub const ALL: [Method; 10] = [
        Method::Binding,
        Method::Allocate,
        Method::Refresh,
        Method::Send,
        Method::Data,
        Method::CreatePermission,
        Method::ChannelBind,
        Method::Connect,
        Method::ConnectionBind,
        Method::ConnectionAttempt,
    ];

    /// The method with this number.
    pub fn from_number(n: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|m| *m as u16 == n)
    }

    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Method::Binding => "binding",
            Method::Allocate => "allocate",
            Method::Refresh => "refresh",
            Method::Send => "send",
            Method::Data => "data",
            Method::CreatePermission => "create_permission",
            Method::ChannelBind => "channel_bind",
            Method::Connect => "connect",
            Method::ConnectionBind => "connection_bind",
            Method::ConnectionAttempt => "connection_attempt",
        }
    }
}

/// The message type of `method` in `class` (RFC 8489 §5: the class bits
/// interleaved with the method's).
pub fn message_type(method: Method, class: StunClass) -> u16 {
    let m = method as u16;
    let class_bits = match class {
        StunClass::Request => 0x0000,
        StunClass::Indication => 0x0010,
        StunClass::Success => 0x0100,
        StunClass::Error => 0x0110,
    };
    (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | class_bits
}

/// CHANNEL-NUMBER.
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME.
pub const ATTR_LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS.
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA.
pub const ATTR_DATA: u16 = 0x0013;
/// REALM.
pub const ATTR_REALM: u16 = 0x0014;
/// NONCE.
pub const ATTR_NONCE: u16 = 0x0015;
/// XOR-RELAYED-ADDRESS.
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY.
pub const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT.
pub const ATTR_EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT.
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT.
pub const ATTR_DONT_FRAGMENT: u16 = 0x001A;
/// RESERVATION-TOKEN.
pub const ATTR_RESERVATION_TOKEN: u16 = 0x0022;
/// UNKNOWN-ATTRIBUTES.
pub const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// CONNECTION-ID (RFC 6062).
pub const ATTR_CONNECTION_ID: u16 = 0x002A;
/// ADDITIONAL-ADDRESS-FAMILY.
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE.
pub const ATTR_ADDRESS_ERROR_CODE: u16 = 0x8001;
/// ADDITIONAL-ADDRESS-FAMILY at the draft's code point, which coturn and
/// its clients (`turnutils_uclient -Z`) still use.
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
/// ADDRESS-ERROR-CODE at the draft's code point (answered to a request
/// that used [`ATTR_ADDITIONAL_ADDRESS_FAMILY_DRAFT`]).
pub const ATTR_ADDRESS_ERROR_CODE_DRAFT: u16 = 0x8033;
/// SOFTWARE.
pub const ATTR_SOFTWARE: u16 = 0x8022;
/// ICMP.
pub const ATTR_ICMP: u16 = 0x8004;
/// PASSWORD-ALGORITHMS.
pub const ATTR_PASSWORD_ALGORITHMS: u16 = 0x8002;
/// ALTERNATE-DOMAIN.
pub const ATTR_ALTERNATE_DOMAIN: u16 = 0x8003;
/// PASSWORD-ALGORITHM.
pub const ATTR_PASSWORD_ALGORITHM: u16 = 0x001D;
/// USERHASH.
pub const ATTR_USERHASH: u16 = 0x001E;

/// REQUESTED-TRANSPORT's protocol number for UDP.
pub const TRANSPORT_UDP: u8 = 17;
/// REQUESTED-TRANSPORT's protocol number for TCP (RFC 6062).
pub const TRANSPORT_TCP: u8 = 6;

/// Comprehension-required attributes (type < 0x8000) the server
/// understands in requests; any other is answered 420 (Unknown Attribute).
pub const KNOWN_REQUIRED: [u16; 16] = [
    crate::wire::stun::ATTR_USERNAME,
    crate::wire::stun::ATTR_MESSAGE_INTEGRITY,
    crate::wire::stun::ATTR_MESSAGE_INTEGRITY_SHA256,
    crate::wire::stun_writer::ATTR_XOR_MAPPED_ADDRESS,
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    ATTR_XOR_PEER_ADDRESS,
    ATTR_DATA,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    ATTR_DONT_FRAGMENT,
    ATTR_RESERVATION_TOKEN,
    ATTR_CONNECTION_ID,
];

/// The error responses the server gives (RFC 8489 §14.8, RFC 8656 §18,
/// RFC 6062 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// 400 Bad Request.
    BadRequest = 400,
    /// 401 Unauthorized.
    Unauthorized = 401,
    /// 403 Forbidden (a peer the policy refuses).
    Forbidden = 403,
    /// 420 Unknown Attribute.
    UnknownAttribute = 420,
    /// 437 Allocation Mismatch.
    AllocationMismatch = 437,
    /// 438 Stale Nonce.
    StaleNonce = 438,
    /// 440 Address Family not Supported.
    AddressFamilyNotSupported = 440,
    /// 441 Wrong Credentials.
    WrongCredentials = 441,
    /// 442 Unsupported Transport Protocol.
    UnsupportedTransport = 442,
    /// 443 Peer Address Family Mismatch.
    PeerAddressFamilyMismatch = 443,
    /// 446 Connection Already Exists (RFC 6062).
    ConnectionAlreadyExists = 446,
    /// 447 Connection Timeout or Failure (RFC 6062).
    ConnectionFailure = 447,
    /// 486 Allocation Quota Reached.
    AllocationQuotaReached = 486,
    /// 508 Insufficient Capacity.
    InsufficientCapacity = 508,
}

impl ErrorCode {
    /// Every code, in metric-label order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::UnknownAttribute,
        ErrorCode::AllocationMismatch,
        ErrorCode::StaleNonce,
        ErrorCode::AddressFamilyNotSupported,
        ErrorCode::WrongCredentials,
        ErrorCode::UnsupportedTransport,
        ErrorCode::PeerAddressFamilyMismatch,
        ErrorCode::ConnectionAlreadyExists,
        ErrorCode::ConnectionFailure,
        ErrorCode::AllocationQuotaReached,
        ErrorCode::InsufficientCapacity,
    ];

    /// The number (400, 401, ...).
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The RFC's reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad Request",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnknownAttribute => "Unknown Attribute",
            ErrorCode::AllocationMismatch => "Allocation Mismatch",
            ErrorCode::StaleNonce => "Stale Nonce",
            ErrorCode::AddressFamilyNotSupported => "Address Family not Supported",
            ErrorCode::WrongCredentials => "Wrong Credentials",
            ErrorCode::UnsupportedTransport => "Unsupported Transport Protocol",
            ErrorCode::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            ErrorCode::ConnectionAlreadyExists => "Connection Already Exists",
            ErrorCode::ConnectionFailure => "Connection Timeout or Failure",
            ErrorCode::AllocationQuotaReached => "Allocation Quota Reached",
            ErrorCode::InsufficientCapacity => "Insufficient Capacity",
        }
    }
}

/// First and last channel numbers a client may bind: RFC 5766's range.
/// RFC 8656 §12 narrowed it to 0x4000–0x4FFF, but clients of the older RFC
/// (coturn's own among them) still pick numbers up to 0x7FFF, and on a TURN
/// listener nothing else starts with the bits `01`, so accepting them costs
/// nothing.
pub const CHANNEL_NUMBERS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// Length of a ChannelData header.
pub const CHANNEL_HEADER_LEN: usize = 4;

/// A ChannelData message's header read from a datagram: the channel and
/// where its application data lies (after the header; any padding beyond
/// the length is not data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData {
    /// Channel number (0x4000–0x7FFF).
    pub channel: u16,
    /// Application data length.
    pub len: usize,
}

impl ChannelData {
    /// Reads the header of `buf` when it starts with a channel number and
    /// holds the length it names (padding after it allowed, as over TCP).
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let header = buf.get(..CHANNEL_HEADER_LEN)?;
        let channel = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        (CHANNEL_NUMBERS.contains(&channel) && CHANNEL_HEADER_LEN + len <= buf.len()).then_some(Self { channel, len })
    }

    /// The header for `len` bytes on `channel`.
    pub fn header(channel: u16, len: usize) -> [u8; 4] {
        let c = channel.to_be_bytes();
        let l = (len.min(usize::from(u16::MAX)) as u16).to_be_bytes();
        [c[0], c[1], l[0], l[1]]
    }
}

/// The address family of an allocation's relayed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        Self::of_ip(addr.ip())
    }

    /// The family of `ip`.
    pub fn of_ip(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// REQUESTED-ADDRESS-FAMILY's value for it (RFC 8656 §18.12).
    pub fn code(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }

    /// The family a REQUESTED-/ADDITIONAL-ADDRESS-FAMILY value names.
    pub fn from_attribute(value: &[u8]) -> Option<Self> {
        match value {
            [0x01, 0, 0, 0] => Some(Family::V4),
            [0x02, 0, 0, 0] => Some(Family::V6),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_interleave_the_class_bits() {
        // RFC 8656 and RFC 8489's well-known values.
        assert_eq!(message_type(Method::Binding, StunClass::Request), 0x0001);
        assert_eq!(message_type(Method::Binding, StunClass::Success), 0x0101);
        assert_eq!(message_type(Method::Allocate, StunClass::Request), 0x0003);
        assert_eq!(message_type(Method::Allocate, StunClass::Error), 0x0113);
        assert_eq!(message_type(Method::Send, StunClass::Indication), 0x0016);
        assert_eq!(message_type(Method::Data, StunClass::Indication), 0x0017);
        assert_eq!(message_type(Method::ChannelBind, StunClass::Success), 0x0109);
        assert_eq!(message_type(Method::ConnectionAttempt, StunClass::Indication), 0x001c);
        for m in Method::ALL {
            assert_eq!(Method::from_number(m as u16), Some(m));
        }
    }

    #[test]
    fn channel_data_headers_round_trip_and_bad_ones_are_refused() {
        let mut buf = ChannelData::header(0x4001, 5).to_vec();
        buf.extend_from_slice(b"hello\0\0\0");
        assert_eq!(ChannelData::parse(&buf), Some(ChannelData { channel: 0x4001, len: 5 }));
        assert_eq!(ChannelData::parse(&buf[..8]), None, "shorter than its length");
        let mut reserved = buf.clone();
        reserved[0] = 0x80;
        assert_eq!(ChannelData::parse(&reserved), None, "0x8000 is not a channel");
        assert_eq!(ChannelData::parse(&[0x40, 0]), None);
    }
}
