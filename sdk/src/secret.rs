//! [`Secret`]: a string that never prints itself and is wiped from memory on drop.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// The marker printed in place of a secret by `Debug` and `Display`.
pub const REDACTED: &str = "** redacted **";

/// A secret value: a credential, a token, a password.
///
/// * `Debug` and `Display` print [`REDACTED`], so a secret that slips into a log line, an
///   error message or a `{:?}` of a larger struct shows nothing.
/// * The bytes are zeroized when the value is dropped.
/// * [`Secret::expose`] is the only way to read it; grep for it to audit every use.
/// * It serializes as the plain string: serializing is how a credential reaches the wire or a
///   file on purpose. Audit records, metrics and errors never hold a `Secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// Reads the secret. Every call is a place where the secret leaves this type's protection.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_content() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Wrapper {
            token: Secret,
        }
        let w = Wrapper { token: s.clone() };
        let printed = format!("{w:?} {w:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains(REDACTED));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn serde_round_trip_carries_the_value() {
        let s = Secret::new("abc");
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(json, "\"abc\"");
        let back: Secret = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.expose(), "abc");
    }
}
