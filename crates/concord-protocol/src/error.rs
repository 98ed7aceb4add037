//! Error codes and the error reply that either side sends instead of a response.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, as a number both sides agree on.
///
/// A plain `u16` on the wire, not an enum: postcard encodes enum variants by index, so a
/// code added by a newer peer would make an older peer's decoder fail. Here an unknown code
/// decodes like any other; [`ErrorCode::name`] returns `None` for it and [`fmt::Display`]
/// shows the number. New codes are added as constants and never renumbered.
///
/// Ranges: 1–99 protocol, 100–199 authentication and access, 200–299 models, 300–399
/// operations and references, 400–499 server conditions.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this version of the protocol knows.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's `snake_case` name, `None` for a code this version does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// A frame could not be decoded.
    MALFORMED_FRAME = 1, "malformed_frame";
    /// The frame's protocol version is not one this peer speaks.
    UNSUPPORTED_VERSION = 2, "unsupported_version";
    /// A frame exceeded the receiver's size or nesting limits.
    FRAME_TOO_LARGE = 3, "frame_too_large";
    /// A well-formed message that is not allowed now (a request before the handshake, a
    /// response to no request, a second handshake).
    UNEXPECTED_MESSAGE = 4, "unexpected_message";
    /// A field has a value the receiver does not accept.
    INVALID_ARGUMENT = 5, "invalid_argument";
    /// The peer did not answer in time.
    TIMEOUT = 6, "timeout";

    /// A request that needs a session arrived before a successful handshake.
    NOT_AUTHENTICATED = 100, "not_authenticated";
    /// The credentials were refused (bad signature, unknown user, wrong audience).
    AUTHENTICATION_FAILED = 101, "authentication_failed";
    /// The JWT or reconnect token has expired.
    TOKEN_EXPIRED = 102, "token_expired";
    /// Anonymous access is not enabled on this server.
    ANONYMOUS_DISABLED = 103, "anonymous_disabled";
    /// The session lacks the permission the request needs.
    PERMISSION_DENIED = 104, "permission_denied";

    /// No model has this id.
    MODEL_NOT_FOUND = 200, "model_not_found";
    /// A model with this id exists and was not created by this creation nonce.
    MODEL_ALREADY_EXISTS = 201, "model_already_exists";
    /// The request needs the model open on this connection.
    MODEL_NOT_OPEN = 202, "model_not_open";
    /// The model is already open on this connection.
    MODEL_ALREADY_OPEN = 203, "model_already_open";
    /// The model was deleted.
    MODEL_DELETED = 204, "model_deleted";
    /// No collection has this id, and the server does not create collections on demand.
    COLLECTION_NOT_FOUND = 205, "collection_not_found";
    /// Read permission on the model was withdrawn.
    PERMISSION_REVOKED = 206, "permission_revoked";
    /// The model would grow past the server's size limit (or its initial data is over it).
    MODEL_TOO_LARGE = 207, "model_too_large";
    /// A query that does not parse or that the query language does not have; the details
    /// carry its `line` and `column` when known.
    INVALID_QUERY = 208, "invalid_query";
    /// A query would examine more models than the server lets one query examine (it needs
    /// an index, or a narrower condition).
    QUERY_SCAN_LIMIT = 209, "query_scan_limit";

    /// The operation does not apply (wrong element kind, index out of range, non-finite
    /// number) or introduces an element id that already exists.
    INVALID_OPERATION = 300, "invalid_operation";
    /// The base or known version is ahead of the model, or behind what the server keeps.
    VERSION_OUT_OF_RANGE = 301, "version_out_of_range";
    /// A submission's seqs do not follow the last seq the server decided for its replica
    /// (a gap, or a seq older than the last).
    SEQ_OUT_OF_ORDER = 302, "seq_out_of_order";
    /// A reference event names an element or value that is not valid.
    INVALID_REFERENCE = 303, "invalid_reference";
    /// The server could not apply the model's own history (a server-side fault).
    OPERATION_FAILED = 304, "operation_failed";

    /// An unexpected server-side failure.
    INTERNAL = 400, "internal";
    /// The server is shutting down or temporarily unavailable; retry later.
    UNAVAILABLE = 401, "unavailable";
    /// Too many requests or too much data; retry later.
    OVERLOADED = 402, "overloaded";
}

impl ErrorCode {
    pub fn is_known(self) -> bool {
        self.name().is_some()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown error code {}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "ErrorCode({} {name})", self.0),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

/// The typed failure of a request (or, without a request id, of the connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// For people and logs; programs decide on `code` and `details`.
    pub message: String,
    /// Code-specific facts, for example `model` and `created_at` with
    /// [`ErrorCode::MODEL_ALREADY_EXISTS`].
    pub details: BTreeMap<String, String>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply { code, message: message.into(), details: BTreeMap::new() }
    }

    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> ErrorReply {
        self.details.insert(key.into(), value.into());
        self
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorReply {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert!(code.is_known());
        }
        assert_eq!(ErrorCode::MODEL_NOT_FOUND.to_string(), "model_not_found");
        assert_eq!(ErrorCode(9999).to_string(), "unknown error code 9999");
        assert!(!ErrorCode(9999).is_known());
    }
}
