//! What the server decides about submissions and large models, over real sockets: a
//! replica's seqs have no gaps and a refusal is remembered across a restart; a model never
//! grows past the size limit, yet one near it opens and resyncs (in fragments); and every
//! request gets exactly one reply, even one that cannot be encoded.

mod support;

use concord_ot::{
    DiscreteOperation, ElementId, IdGenerator, Operation, OperationKind, PathSegment, ReplicaId,
    Value, ValueData,
};
use concord_protocol::{ClientRequest, ErrorCode, ModelSnapshot, ServerPush, ServerResponse};
use concord_testkit::wire::WireClient;
use support::*;

/// The ack (its version) or the refusal (its code) of submission `seq`.
async fn answer(client: &mut WireClient, seq: u64) -> anyhow::Result<Result<u64, ErrorCode>> {
    client
        .push(|push| match push {
            ServerPush::Ack { seq: s, version, .. } if *s == seq => Some(Ok(*version)),
            ServerPush::SubmitRejected { seq: s, error, .. } if *s == seq => Some(Err(error.code)),
            _ => None,
        })
        .await
}

/// Submits `operation` as replica 7's seq `seq` (a batch of that one seq) and waits for the
/// answer.
async fn submit(
    client: &mut WireClient,
    seq: u64,
    base_version: u64,
    operation: Operation,
) -> anyhow::Result<Result<u64, ErrorCode>> {
    client.submit(&model("doc"), ReplicaId(7), seq, base_version, operation).await?;
    answer(client, seq).await
}

fn splice(document: &concord_ot::Document, index: usize, delete: usize, text: &str) -> Operation {
    let id = document.element_at(&[PathSegment::Key("body".into())]).unwrap();
    let kind = OperationKind::StringSplice { index, delete_count: delete, insert: text.into() };
    DiscreteOperation::new(id, kind).into()
}

support::on_each_store!(
    a_refused_submission_is_remembered_across_a_restart_and_the_next_one_follows_it
);
async fn a_refused_submission_is_remembered_across_a_restart_and_the_next_one_follows_it()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "abc").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let document = snapshot.data;
    assert_eq!(submit(&mut alice, 1, 0, splice(&document, 0, 0, "x")).await?, Ok(1));
    // A gap is refused and decides nothing.
    assert_eq!(
        submit(&mut alice, 3, 1, splice(&document, 0, 0, "y")).await?,
        Err(ErrorCode::SEQ_OUT_OF_ORDER)
    );
    // Seq 2 does not apply: refused for good.
    let invalid = splice(&document, 99, 0, "z");
    assert_eq!(submit(&mut alice, 2, 1, invalid.clone()).await?, Err(ErrorCode::INVALID_OPERATION));
    server.stop().await?;

    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    open(&mut alice, "doc").await?;
    // Resent (its answer was lost, say): refused as before, from the store.
    assert_eq!(submit(&mut alice, 2, 1, invalid).await?, Err(ErrorCode::INVALID_OPERATION));
    // The next submission follows the refused one: not a gap.
    assert_eq!(submit(&mut alice, 3, 1, splice(&document, 3, 0, "!")).await?, Ok(2));
    let mut reader = connect(&server, "reader").await?;
    assert_eq!(body(&open(&mut reader, "doc").await?.data), "xab!c");
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_seq_far_ahead_is_refused_and_does_not_wedge_the_replica);
/// A submission that jumps its replica's seqs ahead — to `u64::MAX`, or a batch that skips
/// one — is refused and records nothing: the replica's next submission still commits, after
/// a restart too (before, a seq far ahead was committed and every later one was stale).
async fn a_seq_far_ahead_is_refused_and_does_not_wedge_the_replica() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "abc").await?;
    let document = open(&mut alice, "doc").await?.data;
    assert_eq!(submit(&mut alice, 1, 0, splice(&document, 0, 0, "x")).await?, Ok(1));
    for seq in [u64::MAX, 1 << 40] {
        let far = splice(&document, 0, 0, "y");
        assert_eq!(submit(&mut alice, seq, 1, far).await?, Err(ErrorCode::SEQ_OUT_OF_ORDER));
    }
    let skips = splice(&document, 0, 0, "z");
    alice.submit_batch(&model("doc"), ReplicaId(7), 3, 4, 1, skips).await?;
    assert_eq!(answer(&mut alice, 4).await?, Err(ErrorCode::SEQ_OUT_OF_ORDER));
    server.stop().await?;

    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    open(&mut alice, "doc").await?;
    assert_eq!(submit(&mut alice, 2, 1, splice(&document, 3, 0, "!")).await?, Ok(2));
    let mut reader = connect(&server, "reader").await?;
    assert_eq!(body(&open(&mut reader, "doc").await?.data), "xab!c");
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_model_near_the_limit_opens_and_resyncs_in_fragments_and_grows_no_further);
async fn a_model_near_the_limit_opens_and_resyncs_in_fragments_and_grows_no_further()
-> anyhow::Result<()> {
    const LIMIT: u64 = 3 * 1024 * 1024;
    const CHUNK: usize = 700 * 1024;
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.max_model_bytes = LIMIT).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let document = open(&mut alice, "doc").await?.data;
    let mut expected = String::new();
    for seq in 1..=4 {
        let text = char::from(b'a' + seq as u8).to_string().repeat(CHUNK);
        assert_eq!(
            submit(&mut alice, seq, seq - 1, splice(&document, 0, 0, &text)).await?,
            Ok(seq)
        );
        expected.insert_str(0, &text);
    }
    // A fifth chunk would pass the limit: refused, and the model stays as it was.
    let text = "f".repeat(CHUNK);
    assert_eq!(
        submit(&mut alice, 5, 4, splice(&document, 0, 0, &text)).await?,
        Err(ErrorCode::MODEL_TOO_LARGE)
    );

    // Another client opens it: the snapshot is larger than a frame may be, so it comes in
    // fragments, whole.
    let mut bob = connect(&server, "bob").await?;
    let before = bob.received_frames();
    let snapshot: ModelSnapshot = open(&mut bob, "doc").await?;
    let frames = bob.received_frames() - before;
    assert!(frames >= 3, "a {} byte snapshot came in {frames} frames", 4 * CHUNK);
    assert_eq!((snapshot.version, body(&snapshot.data)), (4, expected.clone()));
    let size = concord_sync::model_bytes(&snapshot.data);
    assert!(size > 4 * CHUNK as u64 && size <= LIMIT);

    // A client that knew version 0 resyncs: the replay's page is fragmented too.
    let mut carol = connect(&server, "carol").await?;
    let resync = ClientRequest::Resync { model: model("doc"), known_version: 0, in_flight: None };
    let started = carol.request(resync).await?;
    assert!(matches!(started, Ok(ServerResponse::ResyncStarted { current_version: 4, .. })));
    let mut replayed = document.clone();
    let before = carol.received_frames();
    loop {
        let (operations, last) = carol
            .push(|p| match p {
                ServerPush::ResyncPage { operations, last, .. } => {
                    Some((operations.clone(), *last))
                }
                _ => None,
            })
            .await?;
        for operation in operations {
            replayed.apply(&operation.operation)?;
        }
        if last {
            break;
        }
    }
    assert!(carol.received_frames() - before >= 3);
    assert_eq!(body(&replayed), expected);

    // Fill up to the limit exactly, then one more character is too many; a deletion at the
    // limit passes, and a small insertion after it.
    let fill = usize::try_from(LIMIT - size)?;
    assert_eq!(submit(&mut alice, 6, 4, splice(&document, 0, 0, &"g".repeat(fill))).await?, Ok(5));
    assert_eq!(
        submit(&mut alice, 7, 5, splice(&document, 0, 0, "h")).await?,
        Err(ErrorCode::MODEL_TOO_LARGE)
    );
    assert_eq!(submit(&mut alice, 8, 5, splice(&document, 0, 10, "")).await?, Ok(6));
    assert_eq!(submit(&mut alice, 9, 6, splice(&document, 0, 0, "i")).await?, Ok(7));
    let mut dave = connect(&server, "dave").await?;
    let snapshot = open(&mut dave, "doc").await?;
    let mut expected_now = "g".repeat(fill) + &expected;
    expected_now.replace_range(0..10, "i");
    assert_eq!((snapshot.version, body(&snapshot.data)), (7, expected_now));
    assert_eq!(concord_sync::model_bytes(&snapshot.data), LIMIT - 9);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_reply_that_cannot_be_encoded_is_a_typed_error_not_silence);
/// A model nested deeper than a frame may carry (each submission shallow, the model deep):
/// opening it cannot be answered with the snapshot, and is answered with a typed error
/// instead of nothing.
async fn a_reply_that_cannot_be_encoded_is_a_typed_error_not_silence() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let document = open(&mut alice, "doc").await?.data;
    let mut ids = IdGenerator::new(ReplicaId(7), 0);
    let mut parent: ElementId = document.root_id();
    let mut parts = Vec::new();
    for _ in 0..60 {
        let child = Value::new(ids.next(), ValueData::Object(Default::default()));
        let id = child.id;
        let kind = OperationKind::ObjectAddProperty { key: "a".into(), value: child };
        parts.push(DiscreteOperation::new(parent, kind));
        parent = id;
    }
    assert_eq!(submit(&mut alice, 1, 0, Operation::Compound(parts)).await?, Ok(1));
    let mut bob = connect(&server, "bob").await?;
    let error = try_open(&mut bob, "doc").await?.expect_err("the snapshot cannot be sent");
    assert_eq!(error.code, ErrorCode::MODEL_TOO_LARGE, "{error}");
    // The connection goes on.
    assert_eq!(bob.request(ClientRequest::Ping).await?, Ok(ServerResponse::Pong));
    server.stop().await?;
    Ok(())
}
