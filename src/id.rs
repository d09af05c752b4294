//! Session ids: generation from the OS CSPRNG, the at-rest hash, fingerprints.
//!
//! A [`SessionId`] is 128 random bits. It never leaves the process in clear
//! except inside the signed token a client holds (see [`crate::Key`]):
//! stores key records by its [`IdHash`], and logs, events and `Debug` output
//! use its [`fingerprint`](SessionId::fingerprint).

use std::fmt;

use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// Number of random bytes in a session id (128 bits, OWASP asks for at least 64).
pub(crate) const ID_LEN: usize = 16;

/// Serializes a type with `to_hex`/`from_hex` as its hex text.
macro_rules! hex_serde {
    ($type:ty, $expected:literal) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::from_hex(&text).ok_or_else(|| serde::de::Error::custom($expected))
            }
        }
    };
}

/// A session id: 128 bits from the operating system's CSPRNG.
///
/// The raw bytes are never shown: `Debug` and `Display` print the
/// [`fingerprint`](Self::fingerprint) only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    bytes: [u8; ID_LEN],
    // Every id is looked up or stored at least once: hash it once, up front.
    hash: IdHash,
}

impl SessionId {
    /// Draws a new id from the operating system's CSPRNG, one system call
    /// per id: no future id is ever held in memory, and a forked process
    /// cannot repeat its parent's.
    ///
    /// # Panics
    ///
    /// If the operating system cannot supply random bytes. A process that
    /// cannot get randomness must not hand out session ids, so there is no
    /// fallback.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_LEN];
        OsRng.try_fill_bytes(&mut bytes).expect(
            "the operating system's random number generator failed; refusing to issue session ids",
        );
        Self::from_bytes(bytes)
    }

    /// Builds an id from raw bytes (used when a verified token is decoded).
    pub(crate) fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tower-session-guard/at-rest/v1\0");
        hasher.update(bytes);
        Self {
            bytes,
            hash: IdHash(hasher.finalize().into()),
        }
    }

    /// The raw bytes, for signing.
    pub(crate) fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.bytes
    }

    /// The hash under which stores keep this session.
    ///
    /// Stores never see the id itself, so a leaked store dump (or a replica,
    /// or a backup) cannot be turned back into working tokens.
    #[must_use]
    pub fn hash(&self) -> IdHash {
        self.hash
    }

    /// A short, salted, one-way name for this session, safe to log.
    ///
    /// Sixteen hex characters (64 bits) of a domain-separated hash of the
    /// at-rest hash: enough to tell sessions apart in logs and events, useless
    /// for forging a token or finding the record.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.hash().fingerprint()
    }
}

impl SessionId {
    /// Hides `successor` so that only a holder of this id can recover it.
    ///
    /// When an id is renewed with a grace period, the store keeps a
    /// forwarding entry under the old id's hash. It must not hold the new id
    /// in clear, so it holds it masked with a pad derived from the old id,
    /// which only clients holding the old token know.
    pub(crate) fn seal(&self, successor: &SessionId) -> SealedId {
        let pad = self.successor_pad();
        let mut sealed = [0u8; ID_LEN];
        for (out, (a, b)) in sealed
            .iter_mut()
            .zip(successor.bytes.iter().zip(pad.iter()))
        {
            *out = a ^ b;
        }
        SealedId(sealed)
    }

    /// Recovers the id hidden by [`seal`](Self::seal).
    pub(crate) fn unseal(&self, sealed: &SealedId) -> SessionId {
        let pad = self.successor_pad();
        let mut id = [0u8; ID_LEN];
        for (out, (a, b)) in id.iter_mut().zip(sealed.0.iter().zip(pad.iter())) {
            *out = a ^ b;
        }
        SessionId::from_bytes(id)
    }

    fn successor_pad(&self) -> [u8; ID_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(b"tower-session-guard/successor/v1\0");
        hasher.update(self.bytes);
        let digest = hasher.finalize();
        let mut pad = [0u8; ID_LEN];
        pad.copy_from_slice(&digest[..ID_LEN]);
        pad
    }
}

/// A session id masked so that only the holder of the previous id can read
/// it (see renewal with a grace period).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SealedId([u8; ID_LEN]);

impl SealedId {
    /// Lower-case hex, for stores with text fields.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the form written by [`to_hex`](Self::to_hex).
    #[must_use]
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex(text).map(Self)
    }
}

impl fmt::Debug for SealedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedId(..)")
    }
}

hex_serde!(SealedId, "a sealed id is 32 lower-case hex characters");

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionId")
            .field(&self.fingerprint())
            .finish()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fingerprint(), f)
    }
}

/// The at-rest form of a [`SessionId`]: a SHA-256 hash, the key of a stored record.
///
/// It is not a secret in the way the id is (it cannot be turned into a
/// token), but it is the store's primary key, so `Debug` shows only its
/// fingerprint too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdHash([u8; 32]);

impl IdHash {
    /// Wraps 32 bytes read back from a store.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes, for stores that key records by them.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the 32 bytes, for stores with text keys.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the form written by [`to_hex`](Self::to_hex).
    #[must_use]
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex(text).map(Self)
    }

    /// The log-safe fingerprint of the session this hash belongs to.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hasher = Sha256::new();
        hasher.update(b"tower-session-guard/fingerprint/v1\0");
        hasher.update(self.0);
        let digest = hasher.finalize();
        let mut short = [0u8; 8];
        short.copy_from_slice(&digest[..8]);
        Fingerprint(short)
    }
}

impl fmt::Debug for IdHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdHash").field(&self.fingerprint()).finish()
    }
}

hex_serde!(IdHash, "an id hash is 64 lower-case hex characters");

/// The hasher of the crate's private in-memory tables, keyed by [`IdHash`]
/// (or by a `u64` that is itself a keyed hash).
///
/// An `IdHash` is already a SHA-256 digest of a random id, so a table needs
/// no second cryptographic hash of it: SipHash over all 32 bytes would cost
/// a fifth of a new session's time. Mixing eight bytes of the digest with a
/// per-table random seed is enough, and stays safe against crafted keys:
/// these tables only ever store ids the server generated, a client chooses
/// no `IdHash` to look up without first forging a signed token (the layer
/// looks nothing up for a token whose signature fails), and even then only
/// a preimage of SHA-256 would place it in a chosen bucket.
///
/// `IdHash` itself keeps the full-width `Hash`: applications may put ids
/// parsed from untrusted input ([`SessionHandle`](crate::SessionHandle)) in
/// their own hash maps, under a hasher that reads every byte.
#[derive(Clone, Debug)]
pub(crate) struct IdHashState {
    seed: u64,
}

impl IdHashState {
    pub(crate) fn new() -> Self {
        let mut seed = [0u8; 8];
        OsRng.try_fill_bytes(&mut seed).expect(
            "the operating system's random number generator failed; \
             tower-session-guard cannot seed its session tables without it",
        );
        Self {
            seed: u64::from_le_bytes(seed),
        }
    }
}

impl std::hash::BuildHasher for IdHashState {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.seed)
    }
}

/// See [`IdHashState`].
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A final avalanche, so that every output bit depends on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }

    fn write_u64(&mut self, bits: u64) {
        self.0 = (self.0 ^ bits).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        // Length prefixes: the same for every key of a table.
        self.write_u64(n as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        // The keys are SHA-256 digests: their first eight bytes spread as
        // well as all 32 (see the type's docs for why that is safe here).
        let mut bits = [0u8; 8];
        let len = bytes.len().min(8);
        bits[..len].copy_from_slice(&bytes[..len]);
        self.write_u64(u64::from_le_bytes(bits));
    }
}

/// A short one-way name of a session for logs, events and admin listings.
///
/// Displayed as sixteen lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 8]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// As its sixteen hex characters.
impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// `N` bytes from `2 * N` lower-case hex characters.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn table_hashes_agree_on_equal_keys_and_spread_over_buckets() {
        let state = IdHashState::new();
        let id = SessionId::generate().hash();
        assert_eq!(
            state.hash_one(id),
            state.hash_one(IdHash::from_bytes(*id.as_bytes()))
        );

        // 64 buckets, 64 000 keys: each bucket should get about 1000, both
        // by the low bits (a shard's map) and by bits 40-45 (the shard).
        let mut buckets = [[0u32; 64]; 2];
        for _ in 0..64_000 {
            let hash = state.hash_one(SessionId::generate().hash());
            for (n, bits) in [hash, hash >> 40].into_iter().enumerate() {
                buckets[n][usize::try_from(bits % 64).unwrap()] += 1;
            }
        }
        for (n, counts) in buckets.iter().enumerate() {
            for (i, count) in counts.iter().enumerate() {
                assert!(
                    (800..1200).contains(count),
                    "bucket {i} of set {n} got {count} of 64 000"
                );
            }
        }
    }

    #[test]
    fn the_public_hash_of_an_id_hash_reads_every_byte() {
        // Applications may hash ids parsed from untrusted input: keys that
        // differ only at the end must not collide whatever the hasher.
        let state = std::collections::hash_map::RandomState::new();
        let mut last = [7u8; 32];
        let a = IdHash::from_bytes(last);
        last[31] = 8;
        let b = IdHash::from_bytes(last);
        assert_ne!(state.hash_one(a), state.hash_one(b));
    }

    #[test]
    fn table_hashes_depend_on_the_seed() {
        let id = SessionId::generate().hash();
        let (a, b) = (IdHashState::new(), IdHashState::new());
        assert_ne!(a.hash_one(id), b.hash_one(id));
    }

    #[test]
    fn generated_ids_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn debug_and_display_never_show_the_raw_bytes() {
        let id = SessionId::from_bytes([0xab; ID_LEN]);
        let raw_hex = "ab".repeat(ID_LEN);
        for shown in [
            format!("{id:?}"),
            format!("{id}"),
            format!("{:?}", id.hash()),
        ] {
            assert!(!shown.contains(&raw_hex), "{shown}");
            assert!(shown.contains(&id.fingerprint().to_string()), "{shown}");
        }
        assert!(!format!("{:?}", id.hash()).contains(&id.hash().to_hex()));
    }

    #[test]
    fn hash_hex_round_trips() {
        let hash = SessionId::generate().hash();
        assert_eq!(IdHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(IdHash::from_hex("zz"), None);
        assert_eq!(IdHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn only_the_previous_id_unseals_its_successor() {
        let old = SessionId::generate();
        let new = SessionId::generate();
        let sealed = old.seal(&new);
        assert_eq!(old.unseal(&sealed), new);
        assert_ne!(SessionId::generate().unseal(&sealed), new);
        assert_ne!(
            sealed.to_hex(),
            hex(&new.bytes),
            "the successor is not stored in clear"
        );
        assert_eq!(SealedId::from_hex(&sealed.to_hex()), Some(sealed));
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let id = SessionId::from_bytes([7; ID_LEN]);
        assert_eq!(id.fingerprint(), id.fingerprint());
        assert_eq!(id.fingerprint().to_string().len(), 16);
    }
}
