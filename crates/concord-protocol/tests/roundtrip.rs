//! Every message survives encode → decode unchanged, re-encodes to the same bytes, and
//! arbitrary or corrupted frames never make the decoder panic.

mod support;

use std::collections::BTreeSet;

use concord_protocol::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use support::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let frame = encode(&message).unwrap();
        prop_assert_eq!(frame[0], PROTOCOL_VERSION);
        prop_assert_eq!(frame[1], FrameKind::ClientToServer.byte());
        let decoded: ClientMessage = decode(&frame).unwrap();
        prop_assert_eq!(&decoded, &message);
        prop_assert_eq!(encode(&decoded).unwrap(), frame);
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let frame = encode(&message).unwrap();
        prop_assert_eq!(frame[0], PROTOCOL_VERSION);
        prop_assert_eq!(frame[1], FrameKind::ServerToClient.byte());
        let decoded: ServerMessage = decode(&frame).unwrap();
        prop_assert_eq!(&decoded, &message);
        prop_assert_eq!(encode(&decoded).unwrap(), frame);
    }

    /// The frame kind keeps the directions apart: a client frame never decodes as a server
    /// message.
    #[test]
    fn frames_do_not_cross_directions(message in client_message()) {
        let frame = encode(&message).unwrap();
        prop_assert_eq!(
            decode::<ServerMessage>(&frame).unwrap_err(),
            DecodeError::WrongKind { found: 1, expected: 2 }
        );
    }

    /// Values and operations alone, through the bare codec the store can use.
    #[test]
    fn operations_round_trip_bare(op in operation()) {
        let bytes = codec::encode_value(&Limits::DEFAULT, &op).unwrap();
        let back: concord_ot::Operation = codec::decode_value(&Limits::DEFAULT, &bytes).unwrap();
        prop_assert_eq!(back, op);
    }

    /// Random bodies behind a valid header: never a panic; whatever decodes re-encodes to a
    /// frame that decodes to the same message.
    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        for kind in [FrameKind::ClientToServer, FrameKind::ServerToClient] {
            let mut frame = vec![PROTOCOL_VERSION, kind.byte()];
            frame.extend_from_slice(&body);
            check_stable(&frame);
        }
    }

    /// Valid frames with one byte changed: never a panic, and stable when they decode.
    #[test]
    fn corrupted_frames_never_panic(
        message in server_message(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut frame = encode(&message).unwrap();
        let at = position.index(frame.len());
        frame[at] = byte;
        check_stable(&frame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any message in fragments of any size comes back whole from a reassembler, and every
    /// fragment frame stays within the fragment size.
    #[test]
    fn fragmented_messages_reassemble(message in server_message(), size in 4usize..200) {
        let frames = encode_frames(&Limits::DEFAULT, size, &message).unwrap();
        prop_assert!(frames.iter().all(|f| f.len() <= size));
        let mut reassembler = Reassembler::<ServerMessage>::new(Limits::DEFAULT);
        let mut decoded = Vec::new();
        for frame in &frames {
            decoded.extend(reassembler.push(frame).unwrap());
        }
        prop_assert_eq!(decoded, vec![message]);
        prop_assert!(!reassembler.is_partial());
    }

    /// Fragments with one byte changed: never a panic, and at most one message out.
    #[test]
    fn corrupted_fragments_never_panic(
        message in server_message(),
        size in 4usize..64,
        which in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut frames = encode_frames(&Limits::DEFAULT, size, &message).unwrap();
        let frame = which.get_mut(&mut frames);
        let at = position.index(frame.len());
        frame[at] = byte;
        let mut reassembler = Reassembler::<ServerMessage>::new(Limits::DEFAULT);
        let delivered = frames.iter().filter_map(|f| reassembler.push(f).ok().flatten()).count();
        prop_assert!(delivered <= 1);
    }
}

/// Decodes `frame` as both kinds; on success, encoding and decoding again must give the
/// same bytes (compared as bytes: a decoded NaN is not equal to itself).
fn check_stable(frame: &[u8]) {
    if let Ok(message) = decode::<ClientMessage>(frame) {
        let again = encode(&message).unwrap();
        let back: ClientMessage = decode(&again).unwrap();
        assert_eq!(encode(&back).unwrap(), again);
    }
    if let Ok(message) = decode::<ServerMessage>(frame) {
        let again = encode(&message).unwrap();
        let back: ServerMessage = decode(&again).unwrap();
        assert_eq!(encode(&back).unwrap(), again);
    }
}

/// The strategies reach every message variant, so the round trips above cover them all.
#[test]
fn strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    let client = client_message();
    let server = server_message();
    for _ in 0..4000 {
        seen.insert(format!(
            "client {}",
            client_variant(&client.new_tree(&mut runner).unwrap().current())
        ));
        seen.insert(format!(
            "server {}",
            server_variant(&server.new_tree(&mut runner).unwrap().current())
        ));
    }
    let expected: BTreeSet<String> = CLIENT_VARIANTS
        .iter()
        .map(|v| format!("client {v}"))
        .chain(SERVER_VARIANTS.iter().map(|v| format!("server {v}")))
        .collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
    let unlisted: Vec<_> = seen.difference(&expected).collect();
    assert!(unlisted.is_empty(), "generated but not listed: {unlisted:?}");
}
