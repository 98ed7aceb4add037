//! `GET /metrics` over HTTP on a running server, after real work over real WebSockets:
//! sessions, loaded models, acks, commits, resync pages and refusals move as the work did.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use concord_ot::{DiscreteOperation, Document, Operation, OperationKind, PathSegment, ReplicaId};
use concord_protocol::{
    ActivityId, ActivityRequest, ClientRequest, ErrorCode, PresenceRequest, ServerPush,
    ServerResponse,
};
use concord_server::RunningServer;
use concord_testkit::wire::{Editor, WireClient};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every sample of `GET /metrics`: the series (name and labels) and its value.
async fn scrape(server: &RunningServer) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await?;
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "not answered with 200: {head}");
    ensure!(
        head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"),
        "not the text format: {head}"
    );
    ensure!(body.trim_end().ends_with("# EOF"), "the exposition is not complete: {body}");
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').context("a sample line")?;
        samples.insert(series.to_owned(), value.parse().with_context(|| line.to_owned())?);
    }
    Ok(samples)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> anyhow::Result<f64> {
    samples.get(series).copied().with_context(|| format!("no {series} in {samples:#?}"))
}

/// Scrapes until `series` reads `expected` (the end of a session is counted once its
/// connection task is done, after the client saw it close).
async fn await_value(server: &RunningServer, series: &str, expected: f64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = value(&scrape(server).await?, series)?;
        if now == expected {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "{series} stayed at {now}, not {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn splice(document: &Document, index: usize, text: &str) -> Operation {
    let id = document.element_at(&[PathSegment::Key("body".into())]).unwrap();
    let kind = OperationKind::StringSplice { index, delete_count: 0, insert: text.into() };
    DiscreteOperation::new(id, kind).into()
}

support::on_each_store!(metrics_follow_real_work_over_websockets);
async fn metrics_follow_real_work_over_websockets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let before = scrape(&server).await?;
    assert_eq!(value(&before, "concord_sessions")?, 0.0);
    assert_eq!(value(&before, "concord_loaded_models")?, 0.0);
    assert_eq!(value(&before, "concord_acked_submissions_total")?, 0.0);
    assert_eq!(value(&before, "concord_refused_total{reason=\"seq_out_of_order\"}")?, 0.0);

    // Alice makes seven changes, each acknowledged before the next.
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(7), &snapshot);
    let mut document = snapshot.data.clone();
    for i in 0..7 {
        let op = splice(&document, i, "x");
        document.apply(&op)?;
        commit(&mut alice, &mut editor, op).await?;
    }
    // A submission that skips seqs is refused; so is opening a model that does not exist.
    alice.submit(&model("doc"), ReplicaId(7), 20, 7, splice(&document, 0, "y")).await?;
    let refused = alice
        .push(|push| match push {
            ServerPush::SubmitRejected { error, .. } => Some(error.code),
            _ => None,
        })
        .await?;
    assert_eq!(refused, ErrorCode::SEQ_OUT_OF_ORDER);
    let missing = try_open(&mut alice, "nothing-here").await?;
    assert_eq!(missing.map_err(|e| e.code).err(), Some(ErrorCode::MODEL_NOT_FOUND));
    // Presence and activities count their refusals too: a presence state past its bound,
    // and state set in an activity the session is not in.
    let big = [("k".to_owned(), format!("\"{}\"", "x".repeat(20_000)))].into();
    let too_big = ClientRequest::Presence(PresenceRequest::SetState { state: big });
    let refused = alice.request(too_big).await?.map_err(|e| e.code).err();
    assert_eq!(refused, Some(ErrorCode::OVERLOADED));
    let activity = ActivityId { kind: "meeting".into(), id: "standup".into() };
    let state = [("hand".to_owned(), "true".to_owned())].into();
    let not_in = ClientRequest::Activity(ActivityRequest::SetState { activity, state });
    let refused = alice.request(not_in).await?.map_err(|e| e.code).err();
    assert_eq!(refused, Some(ErrorCode::INVALID_ARGUMENT));

    // Bob catches up from version 0: the seven operations come as a resync page.
    let mut bob: WireClient = connect(&server, "bob").await?;
    let request = ClientRequest::Resync { model: model("doc"), known_version: 0, in_flight: None };
    match bob.request(request).await? {
        Ok(ServerResponse::ResyncStarted { current_version: 7, .. }) => {}
        other => anyhow::bail!("resync: {other:?}"),
    }
    let replayed = bob
        .push(|push| match push {
            ServerPush::ResyncPage { operations, last: true, .. } => Some(operations.len()),
            _ => None,
        })
        .await?;
    assert_eq!(replayed, 7);

    let during = scrape(&server).await?;
    assert_eq!(value(&during, "concord_sessions")?, 2.0);
    assert_eq!(value(&during, "concord_loaded_models")?, 1.0);
    assert_eq!(value(&during, "concord_acked_submissions_total")?, 7.0, "one ack per change");
    assert_eq!(value(&during, "concord_resync_pages_total")?, 1.0);
    assert_eq!(value(&during, "concord_refused_total{reason=\"seq_out_of_order\"}")?, 1.0);
    assert_eq!(value(&during, "concord_refused_total{reason=\"model_not_found\"}")?, 1.0);
    assert_eq!(value(&during, "concord_refused_total{reason=\"overloaded\"}")?, 1.0);
    assert_eq!(value(&during, "concord_refused_total{reason=\"invalid_argument\"}")?, 1.0);
    assert_eq!(value(&during, "concord_refused_total{reason=\"permission_denied\"}")?, 0.0);
    // The creation and each acknowledged change were committed before being answered.
    let commits = value(&during, "concord_commit_seconds_count")?;
    assert!(commits >= 8.0, "{commits} commits for a creation and seven changes");
    assert_eq!(value(&during, "concord_commit_group_jobs_count")?, commits);
    let jobs = value(&during, "concord_commit_group_jobs_sum")?;
    assert!(jobs >= commits, "every commit holds at least one job ({jobs} in {commits})");
    assert!(value(&during, "concord_commit_seconds_sum")? > 0.0);
    assert_eq!(value(&during, "concord_commit_seconds_bucket{le=\"+Inf\"}")?, commits);

    alice.close().await?;
    bob.close().await?;
    await_value(&server, "concord_sessions", 0.0).await?;
    server.stop().await?;
    Ok(())
}

/// Backups are counted by result, and the last one written is timed, so that an operator can
/// alert on backups that stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_counted_and_the_last_one_timed() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = start(temp.path(), |_| {}).await?;
    let (written, failed) =
        (r#"concord_backups_total{result="written"}"#, r#"concord_backups_total{result="failed"}"#);
    let samples = scrape(&server).await?;
    let last = "concord_last_backup_time_seconds";
    assert_eq!((value(&samples, written)?, value(&samples, failed)?), (0.0, 0.0));
    assert_eq!(value(&samples, last)?, 0.0);

    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    server.backups().write().await?;
    // A file where the backups' directory should be: the next backup fails.
    std::fs::remove_dir_all(server.backups().dir())?;
    std::fs::write(server.backups().dir(), "in the way")?;
    assert!(server.backups().write().await.is_err());
    let samples = scrape(&server).await?;
    assert_eq!((value(&samples, written)?, value(&samples, failed)?), (1.0, 1.0));
    let at = value(&samples, last)?;
    assert!(at >= before as f64 && at <= before as f64 + 60.0, "{at} against {before}");
    server.stop().await?;
    Ok(())
}
