//! Validated identifiers. Each is a newtype with `FromStr`/`Display`; construct them
//! only through parsing so that every value in the system has been checked once.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: String,
        max: usize,
    },
    #[error("{kind} {value:?} contains {found:?}; allowed: {allowed}")]
    BadChar {
        kind: &'static str,
        value: String,
        found: char,
        allowed: &'static str,
    },
    #[error("{kind} {value:?} has an empty segment between dots")]
    EmptySegment { kind: &'static str, value: String },
    #[error("doc_id {value:?} is not a UUID: {reason}")]
    BadUuid { value: String, reason: String },
}

/// An agency identifier (OrganId).
///
/// Real traffic carries QCVN 102 codes (`000.00.00.G22`), QĐ 20 codes (`H53.12`),
/// 12-digit enterprise codes and connection-centre ids. They share one shape:
/// up to 64 characters of `[0-9A-Za-z.-_]`, dot-separated non-empty segments. The
/// directory, not this type, decides which ones are routable. Letters are kept as
/// given; comparisons are exact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrganId(String);

impl OrganId {
    /// Longest OrganId accepted. QĐ 20 allows 35; real system ids run a little longer.
    pub const MAX_LEN: usize = 64;

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty(kind));
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong {
            kind,
            value: value.to_owned(),
            max,
        });
    }
    if let Some(found) = value.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadChar {
            kind,
            value: value.to_owned(),
            found,
            allowed,
        });
    }
    Ok(())
}

impl FromStr for OrganId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        validate("organ id", s, Self::MAX_LEN, "0-9 A-Z a-z . - _", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
        })?;
        if s.split('.').any(str::is_empty) {
            return Err(IdError::EmptySegment {
                kind: "organ id",
                value: s.to_owned(),
            });
        }
        Ok(Self(s.to_owned()))
    }
}

/// A node identifier, as in the node certificate's `urn:truc:node:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub const MAX_LEN: usize = 63;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        // A DNS label: node ids double as the DNS name in server certificates.
        validate("node id", s, Self::MAX_LEN, "a-z 0-9 -", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })?;
        if s.starts_with('-') || s.ends_with('-') {
            return Err(IdError::BadChar {
                kind: "node id",
                value: s.to_owned(),
                found: '-',
                allowed: "a-z 0-9 - (not first or last)",
            });
        }
        Ok(Self(s.to_owned()))
    }
}

/// A document id: a UUID chosen by the sender (version 7 when truc makes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocId(uuid::Uuid);

impl DocId {
    /// A new time-ordered id (UUIDv7) from the system clock and randomness.
    pub fn new_v7() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// A doc_id from a UUID made elsewhere (for example derived from an edXML
    /// DocumentId); the nil UUID is not a doc_id and maps to a fresh one.
    pub fn from_uuid(u: uuid::Uuid) -> Self {
        if u.is_nil() { Self::new_v7() } else { Self(u) }
    }

    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl FromStr for DocId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty("doc_id"));
        }
        let uuid = uuid::Uuid::try_parse(s).map_err(|e| IdError::BadUuid {
            value: s.chars().take(64).collect(),
            reason: e.to_string(),
        })?;
        if uuid.is_nil() {
            return Err(IdError::BadUuid {
                value: s.to_owned(),
                reason: "nil uuid".into(),
            });
        }
        Ok(Self(uuid))
    }
}

macro_rules! text_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.to_string()
            }
        }
    };
}
text_id!(OrganId);
text_id!(NodeId);
text_id!(DocId);

/// A position in one durable queue. Stored big-endian so keys sort by sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organ_ids_in_every_real_form_parse() {
        for ok in [
            "000.00.00.G22",
            "H53.12",
            "H37.02.02",
            "000.00.10.H47",
            "0101234567",   // 10-digit tax/enterprise code
            "010123456789", // 12-digit enterprise code
            "VNPT-IOC_01",
        ] {
            assert_eq!(ok.parse::<OrganId>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn organ_ids_with_bad_shapes_are_refused_with_the_reason() {
        assert_eq!("".parse::<OrganId>(), Err(IdError::Empty("organ id")));
        let err = "000.00.00/G22".parse::<OrganId>().unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
        assert!(matches!(
            "H53..12".parse::<OrganId>(),
            Err(IdError::EmptySegment { .. })
        ));
        assert!(matches!(
            ".H53".parse::<OrganId>(),
            Err(IdError::EmptySegment { .. })
        ));
        assert!(matches!(
            "A".repeat(65).parse::<OrganId>(),
            Err(IdError::TooLong { .. })
        ));
        assert!("H53 12".parse::<OrganId>().is_err());
        assert!("H53\u{0}".parse::<OrganId>().is_err());
    }

    #[test]
    fn node_ids_are_dns_labels() {
        assert!("nghean".parse::<NodeId>().is_ok());
        assert!("ha-noi-2".parse::<NodeId>().is_ok());
        assert!("NgheAn".parse::<NodeId>().is_err());
        assert!("-x".parse::<NodeId>().is_err());
        assert!("a.b".parse::<NodeId>().is_err());
    }

    #[test]
    fn doc_ids_round_trip_and_refuse_garbage() {
        let id = DocId::new_v7();
        assert_eq!(id.to_string().parse::<DocId>().unwrap(), id);
        assert!("not-a-uuid".parse::<DocId>().is_err());
        assert!(
            "00000000-0000-0000-0000-000000000000"
                .parse::<DocId>()
                .is_err()
        );
    }
}
