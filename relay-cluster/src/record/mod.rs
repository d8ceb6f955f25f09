//! What a node writes to Redis: session records, call records and change
//! notes, each sealed whole with the cluster key.
//!
//! Redis is trusted for availability, never for integrity. Every record is
//! an *envelope* — format version, the oldest format that can read it,
//! kind, id, tenant, the writer's `(epoch, seq)`, the time of the write —
//! around a body sealed with AES-256-GCM whose associated data binds the
//! cluster group, every envelope field and the key id. A record edited,
//! moved to another id, kind, tenant or group, or relabelled with another
//! version does not open; it is refused and counted by the reader. Keeping
//! a node from applying an *older* authentic record (a replay) is the
//! reader's part (`node`: versions only move forward).
//!
//! Formats: this code writes [`FORMAT`] and reads every format from
//! [`OLDEST_AUTHENTICATED`] on whose `compat` (the oldest reader that
//! understands it) is at most [`FORMAT`]; names it does not know (a drop
//! reason added by a newer release, a field) are ignored and counted.
//! Format 1 (before records were authenticated) is read only with
//! [`Codec::accept_v1`], for the hand-over of a rolling upgrade. Golden
//! records of every format are committed beside this module and decoded
//! by its tests.

#[cfg(feature = "ng")]
mod call;
mod session;
#[cfg(feature = "turn")]
mod turn;
mod v1;

use serde::{Deserialize, Serialize};

use crate::seal::{SealError, Sealer};

#[cfg(feature = "ng")]
pub use call::{DecodedCall, StoredCall};
pub use session::DecodedSession;
#[cfg(feature = "turn")]
pub use turn::{DecodedTurnAllocation, StoredTurnAllocation};

/// The record format this code writes.
pub const FORMAT: u32 = 2;

/// The first format sealed whole; older ones are read only with
/// [`Codec::accept_v1`].
pub const OLDEST_AUTHENTICATED: u32 = 2;

/// Largest record accepted from the store (a session with two legs, 64
/// SSRCs each and its counters is well under 16 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Why a stored record was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("record too large")]
    TooLarge,
    /// Not an envelope or body of the record's shape (the reason names the
    /// field).
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Needs a newer reader (its `compat` is above [`FORMAT`]).
    #[error("record format {0} needs a newer release")]
    TooNew(u32),
    /// Format 1 (unauthenticated), and `accept_v1` is off.
    #[error("unauthenticated record of format 1 refused (see accept_v1)")]
    Unauthenticated,
    /// Found under another id or kind than its envelope names.
    #[error("record names another {0} than where it is stored")]
    Misplaced(&'static str),
    /// The seal does not open: edited, moved, or sealed under a key this
    /// node does not have.
    #[error("seal: {0}")]
    Seal(#[from] SealError),
}

/// Where a record was written: the writer's lease epoch and its sequence
/// number (later writes have higher `(epoch, seq)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default, Hash)]
pub struct Version {
    /// The writer's lease epoch.
    pub epoch: u64,
    /// The writer's batch sequence number.
    pub seq: u64,
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A session ([`relay_core::session::SessionState`]).
    Session,
    /// An ng call.
    Call,
    /// A change note (pub/sub): which records a write set and deleted.
    Note,
    /// A TURN allocation (UDP).
    Turn,
}

impl Kind {
    /// Its name in the envelope and the associated data.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::Call => "call",
            Kind::Note => "note",
            Kind::Turn => "turn",
        }
    }
}

/// The envelope: everything in it is bound to the sealed body.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    v: u32,
    compat: u32,
    kind: String,
    id: String,
    tenant: String,
    epoch: u64,
    seq: u64,
    written_unix_ms: u64,
    sealed: String,
}

impl Envelope {
    fn aad(&self, group: &str, key_id: &str) -> Vec<u8> {
        format!(
            "ucmrc-record\0{}\0{}\0{group}\0{}\0{}\0{}\0{}\0{}\0{}\0{key_id}",
            self.v, self.compat, self.kind, self.id, self.tenant, self.epoch, self.seq, self.written_unix_ms
        )
        .into_bytes()
    }
}

/// A record's authenticated envelope fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The id it names (session id, base64 call-id; empty for a note).
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The write it came from.
    pub version: Version,
    /// When it was written (Unix ms; the reader ages states by the time
    /// since).
    pub written_unix_ms: u64,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Names a reader did not know (a newer writer's drop reason or field),
/// ignored and counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored(pub u64);

/// Seals and opens the records of one cluster group.
#[derive(Debug, Clone)]
pub struct Codec {
    sealer: Sealer,
    group: String,
    accept_v1: bool,
}

impl Codec {
    /// A codec for `group` under the cluster key(s) of `sealer`.
    pub fn new(sealer: Sealer, group: &str) -> Self {
        Self { sealer, group: group.to_string(), accept_v1: false }
    }

    /// Also reads format 1 records (unauthenticated: anyone who can write to
    /// Redis can change them). Only for the hand-over of a rolling upgrade
    /// from a release that wrote them.
    pub fn accept_v1(mut self, yes: bool) -> Self {
        self.accept_v1 = yes;
        self
    }

    /// The group it seals for.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// An envelope of `kind` around an arbitrary `body`, sealed: what a
    /// writer holding the cluster key could store. For the fuzz target
    /// and tests that reach the body parsers; nodes use the `encode_*`
    /// methods.
    #[doc(hidden)]
    pub fn seal_body(&self, kind: Kind, id: &str, tenant: &str, version: Version, body: &[u8]) -> String {
        self.seal(kind, id, tenant, version, body)
    }

    /// An envelope of `kind` around `body`, sealed.
    fn seal(&self, kind: Kind, id: &str, tenant: &str, version: Version, body: &[u8]) -> String {
        let mut env = Envelope {
            v: FORMAT,
            compat: FORMAT,
            kind: kind.as_str().to_string(),
            id: id.to_string(),
            tenant: tenant.to_string(),
            epoch: version.epoch,
            seq: version.seq,
            written_unix_ms: unix_ms_now(),
            sealed: String::new(),
        };
        let aad = env.aad(&self.group, &self.sealer.current_key_id());
        env.sealed = self.sealer.seal(body, &aad);
        serde_json::to_string(&env).unwrap_or_default()
    }

    /// Opens a record expected to be of `kind` and stored under `id`
    /// (`None`: a note, stored under no id).
    fn open(&self, record: &[u8], kind: Kind, id: Option<&str>) -> Result<(Meta, Vec<u8>), RecordError> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge);
        }
        let env: Envelope = serde_json::from_slice(record).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if env.compat > FORMAT {
            return Err(RecordError::TooNew(env.compat));
        }
        if env.v < OLDEST_AUTHENTICATED {
            return Err(RecordError::Unauthenticated);
        }
        if env.kind != kind.as_str() {
            return Err(RecordError::Misplaced("kind"));
        }
        if id.is_some_and(|id| id != env.id) {
            return Err(RecordError::Misplaced("id"));
        }
        let key_id = Sealer::key_id_of(&env.sealed).ok_or(SealError::Malformed)?;
        let body = self.sealer.open(&env.sealed, &env.aad(&self.group, key_id))?;
        let meta = Meta {
            id: env.id,
            tenant: env.tenant,
            version: Version { epoch: env.epoch, seq: env.seq },
            written_unix_ms: env.written_unix_ms,
        };
        Ok((meta, body))
    }

    /// Whether `record` is a format 1 record (no `compat`, `v: 1`). Asked
    /// only of a record no envelope could be read from (within the size
    /// bound): a current record is parsed once.
    fn is_v1(record: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Head {
            v: u32,
        }
        serde_json::from_slice::<Head>(record).is_ok_and(|h| h.v == 1)
    }
}

/// Which records a write set and deleted (pub/sub, sealed like a record:
/// a forged note is refused, an old one is ignored by its version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNote {
    /// Session ids written (read them from the hash).
    #[serde(default)]
    pub set: Vec<String>,
    /// Session ids deleted.
    #[serde(default)]
    pub del: Vec<String>,
    /// ng call-ids written.
    #[serde(default)]
    pub calls_set: Vec<String>,
    /// ng call-ids deleted.
    #[serde(default)]
    pub calls_del: Vec<String>,
    /// TURN allocation ids written (older readers ignore them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_set: Vec<String>,
    /// TURN allocation ids deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_del: Vec<String>,
}

impl Codec {
    /// A sealed change note of the write `version`.
    pub fn encode_note(&self, note: &ChangeNote, version: Version) -> String {
        self.seal(Kind::Note, "", "", version, &serde_json::to_vec(note).unwrap_or_default())
    }

    /// Opens a change note; returns it with the write it announces.
    pub fn decode_note(&self, payload: &[u8]) -> Result<(ChangeNote, Version), RecordError> {
        let (meta, body) = self.open(payload, Kind::Note, None)?;
        let note = serde_json::from_slice(&body).map_err(|_| RecordError::Malformed("note".into()))?;
        Ok((note, meta.version))
    }
}

#[cfg(test)]
mod tests;
