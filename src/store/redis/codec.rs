//! How entries are laid out in Redis: key names, and an [`Entry`] as the
//! fields of one hash (see "Key layout" in the [module docs](super)).

use std::net::IpAddr;
use std::sync::Arc;

use ::redis::Value;
use sha2::{Digest, Sha256};

use super::BACKSTOP_SLACK_MS;
use crate::clock::UnixMillis;
use crate::id::{IdHash, SealedId};
use crate::record::{Entry, Forward, SessionData, SessionRecord, Superseded};
use crate::store::StoreError;

/// The `kind` field of a session.
pub(super) const KIND_SESSION: &str = "s";
/// The `kind` field of a renewal's forward.
pub(super) const KIND_FORWARD: &str = "f";
/// The `kind` field of a superseded marker.
pub(super) const KIND_SUPERSEDED: &str = "x";
/// The prefix of the field holding one session key's value.
const DATA_FIELD: &str = "d:";

/// The key of the entry under `id`: a hash tag of its own.
pub(super) fn record_key(prefix: &str, id: &IdHash) -> String {
    format!("{prefix}s:{{{}}}", id.to_hex())
}

/// The key of the user's index.
pub(super) fn index_key(prefix: &str, user_id: &str) -> String {
    user_key(prefix, user_id, "sessions")
}

/// The key of the user's lock.
pub(super) fn lock_key(prefix: &str, user_id: &str) -> String {
    user_key(prefix, user_id, "lock")
}

/// The change channel.
pub(super) fn channel(prefix: &str) -> String {
    format!("{prefix}changes")
}

/// A key of the user's (`what`: "sessions" or "lock"), tagged with a hash
/// of the user id so that all of them share one slot, and user names stay
/// out of key names.
fn user_key(prefix: &str, user_id: &str, what: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tower-session-guard/redis-user/v1\0");
    hasher.update(user_id.as_bytes());
    let digest = hasher.finalize();
    let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}u:{{{tag}}}:{what}")
}

/// The field holding the value of the session key `key`.
pub(super) fn data_field(key: &str) -> String {
    format!("{DATA_FIELD}{key}")
}

pub(super) fn encode_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(Box::new(err)))
}

/// When Redis may drop an entry that ends at `end`: that instant plus the
/// backstop's slack, as `PEXPIREAT` takes it.
pub(super) fn expire_at(end: UnixMillis) -> String {
    end.saturating_add(BACKSTOP_SLACK_MS).to_string()
}

/// The hash fields an entry is stored as.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<(String, String)>, StoreError> {
    match entry {
        Entry::Session(record) => encode_session(record),
        Entry::Forward(forward) => Ok(vec![
            field("kind", KIND_FORWARD),
            field("succ", forward.successor.to_hex()),
            field("sealed", forward.sealed_id.to_hex()),
            field("until", forward.until.to_string()),
            field("keep", forward.kept_until.to_string()),
        ]),
        Entry::Superseded(marker) => {
            let mut fields = vec![
                field("kind", KIND_SUPERSEDED),
                field("succ", marker.successor.to_hex()),
                field("until", marker.until.to_string()),
            ];
            if let Some(user) = &marker.user_id {
                fields.push(field("user", user.as_str()));
            }
            Ok(fields)
        }
    }
}

fn field(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

pub(super) fn encode_session(record: &SessionRecord) -> Result<Vec<(String, String)>, StoreError> {
    let mut fields = vec![
        field("kind", KIND_SESSION),
        field("created", record.created_at.to_string()),
        field("seen", record.last_seen.to_string()),
        field("idle", record.idle_deadline.to_string()),
        field("abs", record.absolute_deadline.to_string()),
        field("issued", record.id_issued_at.to_string()),
        field("ver", record.version.to_string()),
    ];
    if let Some(user) = &record.user_id {
        fields.push(field("user", user.as_str()));
    }
    if let Some(ip) = record.ip {
        fields.push(field("ip", ip.to_string()));
    }
    if let Some(user_agent) = &record.user_agent {
        fields.push(field("ua", &**user_agent));
    }
    if let Some(binding) = &record.binding {
        fields.push(field("bind", encode_json(binding)?));
    }
    if let Some(sign_in) = &record.sign_in {
        fields.push(field("auth", encode_json(sign_in)?));
    }
    for (key, value) in record.data.iter() {
        fields.push((data_field(key), encode_json(value)?));
    }
    Ok(fields)
}

/// The entry under `id` from its hash fields (`None` for no fields: no key).
pub(crate) fn decode_entry(
    id: IdHash,
    fields: Vec<(String, String)>,
) -> Result<Option<Entry>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let kind = fields
        .iter()
        .find(|(name, _)| name == "kind")
        .map(|(_, kind)| kind.clone())
        .ok_or_else(|| corrupt("a stored entry has no kind"))?;
    let entry = match kind.as_str() {
        KIND_SESSION => Entry::Session(Arc::new(decode_session(id, fields)?)),
        KIND_FORWARD => {
            let mut placeholder = Placeholder::read(fields)?;
            let until = placeholder.until()?;
            Entry::Forward(Forward {
                successor: placeholder.successor()?,
                sealed_id: placeholder
                    .sealed
                    .take()
                    .ok_or_else(|| corrupt("a stored forward has no sealed successor"))?,
                until,
                // A forward written before reuse detection ends with its
                // grace, and none is kept for less than its grace.
                kept_until: placeholder.kept.map_or(until, |kept| kept.max(until)),
            })
        }
        KIND_SUPERSEDED => {
            let mut placeholder = Placeholder::read(fields)?;
            Entry::Superseded(Superseded {
                successor: placeholder.successor()?,
                until: placeholder.until()?,
                user_id: placeholder.user.take(),
            })
        }
        _ => return Err(corrupt("a stored entry is of an unknown kind")),
    };
    Ok(Some(entry))
}

/// The fields of a forward or a superseded marker.
#[derive(Default)]
struct Placeholder {
    successor: Option<IdHash>,
    sealed: Option<SealedId>,
    until: Option<UnixMillis>,
    kept: Option<UnixMillis>,
    user: Option<String>,
}

impl Placeholder {
    fn read(fields: Vec<(String, String)>) -> Result<Self, StoreError> {
        let mut placeholder = Self::default();
        for (name, value) in fields {
            match name.as_str() {
                "succ" => {
                    placeholder.successor = Some(
                        IdHash::from_hex(&value)
                            .ok_or_else(|| corrupt("a stored successor is not an id hash"))?,
                    );
                }
                "sealed" => {
                    placeholder.sealed = Some(
                        SealedId::from_hex(&value)
                            .ok_or_else(|| corrupt("a stored sealed id is not valid"))?,
                    );
                }
                "until" => placeholder.until = Some(number(&value)?),
                "keep" => placeholder.kept = Some(number(&value)?),
                "user" => placeholder.user = Some(value),
                // `kind`, and fields of a newer version.
                _ => {}
            }
        }
        Ok(placeholder)
    }

    fn successor(&self) -> Result<IdHash, StoreError> {
        self.successor
            .ok_or_else(|| corrupt("a stored placeholder has no successor"))
    }

    fn until(&self) -> Result<UnixMillis, StoreError> {
        self.until
            .ok_or_else(|| corrupt("a stored placeholder has no end"))
    }
}

fn number(value: &str) -> Result<u64, StoreError> {
    value
        .parse()
        .map_err(|_| corrupt("a stored time or version is not a number"))
}

fn decode_session(id: IdHash, fields: Vec<(String, String)>) -> Result<SessionRecord, StoreError> {
    let mut user_id = None;
    let mut numbers = [None::<u64>; 6];
    let mut ip = None;
    let mut user_agent = None;
    let mut binding = None;
    let mut sign_in = None;
    let mut data = SessionData::default();
    for (name, value) in fields {
        let slot = match name.as_str() {
            "created" => Some(0),
            "seen" => Some(1),
            "idle" => Some(2),
            "abs" => Some(3),
            "issued" => Some(4),
            "ver" => Some(5),
            _ => None,
        };
        if let Some(slot) = slot {
            numbers[slot] = Some(number(&value)?);
            continue;
        }
        match name.as_str() {
            "user" => user_id = Some(value),
            "ip" => {
                ip = Some(
                    value
                        .parse::<IpAddr>()
                        .map_err(|_| corrupt("a stored client address is not an IP address"))?,
                );
            }
            "ua" => user_agent = Some(value.into_boxed_str()),
            "bind" => {
                binding = Some(
                    serde_json::from_str(&value)
                        .map_err(|_| corrupt("a stored client binding is not valid"))?,
                );
            }
            "auth" => {
                sign_in = Some(
                    serde_json::from_str(&value)
                        .map_err(|_| corrupt("a stored sign-in is not valid"))?,
                );
            }
            other => {
                if let Some(key) = other.strip_prefix(DATA_FIELD) {
                    let value = serde_json::from_str(&value)
                        .map_err(|_| corrupt("a stored session value is not JSON"))?;
                    data.insert(key.to_owned(), value);
                }
                // `kind`, and fields of a newer version.
            }
        }
    }
    let [Some(created_at), Some(last_seen), Some(idle_deadline), Some(absolute_deadline), Some(id_issued_at), Some(version)] =
        numbers
    else {
        return Err(corrupt("a stored session lacks a time or its version"));
    };
    Ok(SessionRecord {
        id_hash: id,
        user_id,
        data,
        created_at,
        last_seen,
        idle_deadline,
        absolute_deadline,
        id_issued_at,
        version,
        ip,
        user_agent,
        binding,
        sign_in,
    })
}

/// Field/value pairs from an `HGETALL`-shaped reply (a RESP2 array, a RESP3
/// map, or nil).
pub(crate) fn field_pairs(value: Value) -> Result<Vec<(String, String)>, StoreError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(corrupt("a stored entry has a field without a value"));
            }
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((text(name)?, text(value)?));
            }
            Ok(pairs)
        }
        Value::Map(items) => items
            .into_iter()
            .map(|(name, value)| Ok((text(name)?, text(value)?)))
            .collect(),
        _ => Err(corrupt("a stored entry is not a hash")),
    }
}

/// A reply's text.
pub(super) fn text(value: Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|_| corrupt("a stored field is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text),
        _ => Err(corrupt("a stored field is not a string")),
    }
}

fn corrupt(why: &str) -> StoreError {
    StoreError::Corrupt(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::record::{Binding, Deadlines, SeenNetwork, SignIn, StampHash};
    use serde_json::json;

    fn record() -> SessionRecord {
        let mut record = Deadlines {
            created_at: 1_000,
            idle_deadline: 61_000,
            absolute_deadline: 3_601_000,
        }
        .record(
            SessionId::generate().hash(),
            Some("ann".into()),
            SessionData::default(),
        );
        record.data.insert("n".into(), json!(1.5));
        record.data.insert("big".into(), json!(u64::MAX));
        record.data.insert("empty".into(), json!([]));
        record.data.insert("d:nested".into(), json!({"a": null}));
        record.ip = Some("2001:db8::1".parse().unwrap());
        record.user_agent = Some("Firefox on Linux".into());
        record.binding = Some(Box::new(Binding {
            user_agent: Some("Firefox on Linux".into()),
            networks: vec![SeenNetwork {
                network: "203.0.113.0/24".parse().unwrap(),
                last_seen: 1_000,
            }],
            location: None,
        }));
        record.sign_in = Some(Box::new(SignIn {
            authenticated_at: 1_000,
            method: Some("password".into()),
            idle_timeout: Some(86_400_000),
            absolute_timeout: None,
            persistent: true,
            stamp: Some(StampHash([7; 16])),
        }));
        record.version = 7;
        record
    }

    fn round_trip(id: IdHash, entry: &Entry) -> Entry {
        decode_entry(id, encode_entry(entry).unwrap())
            .unwrap()
            .expect("an entry")
    }

    #[test]
    fn sessions_round_trip_through_hash_fields() {
        let record = record();
        let entry = Entry::Session(Arc::new(record.clone()));
        assert_eq!(round_trip(record.id_hash, &entry), entry);

        let anonymous = Deadlines {
            created_at: 1,
            idle_deadline: 2,
            absolute_deadline: 3,
        }
        .record(SessionId::generate().hash(), None, SessionData::default());
        let entry = Entry::Session(Arc::new(anonymous.clone()));
        assert_eq!(round_trip(anonymous.id_hash, &entry), entry);
    }

    #[test]
    fn both_placeholders_round_trip_through_hash_fields() {
        let old = SessionId::generate();
        let new = SessionId::generate();
        let forward = Entry::Forward(Forward {
            successor: new.hash(),
            sealed_id: old.seal(&new),
            until: 9_000,
            kept_until: 90_000,
        });
        assert_eq!(round_trip(old.hash(), &forward), forward);
        let marker = Entry::Superseded(Superseded {
            successor: new.hash(),
            until: 9_000,
            user_id: Some("ann".to_owned()),
        });
        assert_eq!(round_trip(old.hash(), &marker), marker);
        let fields = encode_entry(&marker).unwrap();
        assert!(
            !fields.iter().any(|(name, _)| name == "sealed"),
            "a marker carries no way to the successor's id: {fields:?}"
        );
    }

    #[test]
    fn no_fields_is_no_entry() {
        let id = SessionId::generate().hash();
        assert_eq!(decode_entry(id, Vec::new()).unwrap(), None);
        assert!(field_pairs(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn damaged_entries_are_corrupt_not_panics() {
        let id = SessionId::generate().hash();
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect()
        };
        let hex = id.to_hex();
        for fields in [
            pairs(&[("kind", "s")]),
            pairs(&[("created", "soon")]),
            pairs(&[("kind", "s"), ("created", "soon")]),
            pairs(&[("kind", "s"), ("d:k", "{not json")]),
            pairs(&[("kind", "s"), ("ip", "here")]),
            pairs(&[("kind", "?")]),
            pairs(&[("kind", "f"), ("succ", &hex), ("until", "5")]),
            pairs(&[
                ("kind", "f"),
                ("succ", "zz"),
                ("sealed", "00"),
                ("until", "5"),
            ]),
            pairs(&[("kind", "x"), ("until", "5")]),
            pairs(&[("kind", "x"), ("succ", &hex), ("until", "-1")]),
            pairs(&[("kind", "x"), ("succ", &hex)]),
        ] {
            assert!(
                matches!(
                    decode_entry(id, fields.clone()),
                    Err(StoreError::Corrupt(_))
                ),
                "{fields:?}"
            );
        }
        for reply in [
            Value::Int(3),
            Value::Array(vec![Value::BulkString(b"kind".to_vec())]),
            Value::Array(vec![
                Value::BulkString(b"kind".to_vec()),
                Value::BulkString(vec![0xff, 0xfe]),
            ]),
        ] {
            assert!(matches!(field_pairs(reply), Err(StoreError::Corrupt(_))));
        }
    }

    #[test]
    fn floats_keep_every_bit_through_the_fields() {
        // Found by the redis_codec fuzz target: JSON text parsed without
        // correct rounding read this value back as 184.67440737095225.
        let value = 184.674_407_370_952_22_f64;
        let mut record = record();
        record.data.insert("f".into(), json!(value));
        let entry = Entry::Session(Arc::new(record.clone()));
        let back = round_trip(record.id_hash, &entry);
        let read = back.session().unwrap().data.get("f").unwrap().as_f64();
        assert_eq!(read.map(f64::to_bits), Some(value.to_bits()), "{read:?}");
        assert_eq!(back, entry);
    }

    #[test]
    fn a_forward_is_kept_at_least_until_its_grace_ends() {
        // Found by the fuzz targets: a damaged `keep` earlier than `until`.
        let hex = SessionId::generate().hash().to_hex();
        let sealed = SessionId::generate().seal(&SessionId::generate()).to_hex();
        let fields = vec![
            ("kind".to_owned(), "f".to_owned()),
            ("succ".to_owned(), hex),
            ("sealed".to_owned(), sealed),
            ("until".to_owned(), "9000".to_owned()),
            ("keep".to_owned(), "5000".to_owned()),
        ];
        let id = SessionId::generate().hash();
        let Some(Entry::Forward(forward)) = decode_entry(id, fields).unwrap() else {
            panic!("a forward");
        };
        assert_eq!((forward.until, forward.kept_until), (9000, 9000));
    }

    #[test]
    fn fields_of_a_newer_version_are_ignored() {
        let record = record();
        let mut fields = encode_entry(&Entry::Session(Arc::new(record.clone()))).unwrap();
        fields.push(("future".into(), "whatever".into()));
        let entry = decode_entry(record.id_hash, fields).unwrap().unwrap();
        assert_eq!(entry.session().map(|r| &**r), Some(&record));
    }

    #[test]
    fn keys_of_one_user_share_a_hash_tag_and_ids_have_their_own() {
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = key[open..].find('}').unwrap() + open;
            key[open + 1..close].to_owned()
        };
        assert_eq!(
            tag(&lock_key("app:", "ann")),
            tag(&index_key("app:", "ann"))
        );
        assert_ne!(tag(&lock_key("app:", "ann")), tag(&lock_key("app:", "bob")));
        let id = SessionId::generate().hash();
        assert_eq!(
            record_key("app:", &id),
            format!("app:s:{{{}}}", id.to_hex())
        );
        assert_eq!(tag(&record_key("app:", &id)), id.to_hex());
        let odd = lock_key("app:", "we{ird}");
        assert!(odd.starts_with("app:u:{") && !odd.contains("we{"), "{odd}");
        assert_eq!(channel("app:"), "app:changes");
    }
}
