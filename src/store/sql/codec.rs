//! How an [`Entry`] maps onto a row of the sessions table, and a
//! [`Change`] onto the parameters of the one-statement delta; shared by the
//! three SQL stores (see "Schema" in the [module docs](super)).

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::backend::Params;
use crate::clock::UnixMillis;
use crate::id::{IdHash, SealedId};
use crate::record::{Change, Entry, Forward, SessionData, SessionRecord, Superseded};
use crate::store::StoreError;

/// The `kind` of a session row.
pub(super) const KIND_SESSION: &str = "s";
/// The `kind` of a renewal's forward.
const KIND_FORWARD: &str = "f";
/// The `kind` of a superseded marker.
const KIND_SUPERSEDED: &str = "x";

/// The columns every `SELECT` of an entry reads, in this order; the data
/// column is named by each backend (PostgreSQL reads `data::text`).
pub(super) fn entry_columns(data: &str) -> String {
    format!(
        "kind, user_id, {data}, created_at, last_seen, idle_deadline, absolute_deadline, \
         id_issued_at, version, ip, user_agent, binding, successor, sealed_id, sign_in, grace_until"
    )
}

/// The columns an `INSERT` or a whole-row `UPDATE` writes, in the order
/// [`Params::columns`] binds them.
pub(super) const WRITTEN_COLUMNS: [&str; 16] = [
    "kind",
    "user_id",
    "data",
    "created_at",
    "last_seen",
    "idle_deadline",
    "absolute_deadline",
    "id_issued_at",
    "version",
    "ip",
    "user_agent",
    "binding",
    "successor",
    "sealed_id",
    "sign_in",
    "grace_until",
];

/// An entry as the values of [`WRITTEN_COLUMNS`]. A placeholder keeps the
/// instant it may go in both deadlines, so the generated `expires_at`
/// column (and the purge that reads it) treats every kind alike; a
/// renewal's forward keeps the end of its grace in `grace_until`.
pub(crate) struct Columns {
    pub(super) kind: &'static str,
    pub(super) user_id: Option<String>,
    pub(super) data: String,
    pub(super) created_at: i64,
    pub(super) last_seen: i64,
    pub(super) idle_deadline: i64,
    pub(super) absolute_deadline: i64,
    pub(super) id_issued_at: i64,
    pub(super) version: i64,
    pub(super) ip: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) binding: Option<String>,
    pub(super) successor: Option<Vec<u8>>,
    pub(super) sealed_id: Option<Vec<u8>>,
    pub(super) sign_in: Option<String>,
    pub(super) grace_until: Option<i64>,
}

impl Columns {
    pub(crate) fn of(entry: &Entry) -> Result<Self, StoreError> {
        match entry {
            Entry::Session(record) => Self::of_session(record),
            Entry::Forward(forward) => Ok(Self {
                grace_until: Some(millis(forward.until)),
                ..Self::placeholder(
                    KIND_FORWARD,
                    forward.successor,
                    Some(hex_bytes(&forward.sealed_id.to_hex())),
                    forward.until.max(forward.kept_until),
                )
            }),
            Entry::Superseded(marker) => Ok(Self {
                user_id: marker.user_id.clone(),
                ..Self::placeholder(KIND_SUPERSEDED, marker.successor, None, marker.until)
            }),
        }
    }

    pub(super) fn of_session(record: &SessionRecord) -> Result<Self, StoreError> {
        Ok(Self {
            kind: KIND_SESSION,
            user_id: record.user_id.clone(),
            data: encode_json(&record.data)?,
            created_at: millis(record.created_at),
            last_seen: millis(record.last_seen),
            idle_deadline: millis(record.idle_deadline),
            absolute_deadline: millis(record.absolute_deadline),
            id_issued_at: millis(record.id_issued_at),
            version: version_column(record.version),
            ip: record.ip.map(|ip| ip.to_string()),
            user_agent: record.user_agent.as_deref().map(str::to_owned),
            binding: record.binding.as_deref().map(encode_json).transpose()?,
            successor: None,
            sealed_id: None,
            sign_in: record.sign_in.as_deref().map(encode_json).transpose()?,
            grace_until: None,
        })
    }

    fn placeholder(
        kind: &'static str,
        successor: IdHash,
        sealed_id: Option<Vec<u8>>,
        until: UnixMillis,
    ) -> Self {
        let until = millis(until);
        Self {
            kind,
            user_id: None,
            data: "{}".to_owned(),
            created_at: 0,
            last_seen: 0,
            idle_deadline: until,
            absolute_deadline: until,
            id_issued_at: 0,
            version: 0,
            ip: None,
            user_agent: None,
            binding: None,
            successor: Some(successor.as_bytes().to_vec()),
            sealed_id,
            sign_in: None,
            grace_until: None,
        }
    }
}

/// A row as read by a `SELECT` of [`entry_columns`].
pub struct Stored {
    pub(crate) kind: String,
    pub(crate) user_id: Option<String>,
    pub(crate) data: String,
    pub(crate) created_at: i64,
    pub(crate) last_seen: i64,
    pub(crate) idle_deadline: i64,
    pub(crate) absolute_deadline: i64,
    pub(crate) id_issued_at: i64,
    pub(crate) version: i64,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) binding: Option<String>,
    pub(crate) successor: Option<Vec<u8>>,
    pub(crate) sealed_id: Option<Vec<u8>>,
    pub(crate) sign_in: Option<String>,
    pub(crate) grace_until: Option<i64>,
}

impl Stored {
    /// Reads the columns of [`entry_columns`] from `row`, in order.
    pub(super) fn read<'r, R>(row: &'r R) -> Result<Self, StoreError>
    where
        R: Row,
        usize: ColumnIndex<R>,
        String: Decode<'r, R::Database> + Type<R::Database>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
        Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(Self {
            kind: row.try_get(0).map_err(column)?,
            user_id: row.try_get(1).map_err(column)?,
            data: row.try_get(2).map_err(column)?,
            created_at: row.try_get(3).map_err(column)?,
            last_seen: row.try_get(4).map_err(column)?,
            idle_deadline: row.try_get(5).map_err(column)?,
            absolute_deadline: row.try_get(6).map_err(column)?,
            id_issued_at: row.try_get(7).map_err(column)?,
            version: row.try_get(8).map_err(column)?,
            ip: row.try_get(9).map_err(column)?,
            user_agent: row.try_get(10).map_err(column)?,
            binding: row.try_get(11).map_err(column)?,
            successor: row.try_get(12).map_err(column)?,
            sealed_id: row.try_get(13).map_err(column)?,
            sign_in: row.try_get(14).map_err(column)?,
            grace_until: row.try_get(15).map_err(column)?,
        })
    }

    /// The entry this row holds under `id`.
    pub(crate) fn into_entry(self, id: IdHash) -> Result<Entry, StoreError> {
        match self.kind.trim_end() {
            KIND_SESSION => Ok(Entry::Session(Arc::new(self.into_session(id)?))),
            KIND_FORWARD => {
                // A forward written before reuse detection ends with its
                // grace, and none is kept for less than its grace.
                let until = unix_millis(self.grace_until.unwrap_or(self.absolute_deadline))?;
                let sealed = self
                    .sealed_id
                    .as_deref()
                    .and_then(|bytes| SealedId::from_hex(&to_hex(bytes)))
                    .ok_or_else(|| corrupt("a stored forward has no valid sealed successor"))?;
                Ok(Entry::Forward(Forward {
                    successor: successor(self.successor.as_deref())?,
                    sealed_id: sealed,
                    until,
                    kept_until: unix_millis(self.absolute_deadline)?.max(until),
                }))
            }
            KIND_SUPERSEDED => Ok(Entry::Superseded(Superseded {
                successor: successor(self.successor.as_deref())?,
                until: unix_millis(self.absolute_deadline)?,
                user_id: self.user_id,
            })),
            _ => Err(corrupt("a stored entry is of an unknown kind")),
        }
    }

    fn into_session(self, id: IdHash) -> Result<SessionRecord, StoreError> {
        let data: SessionData = serde_json::from_str(&self.data)
            .map_err(|_| corrupt("stored session data is not a JSON object"))?;
        let ip = self
            .ip
            .map(|ip| ip.parse::<IpAddr>())
            .transpose()
            .map_err(|_| corrupt("a stored client address is not an IP address"))?;
        let binding = self
            .binding
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|_| corrupt("a stored client binding is not valid"))?;
        let sign_in = self
            .sign_in
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|_| corrupt("a stored sign-in is not valid"))?;
        Ok(SessionRecord {
            id_hash: id,
            user_id: self.user_id,
            data,
            created_at: unix_millis(self.created_at)?,
            last_seen: unix_millis(self.last_seen)?,
            idle_deadline: unix_millis(self.idle_deadline)?,
            absolute_deadline: unix_millis(self.absolute_deadline)?,
            id_issued_at: unix_millis(self.id_issued_at)?,
            version: version_of(self.version),
            ip,
            user_agent: self.user_agent.map(String::into_boxed_str),
            binding: binding.map(Box::new),
            sign_in: sign_in.map(Box::new),
        })
    }
}

/// The row a store writes for `columns`, as a `SELECT` reads it back.
#[cfg(any(test, feature = "fuzzing"))]
impl From<Columns> for Stored {
    fn from(columns: Columns) -> Self {
        Self {
            kind: columns.kind.to_owned(),
            user_id: columns.user_id,
            data: columns.data,
            created_at: columns.created_at,
            last_seen: columns.last_seen,
            idle_deadline: columns.idle_deadline,
            absolute_deadline: columns.absolute_deadline,
            id_issued_at: columns.id_issued_at,
            version: columns.version,
            ip: columns.ip,
            user_agent: columns.user_agent,
            binding: columns.binding,
            successor: columns.successor,
            sealed_id: columns.sealed_id,
            sign_in: columns.sign_in,
            grace_until: columns.grace_until,
        }
    }
}

/// A [`Change`] as statement parameters. Every statement removes keys
/// before it sets keys, so a key in both ends up set, as
/// [`SessionRecord::apply`] does.
pub(super) struct Delta {
    /// Keys removed.
    pub(super) removed: Vec<String>,
    pub(super) last_seen: Option<i64>,
    pub(super) idle_deadline: Option<i64>,
    pub(super) binding: Option<String>,
}

impl Delta {
    pub(super) fn of(change: &Change) -> Result<Self, StoreError> {
        Ok(Self {
            removed: change.removed.clone(),
            last_seen: change.touch.map(|t| millis(t.last_seen)),
            idle_deadline: change.touch.map(|t| millis(t.idle_deadline)),
            binding: change.binding.as_ref().map(encode_json).transpose()?,
        })
    }

    /// The keys set, each with its value's JSON, in order.
    #[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
    pub(super) fn set_values(change: &Change) -> Result<Vec<(String, String)>, StoreError> {
        change
            .set
            .iter()
            .map(|(key, value)| Ok((key.clone(), encode_json(value)?)))
            .collect()
    }

    /// `params` followed by the touch's: binding, last seen, idle deadline
    /// (twice), as [`Statements::touch`](super::statements::Statements::touch)
    /// reads them.
    pub(super) fn touch_params(&self, params: Params) -> Params {
        params
            .text(self.binding.clone())
            .integer(self.last_seen)
            .integer(self.idle_deadline)
            .integer(self.idle_deadline)
    }

    /// The keys set, as one JSON object (the last value of a key set twice wins).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) fn set_object(change: &Change) -> Result<String, StoreError> {
        let object: serde_json::Map<String, Value> = change.set.iter().cloned().collect();
        encode_json(&object)
    }
}

/// The key of a user in the index and lock tables: a SHA-256 of the user
/// id, so every user id (of any length) makes a fixed-size key.
pub(super) fn user_key(user_id: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"tower-session-guard/sql-user/v1\0");
    hasher.update(user_id.as_bytes());
    hasher.finalize().to_vec()
}

/// An id hash as read from a key column.
pub(super) fn id_hash(bytes: &[u8]) -> Option<IdHash> {
    <[u8; 32]>::try_from(bytes).ok().map(IdHash::from_bytes)
}

/// Milliseconds as a `BIGINT` (times before 292 million AD fit).
pub(super) fn millis(at: UnixMillis) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// A version as a `BIGINT`: the same 64 bits, so the `version + 1` of the
/// delta and [`SessionRecord::apply`]'s wrapping add agree up to `i64::MAX`.
fn version_column(version: u64) -> i64 {
    i64::from_ne_bytes(version.to_ne_bytes())
}

pub(super) fn version_of(column: i64) -> u64 {
    u64::from_ne_bytes(column.to_ne_bytes())
}

/// A version as the conditional `replace` compares it.
pub(super) fn version_param(version: u64) -> i64 {
    version_column(version)
}

fn unix_millis(column: i64) -> Result<UnixMillis, StoreError> {
    UnixMillis::try_from(column).map_err(|_| corrupt("a stored time is negative"))
}

fn successor(bytes: Option<&[u8]>) -> Result<IdHash, StoreError> {
    bytes
        .and_then(id_hash)
        .ok_or_else(|| corrupt("a stored placeholder has no valid successor"))
}

/// JSON text for the database, floats written so that every backend reads
/// them back as floats (see [`FloatsStayFloats`]).
pub(super) fn encode_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    let mut text = Vec::with_capacity(64);
    let mut serializer = serde_json::Serializer::with_formatter(&mut text, FloatsStayFloats);
    value
        .serialize(&mut serializer)
        .map_err(|err| StoreError::Backend(Box::new(err)))?;
    String::from_utf8(text).map_err(|err| StoreError::Backend(Box::new(err)))
}

/// serde_json's compact output, except that a whole float of 10^16 or
/// more (which it writes in exponent form, `1e16`) is written in full with
/// a fraction, `10000000000000000.0`. PostgreSQL's `jsonb` keeps a number's
/// digits and scale, not its type: `1e16` comes back as
/// `10000000000000000`, which reads as an integer, while the fraction keeps
/// it a float, as it was set. (No text keeps the sign of `-0.0` in
/// `jsonb`: `numeric` has no negative zero.)
struct FloatsStayFloats;

impl serde_json::ser::Formatter for FloatsStayFloats {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        if value.fract() == 0.0 && value.abs() >= 1e16 {
            write!(writer, "{value:.1}")
        } else {
            serde_json::ser::CompactFormatter.write_f64(writer, value)
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn column(err: sqlx::Error) -> StoreError {
    StoreError::Corrupt(format!("a stored entry could not be read: {err}"))
}

pub(super) fn corrupt(why: &str) -> StoreError {
    StoreError::Corrupt(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    #[test]
    fn versions_keep_all_64_bits() {
        for version in [0, 1, u64::MAX, u64::MAX / 2 + 1] {
            assert_eq!(version_of(version_column(version)), version);
        }
    }

    #[test]
    fn sealed_ids_survive_the_byte_column() {
        let old = SessionId::generate();
        let sealed = old.seal(&SessionId::generate());
        let bytes = hex_bytes(&sealed.to_hex());
        assert_eq!(bytes.len(), 16);
        assert_eq!(SealedId::from_hex(&to_hex(&bytes)), Some(sealed));
    }

    fn round_trip(entry: &Entry) -> Entry {
        let id = SessionId::generate().hash();
        Stored::from(Columns::of(entry).unwrap())
            .into_entry(id)
            .unwrap()
    }

    #[test]
    fn whole_floats_are_written_with_a_fraction() {
        for (value, text) in [
            (1e16_f64, "10000000000000000.0"),
            (-2.5e17, "-250000000000000000.0"),
            (1e15, "1000000000000000.0"),
            (1.5, "1.5"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(encode_json(&value).unwrap(), text);
            let back: f64 = serde_json::from_str(text).unwrap();
            assert_eq!(back.to_bits(), value.to_bits());
        }
        assert_eq!(
            encode_json(&serde_json::json!(10_000_000_000_000_000_u64)).unwrap(),
            "10000000000000000"
        );
    }

    #[test]
    fn floats_keep_every_bit_through_the_data_column() {
        // Found by the fuzz targets: JSON text parsed without correct
        // rounding read this value back as 184.67440737095225.
        let value = 184.674_407_370_952_22_f64;
        let mut record = crate::record::Deadlines {
            created_at: 1,
            idle_deadline: 2,
            absolute_deadline: 3,
        }
        .record(
            SessionId::generate().hash(),
            None,
            crate::record::SessionData::default(),
        );
        record.data.insert("f".into(), serde_json::json!(value));
        let back = round_trip(&Entry::Session(Arc::new(record)));
        let read = back.session().unwrap().data.get("f").unwrap().as_f64();
        assert_eq!(read.map(f64::to_bits), Some(value.to_bits()), "{read:?}");
    }

    #[test]
    fn a_forward_is_kept_at_least_until_its_grace_ends() {
        // Found by the sql_codec fuzz target: a damaged row whose
        // `absolute_deadline` is before its `grace_until` decoded to a
        // forward kept for less time than it works, and read back as
        // another entry once written.
        let mut columns = Columns::of(&Entry::Forward(Forward {
            successor: SessionId::generate().hash(),
            sealed_id: SessionId::generate().seal(&SessionId::generate()),
            until: 9_000,
            kept_until: 90_000,
        }))
        .unwrap();
        columns.absolute_deadline = 5_000;
        let id = SessionId::generate().hash();
        let Entry::Forward(forward) = Stored::from(columns).into_entry(id).unwrap() else {
            panic!("a forward");
        };
        assert_eq!((forward.until, forward.kept_until), (9_000, 9_000));
        let entry = Entry::Forward(forward);
        assert_eq!(round_trip(&entry), entry);
    }

    #[test]
    fn user_keys_are_fixed_size_and_distinct() {
        assert_eq!(user_key("ann").len(), 32);
        assert_eq!(user_key(&"x".repeat(2000)).len(), 32);
        assert_ne!(user_key("ann"), user_key("bob"));
    }
}
