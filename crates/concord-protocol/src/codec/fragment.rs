//! Messages larger than one frame should be: a frame of more than a fragment size is sent as
//! consecutive **fragment frames**, each carrying the next slice of it:
//!
//! ```text
//! byte 0   protocol version (PROTOCOL_VERSION)
//! byte 1   3 (FRAGMENT_KIND)
//! byte 2   flags: bit 0 = first fragment, bit 1 = last fragment; the other bits are zero
//! 3..      the next bytes of the whole frame (its own version and kind bytes included)
//! ```
//!
//! The fragments of one message are sent one after another, with no other frame between
//! them. The receiver's [`Reassembler`] collects them — never more than
//! [`Limits::max_message_bytes`] — and decodes the whole frame as usual, so the message's
//! version, direction, size and depth are checked exactly as for a frame that came whole.

use std::marker::PhantomData;

use super::{
    DecodeError, EncodeError, Limits, PROTOCOL_VERSION, WireMessage, decode_with, encode_message,
};

/// The kind byte of a fragment frame.
pub const FRAGMENT_KIND: u8 = 3;

/// The largest frame a server sends by default: larger messages go as fragments of this
/// size, so that one big snapshot never needs a big frame on either side.
pub const DEFAULT_FRAGMENT_BYTES: usize = 1024 * 1024;

const FIRST: u8 = 0b01;
const LAST: u8 = 0b10;
/// Version, kind and flags.
const HEADER_BYTES: usize = 3;

/// Encodes `message` as the frames to send: the frame itself when it is at most
/// `fragment_bytes` long, otherwise fragment frames of at most `fragment_bytes` each. The
/// whole message may take up to [`Limits::max_message_bytes`].
pub fn encode_frames<M: WireMessage>(
    limits: &Limits,
    fragment_bytes: usize,
    message: &M,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let frame = encode_message(limits, message)?;
    Ok(match fragment_frame(&frame, fragment_bytes) {
        Some(fragments) => fragments.collect(),
        None => vec![frame],
    })
}

/// The fragment frames to send an encoded `frame` as, each at most `fragment_bytes` long
/// (but never less than 4 bytes); `None` when the frame is small enough to go as it is.
pub fn fragment_frame(frame: &[u8], fragment_bytes: usize) -> Option<Fragments<'_>> {
    (frame.len() > fragment_bytes).then(|| Fragments {
        rest: frame,
        payload: fragment_bytes.max(HEADER_BYTES + 1) - HEADER_BYTES,
        first: true,
    })
}

/// The fragment frames of one frame, in order ([`fragment_frame`]).
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    rest: &'a [u8],
    payload: usize,
    first: bool,
}

impl Iterator for Fragments<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.rest.is_empty() && !self.first {
            return None;
        }
        let (slice, rest) = self.rest.split_at(self.payload.min(self.rest.len()));
        let mut flags = 0;
        if self.first {
            flags |= FIRST;
        }
        if rest.is_empty() {
            flags |= LAST;
        }
        let mut fragment = Vec::with_capacity(HEADER_BYTES + slice.len());
        fragment.extend_from_slice(&[PROTOCOL_VERSION, FRAGMENT_KIND, flags]);
        fragment.extend_from_slice(slice);
        self.rest = rest;
        self.first = false;
        Some(fragment)
    }
}

/// Takes the frames of one connection, in order, and gives back its messages: a whole frame
/// decodes at once, fragments are collected until the last one. After an error the
/// connection should be closed (what was being collected is dropped).
#[derive(Debug)]
pub struct Reassembler<M> {
    limits: Limits,
    /// The message being put together, if a first fragment came and its last did not yet.
    partial: Option<Vec<u8>>,
    message: PhantomData<fn() -> M>,
}

impl<M: WireMessage> Reassembler<M> {
    /// Each frame within `limits.max_frame_bytes`, each message within
    /// `limits.max_message_bytes`.
    pub fn new(limits: Limits) -> Reassembler<M> {
        Reassembler { limits, partial: None, message: PhantomData }
    }

    /// Whether a fragmented message is half received.
    pub fn is_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// One received frame: the message it completes, or `None` for a fragment of a message
    /// that is not complete yet.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<M>, DecodeError> {
        let result = self.take(frame);
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    fn take(&mut self, frame: &[u8]) -> Result<Option<M>, DecodeError> {
        let fragment = frame.len() >= 2 && frame[1] == FRAGMENT_KIND;
        if !fragment {
            if self.partial.is_some() {
                return Err(DecodeError::InterleavedFragment);
            }
            return decode_with(&self.limits, frame).map(Some);
        }
        if frame.len() > self.limits.max_frame_bytes {
            let max = self.limits.max_frame_bytes;
            return Err(DecodeError::TooLarge { size: frame.len(), max });
        }
        if frame[0] != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: frame[0],
                supported: PROTOCOL_VERSION,
            });
        }
        let (&flags, payload) = frame[2..].split_first().ok_or(DecodeError::Truncated)?;
        if flags & !(FIRST | LAST) != 0 {
            return Err(DecodeError::Malformed("invalid fragment flags"));
        }
        let collected = match (flags & FIRST != 0, self.partial.as_mut()) {
            (true, Some(_)) => return Err(DecodeError::InterleavedFragment),
            (false, None) => return Err(DecodeError::StrayFragment),
            (true, None) => self.partial.insert(Vec::new()),
            (false, Some(collected)) => collected,
        };
        let size = collected.len() + payload.len();
        if size > self.limits.max_message_bytes {
            return Err(DecodeError::MessageTooLarge { size, max: self.limits.max_message_bytes });
        }
        collected.extend_from_slice(payload);
        if flags & LAST == 0 {
            return Ok(None);
        }
        let whole = self.partial.take().unwrap_or_default();
        let limits = Limits { max_frame_bytes: self.limits.max_message_bytes, ..self.limits };
        match whole.get(1) {
            // A fragment inside fragments: never sent, so never accepted.
            Some(&FRAGMENT_KIND) => Err(DecodeError::Malformed("a fragment inside a fragment")),
            _ => decode_with(&limits, &whole).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, ErrorReply, ServerMessage};

    fn error_message(bytes: usize) -> ServerMessage {
        ServerMessage::Error {
            to: None,
            error: ErrorReply::new(ErrorCode::INTERNAL, "x".repeat(bytes)),
        }
    }

    #[test]
    fn small_frames_go_whole_and_large_ones_in_fragments_that_reassemble() {
        let limits = Limits::DEFAULT;
        let small = error_message(10);
        let frames = encode_frames(&limits, 64, &small).unwrap();
        assert_eq!(frames, vec![crate::encode(&small).unwrap()]);

        let large = error_message(1_000);
        let frames = encode_frames(&limits, 64, &large).unwrap();
        assert!(frames.len() > 10);
        assert!(frames.iter().all(|f| f.len() <= 64 && f[1] == FRAGMENT_KIND));
        let mut reassembler = Reassembler::<ServerMessage>::new(limits);
        let (last, rest) = frames.split_last().unwrap();
        for frame in rest {
            assert_eq!(reassembler.push(frame).unwrap(), None);
            assert!(reassembler.is_partial());
        }
        assert_eq!(reassembler.push(last).unwrap(), Some(large));
        assert!(!reassembler.is_partial());
        // And the next message comes whole again.
        assert_eq!(reassembler.push(&crate::encode(&small).unwrap()).unwrap(), Some(small));
    }

    #[test]
    fn a_message_just_over_the_fragment_size_goes_in_two() {
        let message = error_message(100);
        let frame = crate::encode(&message).unwrap();
        let fragments: Vec<_> = fragment_frame(&frame, frame.len() - 1).unwrap().collect();
        assert_eq!(fragments.len(), 2);
        assert_eq!(fragments[0][2], FIRST);
        assert_eq!(fragments[1][2], LAST);
        assert!(fragment_frame(&frame, frame.len()).is_none());
    }

    #[test]
    fn stray_interleaved_and_oversized_fragments_are_typed_errors() {
        let limits = Limits::DEFAULT;
        let frames = encode_frames(&limits, 32, &error_message(200)).unwrap();
        let whole = crate::encode(&error_message(1)).unwrap();
        let mut r = Reassembler::<ServerMessage>::new(limits);
        assert_eq!(r.push(&frames[1]), Err(DecodeError::StrayFragment));
        assert_eq!(r.push(frames.last().unwrap()), Err(DecodeError::StrayFragment));

        r.push(&frames[0]).unwrap();
        assert_eq!(r.push(&whole), Err(DecodeError::InterleavedFragment));
        assert!(!r.is_partial(), "an error drops what was collected");

        r.push(&frames[0]).unwrap();
        assert_eq!(r.push(&frames[0]), Err(DecodeError::InterleavedFragment));

        let tight = Limits { max_message_bytes: 100, ..limits };
        let mut r = Reassembler::<ServerMessage>::new(tight);
        let error = frames.iter().find_map(|f| r.push(f).err()).unwrap();
        assert!(matches!(error, DecodeError::MessageTooLarge { max: 100, .. }), "{error:?}");

        let mut r = Reassembler::<ServerMessage>::new(limits);
        let mut bad = frames[0].clone();
        bad[2] |= 0b100;
        assert_eq!(r.push(&bad), Err(DecodeError::Malformed("invalid fragment flags")));
        assert_eq!(r.push(&[PROTOCOL_VERSION, FRAGMENT_KIND]), Err(DecodeError::Truncated));
        assert!(matches!(
            r.push(&[1, FRAGMENT_KIND, FIRST | LAST]),
            Err(DecodeError::UnsupportedVersion { found: 1, .. })
        ));
    }

    #[test]
    fn a_fragmented_message_is_checked_like_a_whole_one() {
        // Fragments of a client message handed to a server-message reassembler.
        let client = crate::ClientMessage::Request {
            id: crate::RequestId(1),
            request: crate::ClientRequest::Ping,
        };
        let frame = crate::encode(&client).unwrap();
        let fragments: Vec<_> = fragment_frame(&frame, 4).unwrap().collect();
        let mut r = Reassembler::<ServerMessage>::new(Limits::DEFAULT);
        let errors: Vec<_> = fragments.iter().filter_map(|f| r.push(f).err()).collect();
        assert!(matches!(errors[..], [DecodeError::WrongKind { found: 1, expected: 2 }]));
        // Fragments of fragments are never produced, and refused.
        let inner: Vec<u8> = fragments.concat();
        let nested: Vec<_> = fragment_frame(&inner, 8).unwrap().collect();
        let errors: Vec<_> = nested.iter().filter_map(|f| r.push(f).err()).collect();
        assert_eq!(errors, vec![DecodeError::Malformed("a fragment inside a fragment")]);
    }
}
