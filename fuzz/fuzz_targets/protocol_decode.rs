//! Fuzzes the protocol decoder with arbitrary bytes, as both client and server frames,
//! under the default limits: decoding never panics, never overflows the stack, and whatever
//! decodes re-encodes to a frame that decodes again to the same message.
//!
//! Messages are compared through their encodings: a decoded NaN is not equal to itself, but
//! its bytes are.

#![no_main]

use concord_protocol::{ClientMessage, ServerMessage, WireMessage, decode, encode};
use libfuzzer_sys::fuzz_target;

fn check<M: WireMessage>(data: &[u8]) {
    let Ok(message) = decode::<M>(data) else {
        return;
    };
    let frame = encode(&message).expect("a decoded message re-encodes within the same limits");
    let again: M = decode(&frame).expect("a re-encoded message decodes");
    let frame_again = encode(&again).expect("a re-decoded message re-encodes");
    assert_eq!(frame_again, frame, "encoding is not stable across a round trip");
}

fuzz_target!(|data: &[u8]| {
    check::<ClientMessage>(data);
    check::<ServerMessage>(data);
});
