//! The client over a failing store (`concord_storage::faults` around a real redb store) and
//! a real server on loopback: a failed commit is reported to the application — as
//! `DomainEvent::StorageFailed`, and as an error from `stored()` and from later calls — and
//! after the client restarts from its store, every change whose `stored()` resolved reaches
//! the server exactly once (another client sees it).

mod support;

use std::time::Duration;

use concord_client::{
    Change, ClientError, ConnectionState, Domain, DomainEvent, Events, RealTimeArray, RealTimeModel,
};
use concord_server::RunningServer;
use concord_storage::RedbAdapter;
use concord_storage::faults::{Fault, Faults, FaultyAdapter};
use serde_json::json;
use support::*;

/// A domain on `dir`'s redb store through a fault injector.
fn faulty_domain(url: &str, dir: &std::path::Path) -> (Domain, Faults) {
    let adapter = FaultyAdapter::new(RedbAdapter::new(dir));
    let faults = adapter.faults().clone();
    let domain = Domain::builder(url)
        .storage(adapter)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .heartbeat(Duration::from_secs(2))
        .build();
    (domain, faults)
}

/// The model `log` (`{"items": []}`) created and open at `domain`, with its array.
async fn open_log(domain: &Domain) -> anyhow::Result<(RealTimeModel, RealTimeArray)> {
    create_confirmed(domain, &[id("log")], json!({ "items": [] })).await?;
    let model = domain.models().open(&id("log")).await?;
    let items = model.root().get("items").await?.unwrap().as_array()?;
    Ok((model, items))
}

/// Waits for `StorageFailed` and returns its message.
async fn storage_failed(events: &mut Events<DomainEvent>) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(DomainEvent::StorageFailed(message)) => return Ok(message),
            Some(_) => {}
            None => anyhow::bail!("the domain's events ended without StorageFailed"),
        }
    }
}

/// What another client sees of `log` once it holds `expected` items.
async fn seen_by_another_client(
    server: &RunningServer,
    dir: &std::path::Path,
    expected: usize,
) -> anyhow::Result<serde_json::Value> {
    let reader = domain(&url(server), dir);
    reader.connect_with_jwt(token("reader")).await?;
    let model = reader.models().open(&id("log")).await?;
    eventually("the reader has every item", || async {
        Ok(model.value().await?["items"].as_array().map_or(0, Vec::len) >= expected)
    })
    .await?;
    // Give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let value = model.value().await?;
    reader.close().await?;
    Ok(value)
}

fn items(prefix: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n).map(|i| json!(format!("{prefix} {i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_reported_and_what_was_stored_reaches_the_server() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let store = dir.path().join("writer");
    let (writer, faults) = faulty_domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    let (model, list) = open_log(&writer).await?;
    for item in items("stored", 5) {
        let change = list.push(item).await?;
        model.stored(change).await?;
    }
    // Acknowledged: the store is idle, so the next commit is the next change's.
    model.acknowledged(Change { seq: model.watermarks().last }).await?;

    // The commit recording the next change fails: nothing of it is written.
    let mut events = writer.events();
    faults.fail_next(Fault::Clean);
    let lost = list.push(json!("lost")).await?;
    let error = tokio::time::timeout(Duration::from_secs(20), model.stored(lost)).await?;
    assert!(matches!(error, Err(ClientError::Closed)), "{error:?}");
    let message = storage_failed(&mut events).await?;
    assert!(message.contains("injected clean failure"), "{message}");
    // The domain stopped: offline, and refusing what it can no longer store.
    let disconnected = writer.wait_for(ConnectionState::Disconnected);
    tokio::time::timeout(Duration::from_secs(20), disconnected).await??;
    let error = list.push(json!("refused")).await.unwrap_err();
    assert!(matches!(error, ClientError::Storage(_)), "{error:?}");
    writer.close().await?;

    // Restarted from its store, the client sends every stored change, and only those.
    let writer = domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    let expected = json!({ "items": items("stored", 5) });
    let model = writer.models().open(&id("log")).await?;
    assert_eq!(model.value().await?, expected);
    assert_eq!(seen_by_another_client(&server, &dir.path().join("reader"), 5).await?, expected);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_commit_is_reported_failed_and_sent_once_after_a_restart() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let store = dir.path().join("writer");
    let (writer, faults) = faulty_domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    let (model, list) = open_log(&writer).await?;
    for item in items("stored", 3) {
        let change = list.push(item).await?;
        model.stored(change).await?;
    }
    // Acknowledged: the store is idle, so the next commit is the next change's.
    model.acknowledged(Change { seq: model.watermarks().last }).await?;

    // The next commit is written, but the client hears of a failure.
    let mut events = writer.events();
    faults.fail_next(Fault::InDoubt);
    let in_doubt = list.push(json!("in doubt")).await?;
    let error = tokio::time::timeout(Duration::from_secs(20), model.stored(in_doubt)).await?;
    assert!(matches!(error, Err(ClientError::Closed)), "{error:?}");
    let message = storage_failed(&mut events).await?;
    assert!(message.contains("injected in-doubt failure"), "{message}");
    writer.close().await?;

    // It was stored after all: the restarted client sends it, once.
    let writer = domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    let mut expected = items("stored", 3);
    expected.push(json!("in doubt"));
    let expected = json!({ "items": expected });
    assert_eq!(seen_by_another_client(&server, &dir.path().join("reader"), 4).await?, expected);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stored_before_a_crash_reach_the_server_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let store = dir.path().join("writer");
    let (writer, faults) = faulty_domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    let (model, list) = open_log(&writer).await?;
    // Stored, and on their way to the server (some acknowledged, some not) when the store
    // goes away.
    for item in items("stored", 20) {
        let change = list.push(item).await?;
        model.stored(change).await?;
    }
    let mut events = writer.events();
    faults.crash();
    // The next commit fails, if the engine's own (an acknowledgement's) did not already.
    match list.push(json!("after the crash")).await {
        Ok(after) => assert!(model.stored(after).await.is_err()),
        Err(error) => assert!(matches!(error, ClientError::Storage(_)), "{error:?}"),
    }
    let message = storage_failed(&mut events).await?;
    assert!(message.contains("closed"), "{message}");
    writer.close().await?;

    let writer = domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    let expected = json!({ "items": items("stored", 20) });
    assert_eq!(seen_by_another_client(&server, &dir.path().join("reader"), 20).await?, expected);
    let model = writer.models().open(&id("log")).await?;
    eventually("the writer is in sync", || async { Ok(model.value().await? == expected) }).await?;
    server.stop().await?;
    Ok(())
}
