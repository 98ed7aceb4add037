//! The codec: messages to frames and back. Everything that knows the byte format is here.
//!
//! A frame is one WebSocket binary message:
//!
//! ```text
//! byte 0   protocol version (PROTOCOL_VERSION)
//! byte 1   kind: 1 = client to server (ClientMessage), 2 = server to client (ServerMessage),
//!          3 = a fragment of a larger message (see `fragment`)
//! 2..      the message, postcard 1.x
//! ```
//!
//! Decoding checks the size first, then the version byte, then the kind, and only then
//! parses the body, with a nesting budget and without trusting length prefixes
//! ([`Limits`]). Every malformed input gives a [`DecodeError`]; none panics. A message
//! larger than a fragment size travels as several fragment frames ([`encode_frames`]),
//! which a [`Reassembler`] puts back together before decoding.

mod de;
mod fragment;
mod ser;

pub use fragment::{
    DEFAULT_FRAGMENT_BYTES, FRAGMENT_KIND, Fragments, Reassembler, encode_frames, fragment_frame,
};

use std::cell::Cell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::ClientMessage;
use crate::error::ErrorCode;
use crate::server::ServerMessage;

/// The protocol version this crate speaks: the first byte of every frame, repeated in the
/// handshake.
pub const PROTOCOL_VERSION: u8 = 8;

/// The WebSocket close code a peer uses when it closes a connection because the other side
/// speaks an unsupported protocol version (the reason text names the versions). Close codes
/// are understood by every version, unlike frames.
pub const CLOSE_UNSUPPORTED_VERSION: u16 = 4001;

/// Bounds on what the codec accepts and produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame, header included: one WebSocket message, whole or a fragment.
    pub max_frame_bytes: usize,
    /// The largest message once its fragments are put together (its whole frame, header
    /// included); a [`Reassembler`] refuses to collect more.
    pub max_message_bytes: usize,
    /// How many levels of nested components a frame may have: each struct field, tuple or
    /// sequence element, map key or value, enum payload, `Some` or newtype is one level
    /// below its container. A model value costs three levels per level of nesting.
    pub max_depth: usize,
}

impl Limits {
    /// 16 MiB frames, 256 MiB messages, 128 levels (model values about 40 levels deep).
    pub const DEFAULT: Limits = Limits {
        max_frame_bytes: 16 * 1024 * 1024,
        max_message_bytes: 256 * 1024 * 1024,
        max_depth: 128,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// Which way a frame travels; its byte is the second byte of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    ClientToServer,
    ServerToClient,
}

impl FrameKind {
    pub const fn byte(self) -> u8 {
        match self {
            FrameKind::ClientToServer => 1,
            FrameKind::ServerToClient => 2,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::ClientMessage {}
    impl Sealed for crate::ServerMessage {}
}

/// A message that is sent as a frame: [`ClientMessage`] or [`ServerMessage`] (sealed).
pub trait WireMessage: Serialize + DeserializeOwned + sealed::Sealed {
    const KIND: FrameKind;
}

impl WireMessage for ClientMessage {
    const KIND: FrameKind = FrameKind::ClientToServer;
}

impl WireMessage for ServerMessage {
    const KIND: FrameKind = FrameKind::ServerToClient;
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol version {found} (this peer speaks version {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("frame kind {found} is not the expected kind {expected}")]
    WrongKind { found: u8, expected: u8 },
    #[error("frame nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("frame ends in the middle of a message")]
    Truncated,
    #[error("{count} unexpected bytes after the message")]
    TrailingBytes { count: usize },
    #[error("unknown variant {index} (a message or value from a newer peer?)")]
    UnknownVariant { index: u32 },
    #[error("a value failed validation (an invalid model id or document, for example)")]
    InvalidValue,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The fragments of one message add up to more than [`Limits::max_message_bytes`].
    #[error("a fragmented message of at least {size} bytes exceeds the limit of {max}")]
    MessageTooLarge { size: usize, max: usize },
    /// A fragment that continues or ends a message that was never begun.
    #[error("a fragment continues no message")]
    StrayFragment,
    /// A frame that is not the next fragment of the message being put together: a new
    /// message began before the last one ended.
    #[error("a frame arrived in the middle of a fragmented message")]
    InterleavedFragment,
}

impl DecodeError {
    /// The code to report this failure to the peer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            DecodeError::TooLarge { .. }
            | DecodeError::TooDeep { .. }
            | DecodeError::MessageTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            _ => ErrorCode::MALFORMED_FRAME,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("the frame would exceed the limit of {max} bytes")]
    TooLarge { max: usize },
    #[error("the message nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("the message cannot be encoded: {0}")]
    Unencodable(String),
}

/// What the depth wrappers report besides the format's own error (which cannot carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    TooDeep,
    UnknownVariant(u32),
}

/// Shared by all the wrappers of one encode or decode; the first fault wins.
#[derive(Debug, Default)]
struct Guard {
    fault: Cell<Option<Fault>>,
}

impl Guard {
    fn trip(&self, fault: Fault) {
        if self.fault.get().is_none() {
            self.fault.set(Some(fault));
        }
    }
}

/// Encodes `message` as one frame, within [`Limits::DEFAULT`].
pub fn encode<M: WireMessage>(message: &M) -> Result<Vec<u8>, EncodeError> {
    encode_with(&Limits::DEFAULT, message)
}

/// Encodes `message` as one frame; refuses to produce one that `limits` would reject.
pub fn encode_with<M: WireMessage>(limits: &Limits, message: &M) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[PROTOCOL_VERSION, M::KIND.byte()]);
    encode_into(limits, buf, message)
}

/// Encodes `message` as one whole frame of up to [`Limits::max_message_bytes`], which may be
/// larger than a frame may travel: send it through [`fragment_frame`] (or use
/// [`encode_frames`]).
pub fn encode_message<M: WireMessage>(
    limits: &Limits,
    message: &M,
) -> Result<Vec<u8>, EncodeError> {
    let whole = Limits { max_frame_bytes: limits.max_message_bytes, ..*limits };
    encode_with(&whole, message)
}

/// Decodes one frame, within [`Limits::DEFAULT`].
pub fn decode<M: WireMessage>(frame: &[u8]) -> Result<M, DecodeError> {
    decode_with(&Limits::DEFAULT, frame)
}

/// Decodes one frame within `limits`.
pub fn decode_with<M: WireMessage>(limits: &Limits, frame: &[u8]) -> Result<M, DecodeError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(DecodeError::TooLarge { size: frame.len(), max: limits.max_frame_bytes });
    }
    let (&version, rest) = frame.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (&kind, body) = rest.split_first().ok_or(DecodeError::Truncated)?;
    if kind != M::KIND.byte() {
        return Err(DecodeError::WrongKind { found: kind, expected: M::KIND.byte() });
    }
    decode_body(limits, body)
}

/// Encodes any serializable value as bare postcard (no frame header) with the same depth
/// and size limits: for other formats that embed this codec, such as stored records.
pub fn encode_value<T: Serialize + ?Sized>(
    limits: &Limits,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    encode_into(limits, Vec::new(), value)
}

/// Decodes bare postcard (no frame header) with the same defences as [`decode_with`].
pub fn decode_value<T: DeserializeOwned>(limits: &Limits, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: limits.max_frame_bytes });
    }
    decode_body(limits, bytes)
}

/// The number of bytes `value` takes as bare postcard (as [`encode_value`] would write it),
/// counted without writing them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    postcard::serialize_with_flavor(value, Counter(0))
        .map_err(|error| EncodeError::Unencodable(error.to_string()))
}

/// An output that only counts.
struct Counter(usize);

impl postcard::ser_flavors::Flavor for Counter {
    type Output = usize;

    fn try_push(&mut self, _: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0 += bytes.len();
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

fn encode_into<T: Serialize + ?Sized>(
    limits: &Limits,
    buf: Vec<u8>,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    let guard = Guard::default();
    let root = ser::Root { value, budget: limits.max_depth, guard: &guard };
    let output = CappedVec { buf, max: limits.max_frame_bytes };
    postcard::serialize_with_flavor(&root, output).map_err(|error| match guard.fault.get() {
        Some(_) => EncodeError::TooDeep { max: limits.max_depth },
        None if error == postcard::Error::SerializeBufferFull => {
            EncodeError::TooLarge { max: limits.max_frame_bytes }
        }
        None => EncodeError::Unencodable(error.to_string()),
    })
}

fn decode_body<T: DeserializeOwned>(limits: &Limits, body: &[u8]) -> Result<T, DecodeError> {
    let guard = Guard::default();
    let mut postcard = postcard::Deserializer::from_bytes(body);
    let limited = de::Limited { de: &mut postcard, budget: limits.max_depth, guard: &guard };
    let value = T::deserialize(limited).map_err(|error| match guard.fault.get() {
        Some(Fault::TooDeep) => DecodeError::TooDeep { max: limits.max_depth },
        Some(Fault::UnknownVariant(index)) => DecodeError::UnknownVariant { index },
        None => from_postcard(error),
    })?;
    let rest = postcard.finalize().map_err(from_postcard)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(value)
}

fn from_postcard(error: postcard::Error) -> DecodeError {
    use postcard::Error as E;
    match error {
        E::DeserializeUnexpectedEnd => DecodeError::Truncated,
        E::SerdeDeCustom => DecodeError::InvalidValue,
        E::DeserializeBadVarint => DecodeError::Malformed("invalid varint"),
        E::DeserializeBadBool => DecodeError::Malformed("invalid bool"),
        E::DeserializeBadChar => DecodeError::Malformed("invalid char"),
        E::DeserializeBadUtf8 => DecodeError::Malformed("invalid UTF-8"),
        E::DeserializeBadOption => DecodeError::Malformed("invalid option tag"),
        E::DeserializeBadEnum => DecodeError::Malformed("invalid enum tag"),
        _ => DecodeError::Malformed("invalid encoding"),
    }
}

/// The output buffer: fails as soon as the frame would exceed the limit, so an oversized
/// message is never fully materialised.
struct CappedVec {
    buf: Vec<u8>,
    max: usize,
}

impl postcard::ser_flavors::Flavor for CappedVec {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.buf.len() >= self.max {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() > self.max.saturating_sub(self.buf.len()) {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde::de::{SeqAccess, Visitor};

    use super::*;

    /// Records the size hint its sequence reports.
    #[derive(Debug)]
    struct Probe(Option<usize>);

    impl<'de> Deserialize<'de> for Probe {
        fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Probe, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Probe;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a sequence")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Probe, A::Error> {
                    let hint = seq.size_hint();
                    while seq.next_element::<u8>()?.is_some() {}
                    Ok(Probe(hint))
                }
            }
            de.deserialize_seq(V)
        }
    }

    #[test]
    fn sequences_report_no_size_hint() {
        // A sequence of 3 bytes, which postcard alone would announce as Some(3).
        let probe: Probe = decode_value(&Limits::DEFAULT, &[3, 7, 8, 9]).unwrap();
        assert_eq!(probe.0, None);
    }

    #[test]
    fn depth_is_counted_the_same_both_ways() {
        // Five one-element sequences around an empty one: the bytes `1 1 1 1 1 0`, five
        // levels below the outermost sequence.
        type Nested = Vec<Vec<Vec<Vec<Vec<Vec<u8>>>>>>;
        let bytes = [1, 1, 1, 1, 1, 0];
        let exact = Limits { max_depth: 5, ..Limits::DEFAULT };
        let value: Nested = decode_value(&exact, &bytes).unwrap();
        assert_eq!(encode_value(&exact, &value).unwrap(), bytes);
        let tighter = Limits { max_depth: 4, ..exact };
        assert_eq!(
            decode_value::<Nested>(&tighter, &bytes).unwrap_err(),
            DecodeError::TooDeep { max: 4 }
        );
        assert_eq!(encode_value(&tighter, &value).unwrap_err(), EncodeError::TooDeep { max: 4 });
    }

    #[test]
    fn maps_count_keys_and_values_one_level_down() {
        let mut map = BTreeMap::new();
        map.insert(1u8, Some(2u8));
        let limits = Limits { max_depth: 2, ..Limits::DEFAULT };
        let bytes = encode_value(&limits, &map).unwrap();
        assert_eq!(decode_value::<BTreeMap<u8, Option<u8>>>(&limits, &bytes).unwrap(), map);
        let tighter = Limits { max_depth: 1, ..limits };
        assert!(matches!(encode_value(&tighter, &map), Err(EncodeError::TooDeep { .. })));
        assert!(matches!(
            decode_value::<BTreeMap<u8, Option<u8>>>(&tighter, &bytes),
            Err(DecodeError::TooDeep { .. })
        ));
    }

    #[test]
    fn encoding_stops_at_the_size_limit() {
        let limits = Limits { max_frame_bytes: 10, ..Limits::DEFAULT };
        assert_eq!(
            encode_value(&limits, &vec![0u8; 20]).unwrap_err(),
            EncodeError::TooLarge { max: 10 }
        );
        assert_eq!(
            encode_value(&limits, "0123456789ab").unwrap_err(),
            EncodeError::TooLarge { max: 10 }
        );
        assert_eq!(encode_value(&limits, &[0u8; 9][..]).unwrap().len(), 10);
    }
}
