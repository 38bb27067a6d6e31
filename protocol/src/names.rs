//! Namespaces and keys: what they may contain, checked once on the way in.
//!
//! * A **namespace** is one training job or tenant: 1 to 64 bytes of ASCII
//!   letters, digits, `.`, `_` and `-`, starting with a letter or digit.
//! * A **key** names a tensor shard: 1 to 256 bytes. The name part holds
//!   ASCII letters, digits and `. _ - : /`, e.g. `layers.12.mlp.fc1.weight`.
//!   An optional suffix `#I/N` says the shard is part `I` of `N` of the
//!   tensor, with `0 <= I < N <= 65535` written in decimal without leading
//!   zeros, e.g. `layers.12.mlp.fc1.weight#3/8`.
//!
//! Keys sort as plain byte strings; `list` returns them in that order.

use serde::{Deserialize, Serialize};

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Longest key, in bytes (suffix included).
pub const MAX_KEY_LEN: usize = 256;
/// Largest `N` of a `#I/N` key suffix.
pub const MAX_SHARD_COUNT: u32 = 65535;

/// Why a namespace or key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("{what} is empty")]
    Empty {
        /// "namespace" or "key".
        what: &'static str,
    },
    /// Longer than the limit.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// "namespace" or "key".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A byte outside the allowed set.
    #[error("{what} {value:?} has {found:?} at byte {at}; allowed are {allowed}")]
    BadChar {
        /// "namespace" or "key".
        what: &'static str,
        /// The offending string (lossy).
        value: String,
        /// The first bad character.
        found: char,
        /// Its byte offset.
        at: usize,
        /// Description of the allowed set.
        allowed: &'static str,
    },
    /// A namespace that does not start with a letter or digit.
    #[error("namespace {0:?} must start with a letter or digit")]
    BadNamespaceStart(String),
    /// A `#I/N` suffix that does not parse or is out of range.
    #[error("key {key:?} has a bad shard suffix: {reason} (expected #I/N with 0 <= I < N <= 65535)")]
    BadShardSuffix {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

const NAMESPACE_ALLOWED: &str = "ASCII letters, digits, '.', '_' and '-'";
const KEY_ALLOWED: &str = "ASCII letters, digits, '.', '_', '-', ':' and '/', plus a '#I/N' suffix";

/// A validated namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Namespace(String);

impl Namespace {
    /// Validates `value` as a namespace.
    pub fn new(value: impl Into<String>) -> Result<Namespace, NameError> {
        let value = value.into();
        const WHAT: &str = "namespace";
        check_length(WHAT, &value, MAX_NAMESPACE_LEN)?;
        if let Some((at, found)) = bad_char(&value, |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(NameError::BadChar {
                what: WHAT,
                value,
                found,
                at,
                allowed: NAMESPACE_ALLOWED,
            });
        }
        if !value.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(NameError::BadNamespaceStart(value));
        }
        Ok(Namespace(value))
    }

    /// The namespace as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated shard key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Key(String);

/// The `#I/N` part of a key: shard `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardIndex {
    /// Which part, from 0.
    pub index: u32,
    /// How many parts the tensor has.
    pub count: u32,
}

impl Key {
    /// Validates `value` as a key.
    pub fn new(value: impl Into<String>) -> Result<Key, NameError> {
        let value = value.into();
        const WHAT: &str = "key";
        check_length(WHAT, &value, MAX_KEY_LEN)?;
        let name_end = value.find('#').unwrap_or(value.len());
        if let Some((at, found)) = bad_char(&value[..name_end], |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/')
        }) {
            return Err(NameError::BadChar {
                what: WHAT,
                value,
                found,
                at,
                allowed: KEY_ALLOWED,
            });
        }
        if name_end == 0 {
            return Err(NameError::BadShardSuffix {
                key: value,
                reason: "the name before '#' is empty",
            });
        }
        if name_end < value.len() {
            parse_suffix(&value[name_end + 1..]).map_err(|reason| NameError::BadShardSuffix {
                key: value.clone(),
                reason,
            })?;
        }
        Ok(Key(value))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without the `#I/N` suffix.
    pub fn name(&self) -> &str {
        self.0.split('#').next().unwrap_or(&self.0)
    }

    /// The `#I/N` suffix, if the key has one.
    pub fn shard_index(&self) -> Option<ShardIndex> {
        let (_, suffix) = self.0.split_once('#')?;
        parse_suffix(suffix).ok()
    }
}

/// The first character of `value` that `allowed` refuses, and where it
/// is. Every allowed character is ASCII, so the bytes are checked one by
/// one (no UTF-8 decoding on the way, as every request's names pass here),
/// and the first refused byte starts the character to report.
fn bad_char(value: &str, allowed: impl Fn(u8) -> bool) -> Option<(usize, char)> {
    let at = value.bytes().position(|b| !allowed(b))?;
    value[at..].chars().next().map(|c| (at, c))
}

fn check_length(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn parse_suffix(suffix: &str) -> Result<ShardIndex, &'static str> {
    let (index, count) = suffix.split_once('/').ok_or("missing '/'")?;
    let number = |s: &str| -> Result<u32, &'static str> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("not a decimal number");
        }
        if s.len() > 1 && s.starts_with('0') {
            return Err("leading zero");
        }
        s.parse::<u32>().map_err(|_| "number too large")
    };
    let index = number(index)?;
    let count = number(count)?;
    if count == 0 || count > MAX_SHARD_COUNT {
        return Err("N out of range");
    }
    if index >= count {
        return Err("I is not below N");
    }
    Ok(ShardIndex { index, count })
}

macro_rules! string_newtype_impls {
    ($ty:ident) => {
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                $ty::new(value)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                $ty::new(value)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                $ty::new(value)
            }
        }
        /// As the string it holds (borrowed: every request and answer
        /// serializes names).
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype_impls!(Namespace);
string_newtype_impls!(Key);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_as_the_strings_they_hold_and_are_checked_when_decoded() {
        let ns = Namespace::new("job-1").unwrap();
        let key = Key::new("layers.0.w#1/2").unwrap();
        assert_eq!(
            crate::codec::encode(&ns).unwrap(),
            crate::codec::encode(&"job-1").unwrap()
        );
        assert_eq!(
            crate::codec::encode(&key).unwrap(),
            crate::codec::encode(&"layers.0.w#1/2").unwrap()
        );
        assert_eq!(
            crate::codec::decode::<Key>(&crate::codec::encode(&key).unwrap()).unwrap(),
            key
        );
        assert!(crate::codec::decode::<Namespace>(&crate::codec::encode(&"no spaces").unwrap()).is_err());
    }

    #[test]
    fn namespaces() {
        for ok in ["job1", "llama-70b.run_3", "A", &"a".repeat(64)] {
            assert!(Namespace::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Namespace::new(""), Err(NameError::Empty { what: "namespace" }));
        assert!(matches!(
            Namespace::new("a".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            Namespace::new("a/b"),
            Err(NameError::BadChar { found: '/', at: 1, .. })
        ));
        assert!(matches!(Namespace::new(".."), Err(NameError::BadNamespaceStart(_))));
        assert!(matches!(Namespace::new("-x"), Err(NameError::BadNamespaceStart(_))));
    }

    #[test]
    fn keys_and_shard_suffixes() {
        let key = Key::new("layers.12.mlp.fc1.weight#3/8").unwrap();
        assert_eq!(key.name(), "layers.12.mlp.fc1.weight");
        assert_eq!(key.shard_index(), Some(ShardIndex { index: 3, count: 8 }));
        let plain = Key::new("model/embed_tokens:w").unwrap();
        assert_eq!(plain.shard_index(), None);
        assert_eq!(plain.name(), "model/embed_tokens:w");

        for bad in [
            "a#8/8",
            "a#1",
            "a#01/2",
            "a#1/0",
            "a#x/2",
            "a#1/70000",
            "#1/2",
            "a#1/2#3/4",
        ] {
            assert!(
                matches!(Key::new(bad), Err(NameError::BadShardSuffix { .. })),
                "{bad}: {:?}",
                Key::new(bad)
            );
        }
        assert!(matches!(Key::new("a b"), Err(NameError::BadChar { found: ' ', .. })));
        assert!(matches!(
            Key::new("é"),
            Err(NameError::BadChar { found: 'é', at: 0, .. })
        ));
        assert!(Key::new("k".repeat(256)).is_ok());
        assert!(matches!(Key::new("k".repeat(257)), Err(NameError::TooLong { .. })));
    }
}
