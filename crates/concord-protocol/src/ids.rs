//! Identifiers and scalars that travel in messages: model and collection ids (validated),
//! sessions, users, tokens, request ids, creation nonces and timestamps.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid [`ModelId`] or [`CollectionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long, more than the maximum of {max}")]
    TooLong { kind: &'static str, len: usize, max: usize },
    #[error("{kind} contains the control character {found:?}")]
    ControlCharacter { kind: &'static str, found: char },
}

fn validate(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong { kind, len: s.len(), max });
    }
    if let Some(found) = s.chars().find(|c| c.is_control()) {
        return Err(IdError::ControlCharacter { kind, found });
    }
    Ok(())
}

/// Defines a validated string id: non-empty, at most `MAX_LEN` bytes, no control characters.
/// Decoding an invalid one fails, so no invalid id exists in memory.
macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted id, in UTF-8 bytes.
            pub const MAX_LEN: usize = $max;

            pub fn new(id: impl Into<String>) -> Result<$name, IdError> {
                let id = id.into();
                validate($kind, &id, Self::MAX_LEN)?;
                Ok($name(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(id: String) -> Result<$name, IdError> {
                $name::new(id)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(id: &str) -> Result<$name, IdError> {
                $name::new(id)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(id: &str) -> Result<$name, IdError> {
                $name::new(id)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let id = String::deserialize(deserializer)?;
                $name::new(id).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_id!(
    /// Names a model. Chosen by the client that creates the model (a UUID v7 string by
    /// default), so models can be created offline.
    ModelId,
    "model id",
    256
);

validated_id!(
    /// Names a collection: the group of models that shares default permissions.
    CollectionId,
    "collection id",
    256
);

/// Identifies one authenticated connection. A new one is issued by every successful
/// handshake, reconnections included.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub String);

/// Identifies a user of the domain (the JWT subject, or a server-made id for anonymous users).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub String);

/// An opaque secret the server hands out at handshake; presenting it later authenticates
/// again as the same user without the original credentials.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReconnectToken(pub String);

impl fmt::Debug for ReconnectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReconnectToken(..)")
    }
}

/// Correlates a reply with its request. The sender of a request picks the id (unique among
/// its own outstanding requests); the reply echoes it. Each direction has its own id space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Random bytes chosen when a model is created (offline or not) and kept with the creation
/// record, so that the server can tell a retry of the same creation (same id, same nonce:
/// answered as a success) from a different model that wants the same id (a conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CreationNonce(pub [u8; 16]);

/// Milliseconds since the Unix epoch, UTC. This crate reads no clock: whoever builds a
/// message supplies the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_validated() {
        assert!(ModelId::new("0190d1c2-7f6e-7cc3-a2f4-5d6e7f8a9b0c").is_ok());
        assert_eq!(ModelId::new(""), Err(IdError::Empty { kind: "model id" }));
        assert!(matches!(
            ModelId::new("x".repeat(ModelId::MAX_LEN + 1)),
            Err(IdError::TooLong { len: 257, .. })
        ));
        assert!(ModelId::new("x".repeat(ModelId::MAX_LEN)).is_ok());
        assert!(matches!(
            CollectionId::new("a\nb"),
            Err(IdError::ControlCharacter { found: '\n', .. })
        ));
    }

    #[test]
    fn reconnect_tokens_do_not_leak_into_debug_output() {
        let token = ReconnectToken("secret".into());
        assert_eq!(format!("{token:?}"), "ReconnectToken(..)");
    }
}
