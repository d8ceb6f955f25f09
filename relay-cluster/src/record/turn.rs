//! A TURN allocation's record body (feature `turn`): named fields,
//! versioned with the envelope. The allocation's integrity key is a
//! secret; like every body it is sealed (AES-256-GCM), never stored in
//! clear.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use relay_core::turn::allocation::{ClientKey, IntegrityKey, RelayId, Transport};
use relay_core::turn::proto::Family;
use relay_core::turn::replica::{AllocationState, SecondState};
use serde::{Deserialize, Serialize};

use super::{Codec, Kind, RecordError, Version};

/// A permission: peer IP and milliseconds left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Permission {
    ip: IpAddr,
    left_ms: u64,
}

/// A channel: number, peer and milliseconds left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    left_ms: u64,
}

/// A dual allocation's second relayed socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSecond {
    family: String,
    port: u16,
    relayed: SocketAddr,
    lifetime_ms: u64,
}

fn family_name(family: Family) -> String {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
    .into()
}

fn family_of(name: &str) -> Result<Family, RecordError> {
    match name {
        "v4" => Ok(Family::V4),
        "v6" => Ok(Family::V6),
        _ => Err(malformed("family")),
    }
}

/// The stored form of a UDP allocation (the record body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTurnAllocation {
    client: SocketAddr,
    listener: u16,
    family: String,
    port: u16,
    relayed: SocketAddr,
    /// A dual allocation's second (absent in records written before
    /// there were any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    second: Option<StoredSecond>,
    realm: String,
    username: String,
    /// `sha1:<hex>` (the MD5 long-term key), `sha256:<hex>`, or
    /// `sha256-md5:<hex>` (MESSAGE-INTEGRITY-SHA256 with the MD5 key).
    key: String,
    allocate_txid: String,
    lifetime_ms: u64,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn malformed(field: &str) -> RecordError {
    RecordError::Malformed(format!("turn allocation: {field}"))
}

impl StoredTurnAllocation {
    fn from_state(a: &AllocationState) -> Self {
        Self {
            client: a.client.source,
            listener: a.client.listener,
            family: family_name(a.relay.family),
            port: a.relay.port,
            relayed: a.relayed,
            second: a.second.map(|s| StoredSecond {
                family: family_name(s.relay.family),
                port: s.relay.port,
                relayed: s.relayed,
                lifetime_ms: ms(s.lifetime),
            }),
            realm: a.realm.clone(),
            username: a.username.clone(),
            key: match a.key {
                IntegrityKey::Sha1(k) => format!("sha1:{}", hex::encode(k)),
                IntegrityKey::Sha256(k) => format!("sha256:{}", hex::encode(k)),
                IntegrityKey::Sha256WithMd5Key(k) => format!("sha256-md5:{}", hex::encode(k)),
            },
            allocate_txid: hex::encode(a.allocate_txid),
            lifetime_ms: ms(a.lifetime),
            permissions: a.permissions.iter().map(|(ip, left)| Permission { ip: *ip, left_ms: ms(*left) }).collect(),
            channels: a
                .channels
                .iter()
                .map(|(number, peer, left)| Channel { number: *number, peer: *peer, left_ms: ms(*left) })
                .collect(),
        }
    }

    fn into_state(self, tenant: String) -> Result<AllocationState, RecordError> {
        let family = family_of(&self.family)?;
        let second = match self.second {
            Some(s) => Some(SecondState {
                relay: RelayId { family: family_of(&s.family)?, port: s.port },
                relayed: s.relayed,
                lifetime: Duration::from_millis(s.lifetime_ms),
            }),
            None => None,
        };
        let key = match self.key.split_once(':') {
            Some(("sha1", k)) => IntegrityKey::Sha1(decode_hex(k).ok_or_else(|| malformed("key"))?),
            Some(("sha256", k)) => IntegrityKey::Sha256(decode_hex(k).ok_or_else(|| malformed("key"))?),
            Some(("sha256-md5", k)) => IntegrityKey::Sha256WithMd5Key(decode_hex(k).ok_or_else(|| malformed("key"))?),
            _ => return Err(malformed("key")),
        };
        let allocate_txid = decode_hex(&self.allocate_txid).ok_or_else(|| malformed("allocate_txid"))?;
        if self.permissions.len() > 4096 || self.channels.len() > 4096 {
            return Err(malformed("permissions or channels"));
        }
        Ok(AllocationState {
            client: ClientKey { transport: Transport::Udp, listener: self.listener, source: self.client },
            relay: RelayId { family, port: self.port },
            relayed: self.relayed,
            second,
            realm: self.realm,
            tenant,
            username: self.username,
            key,
            allocate_txid,
            lifetime: Duration::from_millis(self.lifetime_ms),
            permissions: self.permissions.into_iter().map(|p| (p.ip, Duration::from_millis(p.left_ms))).collect(),
            channels: self.channels.into_iter().map(|c| (c.number, c.peer, Duration::from_millis(c.left_ms))).collect(),
        })
    }
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// A decoded TURN allocation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedTurnAllocation {
    /// The allocation (lifetimes as left when it was written).
    pub state: AllocationState,
    /// Which write it came from.
    pub version: Version,
    /// When it was written (Unix ms).
    pub written_unix_ms: u64,
}

impl Codec {
    /// The sealed record of TURN allocation `a` (its tenant in the
    /// envelope), written as `version`.
    pub fn encode_turn(&self, a: &AllocationState, version: Version) -> String {
        let body = serde_json::to_vec(&StoredTurnAllocation::from_state(a)).unwrap_or_default();
        self.seal(Kind::Turn, &a.id(), &a.tenant, version, &body)
    }

    /// Opens the TURN allocation record stored under `id`.
    pub fn decode_turn(&self, record: &[u8], id: &str) -> Result<DecodedTurnAllocation, RecordError> {
        let (meta, body) = self.open(record, Kind::Turn, Some(id))?;
        let stored: StoredTurnAllocation =
            serde_json::from_slice(&body).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let state = stored.into_state(meta.tenant.clone())?;
        if state.id() != meta.id {
            return Err(RecordError::Misplaced("id"));
        }
        Ok(DecodedTurnAllocation { state, version: meta.version, written_unix_ms: meta.written_unix_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{ClusterKey, Sealer};

    fn state() -> AllocationState {
        AllocationState {
            client: ClientKey {
                transport: Transport::Udp,
                listener: 0,
                source: "198.51.100.7:5000".parse().expect("address"),
            },
            relay: RelayId { family: Family::V4, port: 30001 },
            relayed: "203.0.113.10:30001".parse().expect("address"),
            second: None,
            realm: "turn.example".into(),
            tenant: "acme".into(),
            username: "1800000000:wave-1".into(),
            key: IntegrityKey::Sha1([0x5a; 16]),
            allocate_txid: [7; 12],
            lifetime: Duration::from_secs(500),
            permissions: vec![("192.0.2.1".parse().expect("address"), Duration::from_secs(200))],
            channels: vec![(0x4000, "192.0.2.1:7000".parse().expect("address"), Duration::from_secs(400))],
        }
    }

    /// The golden TURN record (format 2, where TURN records began), sealed
    /// like the others under the golden key: what a later reader must still
    /// restore. `UCMRC_WRITE_GOLDEN=1` writes it (only when its format
    /// starts).
    #[test]
    fn the_golden_turn_record_decodes_to_its_allocation() {
        let codec = Codec::new(Sealer::new(ClusterKey::new(&[0x42; 32]), vec![]), "golden");
        let path = format!("{}/src/record/golden/turn-v2.json", env!("CARGO_MANIFEST_DIR"));
        let v = Version { epoch: 7, seq: 42 };
        if std::env::var_os("UCMRC_WRITE_GOLDEN").is_some() {
            std::fs::write(&path, format!("{}\n", codec.encode_turn(&state(), v))).expect("write");
        }
        let record = std::fs::read_to_string(&path).expect("golden record");
        let d = codec.decode_turn(record.trim().as_bytes(), "v4-30001").expect("decodes");
        assert_eq!((d.state, d.version), (state(), v));
    }

    #[test]
    fn turn_records_round_trip_sealed_and_refuse_being_moved() {
        let codec = Codec::new(Sealer::new(ClusterKey::new(&[3; 32]), vec![]), "g");
        let v = Version { epoch: 2, seq: 9 };
        let record = codec.encode_turn(&state(), v);
        assert!(!record.contains(&hex::encode([0x5a; 16])), "the key is sealed, never in clear");
        assert!(!record.contains("wave-1"), "the whole body is sealed");
        let d = codec.decode_turn(record.as_bytes(), "v4-30001").expect("opens");
        assert_eq!((d.state, d.version), (state(), v));
        assert_eq!(codec.decode_turn(record.as_bytes(), "v4-30003"), Err(RecordError::Misplaced("id")));
        let other = Codec::new(Sealer::new(ClusterKey::new(&[3; 32]), vec![]), "other-group");
        assert!(other.decode_turn(record.as_bytes(), "v4-30001").is_err(), "bound to its group");
        // A dual allocation keeps its second relayed socket; a key for
        // MESSAGE-INTEGRITY-SHA256 under the MD5 long-term key keeps its kind.
        let dual = AllocationState {
            key: IntegrityKey::Sha256WithMd5Key([0x11; 16]),
            second: Some(SecondState {
                relay: RelayId { family: Family::V6, port: 30002 },
                relayed: "[2001:db8::10]:30002".parse().expect("address"),
                lifetime: Duration::from_secs(300),
            }),
            ..state()
        };
        let d = codec.decode_turn(codec.encode_turn(&dual, v).as_bytes(), "v4-30001").expect("opens");
        assert_eq!(d.state, dual);
        let as_session = codec.decode_session(record.as_bytes(), "v4-30001", crate::record::unix_ms_now());
        assert_eq!(as_session.map(|_| ()), Err(RecordError::Misplaced("kind")), "not read as another kind");
    }
}
