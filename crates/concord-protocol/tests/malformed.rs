//! Hostile and broken frames: each gives its typed error, never a panic, a stack overflow or
//! a large allocation.

mod support;

use std::time::{Duration, Instant};

use concord_ot::{
    DiscreteOperation, Document, ElementId, Operation, OperationKind, ReplicaId, Value, ValueData,
};
use concord_protocol::*;
use support::*;

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn submit(operation: Operation) -> ClientMessage {
    ClientMessage::Notice(ClientNotice::Submit {
        model: model(),
        replica: ReplicaId(1),
        first_seq: 1,
        seq: 1,
        base_version: 0,
        operation,
    })
}

fn array_insert(value: Value) -> Operation {
    Operation::Discrete(DiscreteOperation::new(
        ElementId::new(0, 0),
        OperationKind::ArrayInsert { index: 0, value },
    ))
}

/// A submit frame whose inserted value is `levels` arrays deep (each holding one element)
/// around a null, written byte by byte so that no such value is ever built in memory.
fn deep_submit_frame(levels: usize) -> Vec<u8> {
    let null = Value::new(ElementId::new(0, 0), ValueData::Null);
    let mut frame = encode(&submit(array_insert(null))).unwrap();
    // The frame ends with the null value: id (0, 0), then the `Null` tag.
    assert_eq!(frame.split_off(frame.len() - 3), [0, 0, 5]);
    frame.extend_from_slice(&[0, 0]);
    for _ in 0..levels {
        // `Array` tag, one element, that element's id (0, 0).
        frame.extend_from_slice(&[1, 1, 0, 0]);
    }
    frame.push(5);
    frame
}

fn nested_value(levels: usize) -> Value {
    let mut value = Value::new(ElementId::new(0, 0), ValueData::Null);
    for _ in 0..levels {
        value = Value::new(ElementId::new(0, 0), ValueData::Array(vec![value]));
    }
    value
}

/// How many levels of arrays a submitted value may have under the default limits.
fn deepest_accepted() -> usize {
    (0..200)
        .take_while(|&levels| decode::<ClientMessage>(&deep_submit_frame(levels)).is_ok())
        .last()
        .unwrap()
}

#[test]
fn empty_frame() {
    assert_eq!(decode::<ClientMessage>(&[]), Err(DecodeError::Empty));
    assert_eq!(decode::<ServerMessage>(&[]), Err(DecodeError::Empty));
}

#[test]
fn every_truncation_of_every_golden_frame_is_an_error() {
    for golden in goldens() {
        let bytes = golden.frame.encode();
        for len in 0..bytes.len() {
            let expected = if len == 0 { DecodeError::Empty } else { DecodeError::Truncated };
            assert_eq!(
                golden.frame.decode_as_own_kind(&bytes[..len]),
                Err(expected),
                "{} cut to {len} bytes",
                golden.name
            );
        }
    }
}

#[test]
fn a_frame_for_the_other_direction_is_refused() {
    for golden in goldens() {
        let bytes = golden.frame.encode();
        let err = golden.frame.decode_as_other_kind(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::WrongKind { .. }), "{}: {err}", golden.name);
    }
}

#[test]
fn unknown_version_bytes_are_refused_before_parsing() {
    for golden in goldens() {
        let mut bytes = golden.frame.encode();
        for version in [0, 1, 2, 3, 4, 5, 6, 7, 9, 255] {
            bytes[0] = version;
            assert_eq!(
                golden.frame.decode_as_own_kind(&bytes),
                Err(DecodeError::UnsupportedVersion {
                    found: version,
                    supported: PROTOCOL_VERSION
                })
            );
        }
    }
    // The version is checked even when nothing follows it.
    let err = decode::<ClientMessage>(&[1]).unwrap_err();
    assert_eq!(err.to_string(), "unsupported protocol version 1 (this peer speaks version 8)");
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn trailing_bytes_are_refused() {
    for golden in goldens() {
        let mut bytes = golden.frame.encode();
        bytes.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            golden.frame.decode_as_own_kind(&bytes),
            Err(DecodeError::TrailingBytes { count: 3 }),
            "{}",
            golden.name
        );
    }
}

#[test]
fn oversize_frames_are_refused_before_parsing() {
    let limits = Limits { max_frame_bytes: 64, ..Limits::DEFAULT };
    let message = submit(support::sample_operation());
    let frame = encode(&message).unwrap();
    assert!(frame.len() > 64);
    assert_eq!(
        decode_with::<ClientMessage>(&limits, &frame),
        Err(DecodeError::TooLarge { size: frame.len(), max: 64 })
    );
    assert_eq!(encode_with(&limits, &message), Err(EncodeError::TooLarge { max: 64 }));
    // A frame of exactly the limit is fine.
    let exact = Limits { max_frame_bytes: frame.len(), ..limits };
    assert_eq!(encode_with(&exact, &message).unwrap(), frame);
    assert_eq!(decode_with::<ClientMessage>(&exact, &frame).unwrap(), message);

    // The default limit, with a frame one byte over it: refused without looking inside.
    let mut huge = vec![0u8; Limits::DEFAULT.max_frame_bytes + 1];
    huge[0] = PROTOCOL_VERSION;
    huge[1] = FrameKind::ClientToServer.byte();
    let err = decode::<ClientMessage>(&huge).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }));
    assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
}

#[test]
fn a_hundred_thousand_levels_of_nesting_is_a_typed_error() {
    let frame = deep_submit_frame(100_000);
    assert_eq!(
        decode::<ClientMessage>(&frame),
        Err(DecodeError::TooDeep { max: Limits::DEFAULT.max_depth })
    );
    // The same nesting through the bare codec, as a lone value and as a document.
    let mut bare = Vec::new();
    for _ in 0..100_000 {
        bare.extend_from_slice(&[0, 0, 1, 1]);
    }
    bare.extend_from_slice(&[0, 0, 5]);
    assert!(matches!(
        codec::decode_value::<Value>(&Limits::DEFAULT, &bare),
        Err(DecodeError::TooDeep { .. })
    ));
    assert!(matches!(
        codec::decode_value::<Document>(&Limits::DEFAULT, &bare),
        Err(DecodeError::TooDeep { .. })
    ));
}

#[test]
fn the_deepest_accepted_value_encodes_and_decodes_and_one_more_level_does_neither() {
    // The shallow version of the hostile frame is an ordinary message.
    let decoded: ClientMessage = decode(&deep_submit_frame(10)).unwrap();
    assert_eq!(decoded, submit(array_insert(nested_value(10))));

    let deepest = deepest_accepted();
    // docs/protocol.md promises model values 40 levels deep under the default limit.
    assert_eq!(deepest, 40);
    let ok = submit(array_insert(nested_value(deepest)));
    assert_eq!(encode(&ok).unwrap(), deep_submit_frame(deepest));
    let too_deep = submit(array_insert(nested_value(deepest + 1)));
    assert_eq!(encode(&too_deep), Err(EncodeError::TooDeep { max: Limits::DEFAULT.max_depth }));
    assert_eq!(
        decode::<ClientMessage>(&deep_submit_frame(deepest + 1)),
        Err(DecodeError::TooDeep { max: Limits::DEFAULT.max_depth })
    );
}

/// Decoding at the depth limit needs little stack (about 40 KiB in a debug build, less in
/// release), so it is safe on small thread stacks, and the hostile frame fails there too.
#[test]
fn decoding_at_the_depth_limit_fits_a_small_stack() {
    let deepest = deepest_accepted();
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            (
                decode::<ClientMessage>(&deep_submit_frame(deepest)).is_ok(),
                decode::<ClientMessage>(&deep_submit_frame(100_000)),
            )
        })
        .unwrap();
    let (deepest_ok, hostile) = handle.join().unwrap();
    assert!(deepest_ok);
    assert!(matches!(hostile, Err(DecodeError::TooDeep { .. })));
}

/// Length prefixes that claim far more than the frame holds fail fast, without reserving
/// memory for the claim.
#[test]
fn huge_length_prefixes_do_not_allocate() {
    let claim = varint(1 << 60);
    let started = Instant::now();

    // A compound operation claiming 2^60 discrete operations.
    let mut frame = encode(&submit(Operation::Compound(Vec::new()))).unwrap();
    assert_eq!(frame.pop(), Some(0));
    frame.extend_from_slice(&claim);
    frame.extend_from_slice(&[0; 16]);
    assert_eq!(decode::<ClientMessage>(&frame), Err(DecodeError::Truncated));

    // An object set claiming 2^60 properties.
    let set = Operation::Discrete(DiscreteOperation::new(
        ElementId::new(0, 0),
        OperationKind::ObjectSet { values: Default::default() },
    ));
    let mut frame = encode(&submit(set)).unwrap();
    assert_eq!(frame.pop(), Some(0));
    frame.extend_from_slice(&claim);
    frame.extend_from_slice(&[1, b'k', 0, 0, 5]);
    assert_eq!(decode::<ClientMessage>(&frame), Err(DecodeError::Truncated));

    // A model id claiming 2^60 bytes.
    let mut frame = vec![PROTOCOL_VERSION, 1, 3, 0];
    frame.extend_from_slice(&claim);
    frame.extend_from_slice(b"abc");
    assert_eq!(decode::<ClientMessage>(&frame), Err(DecodeError::Truncated));

    // The largest claim a varint can make, for a bare sequence of values.
    let mut bare = varint(u64::MAX);
    bare.extend_from_slice(&[0, 0, 5]);
    assert_eq!(
        codec::decode_value::<Vec<Value>>(&Limits::DEFAULT, &bare),
        Err(DecodeError::Truncated)
    );

    // Reserving for any of these claims would abort the process (capacity overflow) or take
    // long; failing fast on a few bytes shows that nothing was reserved.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn unknown_variants_are_named() {
    // ClientMessage has four variants; index 9 is from a newer peer.
    assert_eq!(
        decode::<ClientMessage>(&[PROTOCOL_VERSION, 1, 9]),
        Err(DecodeError::UnknownVariant { index: 9 })
    );
    // A request (0) with id 1 and an unknown request kind 200 (a two-byte varint).
    assert_eq!(
        decode::<ClientMessage>(&[PROTOCOL_VERSION, 1, 0, 1, 0xc8, 0x01]),
        Err(DecodeError::UnknownVariant { index: 200 })
    );
}

#[test]
fn unknown_error_codes_decode() {
    let message = ServerMessage::Error {
        to: None,
        error: ErrorReply::new(ErrorCode(9999), "from the future"),
    };
    let decoded: ServerMessage = decode(&encode(&message).unwrap()).unwrap();
    let ServerMessage::Error { error, .. } = decoded else {
        panic!("not an error: {decoded:?}");
    };
    assert!(!error.code.is_known());
    assert_eq!(error.to_string(), "unknown error code 9999: from the future");
}

#[test]
fn invalid_values_are_refused() {
    // OpenModel (1) with an empty model id.
    assert_eq!(
        decode::<ClientMessage>(&[PROTOCOL_VERSION, 1, 0, 1, 1, 0, 0]),
        Err(DecodeError::InvalidValue)
    );
    // A model id with a control character.
    assert_eq!(
        decode::<ClientMessage>(&[PROTOCOL_VERSION, 1, 0, 1, 1, 1, b'\n', 0]),
        Err(DecodeError::InvalidValue)
    );
    // A model id that is not UTF-8.
    assert_eq!(
        decode::<ClientMessage>(&[PROTOCOL_VERSION, 1, 0, 1, 1, 1, 0xff, 0]),
        Err(DecodeError::Malformed("invalid UTF-8"))
    );
    // A bool that is neither 0 nor 1 (`auto_create`).
    assert_eq!(
        decode::<ClientMessage>(&[PROTOCOL_VERSION, 1, 0, 1, 1, 1, b'm', 2]),
        Err(DecodeError::Malformed("invalid bool"))
    );
    // A document whose root is not an object.
    let null_root =
        codec::encode_value(&Limits::DEFAULT, &Value::new(ElementId::new(0, 0), ValueData::Null))
            .unwrap();
    assert_eq!(
        codec::decode_value::<Document>(&Limits::DEFAULT, &null_root),
        Err(DecodeError::InvalidValue)
    );
    // A document with a duplicate element id.
    let dup = Value::new(
        ElementId::new(0, 0),
        ValueData::Object(
            [("a".to_string(), Value::new(ElementId::new(0, 0), ValueData::Null))].into(),
        ),
    );
    let bytes = codec::encode_value(&Limits::DEFAULT, &dup).unwrap();
    assert_eq!(
        codec::decode_value::<Document>(&Limits::DEFAULT, &bytes),
        Err(DecodeError::InvalidValue)
    );
}
