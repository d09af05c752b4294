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
pub const ID_LEN: usize = 16;

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
    /// Draws a new id from the operating system's CSPRNG.
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
    use super::*;

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
