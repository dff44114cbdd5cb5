//! Object ids: 128 bits derived from (class, name) with SHA-256, or random; the string
//! form is 32 lowercase hex digits and round-trips through [`FromStr`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The id of one object within its class.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId([u8; 16]);

impl ObjectId {
    /// The id for `name` in `class`: the same on every machine and every version.
    pub fn from_name(class: &str, name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"durable-object-id\0");
        h.update((class.len() as u64).to_le_bytes());
        h.update(class.as_bytes());
        h.update(name.as_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ObjectId(id)
    }

    /// A fresh random id.
    pub fn random() -> Self {
        ObjectId(rand::random())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// An id from raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ObjectId(bytes)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A string that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an object id is 32 hex digits, got {0:?}")]
pub struct ParseIdError(String);

impl FromStr for ObjectId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseIdError(s.chars().take(64).collect());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|_| bad())?;
            id[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(ObjectId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_form_round_trips() {
        for id in [ObjectId::from_name("Counter", "a"), ObjectId::random()] {
            assert_eq!(id.to_string().parse::<ObjectId>().unwrap(), id);
        }
    }

    #[test]
    fn names_are_deterministic_and_class_scoped() {
        assert_eq!(ObjectId::from_name("C", "x"), ObjectId::from_name("C", "x"));
        assert_ne!(ObjectId::from_name("C", "x"), ObjectId::from_name("D", "x"));
        assert_ne!(
            ObjectId::from_name("Ca", "b"),
            ObjectId::from_name("C", "ab")
        );
    }

    #[test]
    fn bad_strings_are_rejected() {
        assert!("xyz".parse::<ObjectId>().is_err());
        assert!("zz".repeat(16).parse::<ObjectId>().is_err());
    }
}
