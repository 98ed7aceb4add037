//! The `Sync` request over real sockets: one message creates a model, resyncs it, takes its
//! submission (acknowledged only once durable: it survives a restart) and closes it again;
//! a hostile client cannot use it to hold more models open than the limit, to close a model
//! it uses, to create over another's model or to submit under another user's replica.

mod support;

use concord_ot::ReplicaId;
use concord_protocol::{
    ClientRequest, CreationNonce, ErrorCode, NewModel, ServerPush, ServerResponse, SyncSubmission,
};
use concord_testkit::wire::WireClient;
use support::*;

/// A `Sync` of `id` (created from `{ "body": "" }` with `nonce` if given) with `text`
/// inserted as seq `seq` of `replica`, if given.
fn sync(id: &str, nonce: Option<u8>, submission: Option<(u64, u64, &str)>) -> ClientRequest {
    let data = document(serde_json::json!({ "body": "" }));
    ClientRequest::Sync {
        model: model(id),
        create: nonce.map(|n| {
            Box::new(NewModel {
                collection: collection("notes"),
                data: data.clone(),
                nonce: CreationNonce([n; 16]),
                permissions: None,
            })
        }),
        known_version: 0,
        in_flight: None,
        submission: submission.map(|(replica, seq, text)| {
            Box::new(SyncSubmission {
                replica: ReplicaId(replica),
                first_seq: seq,
                seq,
                base_version: 0,
                operation: insert(&data, 0, text),
            })
        }),
    }
}

/// The answer to submission `seq`: its version, or the refusal's code.
async fn answer(client: &mut WireClient, seq: u64) -> anyhow::Result<Result<u64, ErrorCode>> {
    client
        .push(|push| match push {
            ServerPush::Ack { seq: s, version, .. } if *s == seq => Some(Ok(*version)),
            ServerPush::SubmitRejected { seq: s, error, .. } if *s == seq => Some(Err(error.code)),
            _ => None,
        })
        .await
}

async fn started(client: &mut WireClient, request: ClientRequest) -> anyhow::Result<()> {
    match client.request(request).await? {
        Ok(ServerResponse::ResyncStarted { .. }) => Ok(()),
        other => anyhow::bail!("expected the resync to start: {other:?}"),
    }
}

support::on_each_store!(one_sync_request_creates_submits_and_closes_and_the_ack_is_durable);
async fn one_sync_request_creates_submits_and_closes_and_the_ack_is_durable() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.limits.max_open_models = 1).await?;
    let mut alice = connect(&server, "alice").await?;
    started(&mut alice, sync("doc", Some(1), Some((7, 1, "hi")))).await?;
    assert_eq!(answer(&mut alice, 1).await?, Ok(1));
    // Closed by the server once answered: a submission now needs the model open, and the
    // one slot the limit allows is free again.
    alice
        .submit(
            &model("doc"),
            ReplicaId(7),
            2,
            1,
            insert(&document(serde_json::json!({ "body": "" })), 0, "x"),
        )
        .await?;
    assert_eq!(answer(&mut alice, 2).await?, Err(ErrorCode::MODEL_NOT_OPEN));
    create(&mut alice, "other", "").await?;
    open(&mut alice, "other").await?;
    server.stop().await?;

    // The ack came once the creation and the commit were durable.
    let server = start(dir.path(), |_| {}).await?;
    let mut bob = connect(&server, "bob").await?;
    assert_eq!(body(&open(&mut bob, "doc").await?.data), "hi");
    // Sent again (its answer lost): the same creation, the original ack, nothing twice.
    let mut alice = connect(&server, "alice").await?;
    started(&mut alice, sync("doc", Some(1), Some((7, 1, "hi")))).await?;
    assert_eq!(answer(&mut alice, 1).await?, Ok(1));
    let mut reader = connect(&server, "reader").await?;
    assert_eq!(body(&open(&mut reader, "doc").await?.data), "hi");
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_hostile_sync_is_refused_before_anything_happens);
async fn a_hostile_sync_is_refused_before_anything_happens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.limits.max_open_models = 1).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    started(&mut alice, sync("doc", None, Some((1, 1, "a")))).await?;
    assert_eq!(answer(&mut alice, 1).await?, Ok(1));

    let mut mallory = connect(&server, "mallory").await?;
    // Over another creation's model: taken, nothing submitted.
    let refused = mallory.request(sync("doc", Some(9), Some((9, 1, "m")))).await?;
    assert_eq!(refused.unwrap_err().code, ErrorCode::MODEL_ALREADY_EXISTS);
    // Over the open-model limit: refused, and the model is not created.
    open(&mut mallory, "doc").await?;
    let refused = mallory.request(sync("new", Some(9), Some((9, 1, "m")))).await?;
    assert_eq!(refused.unwrap_err().code, ErrorCode::OVERLOADED);
    assert_eq!(try_open(&mut alice, "new").await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    // On a model it has open: refused, and the model stays open.
    let refused = mallory.request(sync("doc", None, None)).await?;
    assert_eq!(refused.unwrap_err().code, ErrorCode::MODEL_ALREADY_OPEN);
    mallory.request(ClientRequest::CloseModel { model: model("doc") }).await?.unwrap();
    // Under alice's replica: refused, nothing applied, and closed afterwards.
    started(&mut mallory, sync("doc", None, Some((1, 2, "m")))).await?;
    assert_eq!(answer(&mut mallory, 2).await?, Err(ErrorCode::PERMISSION_DENIED));
    open(&mut mallory, "doc").await?;
    let mut reader = connect(&server, "reader").await?;
    assert_eq!(body(&open(&mut reader, "doc").await?.data), "a");
    server.stop().await?;
    Ok(())
}
