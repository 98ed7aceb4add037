//! Several `concord serve` nodes on one real PostgreSQL (`docs/cluster.md`): a node that
//! is paused past its lease writes nothing when it wakes and steps the model down, another
//! node takes the model over; the owner killed (SIGKILL) under load, another node takes
//! over within the lease time and every acknowledged operation is there, once; a node
//! shut down gracefully releases its leases.

mod common;
#[path = "../../concord-server/tests/support/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{ServeProcess, connect, create_model, serve, text_document, token};
use concord_ot::{DiscreteOperation, ElementId, OperationKind, PathSegment, ReplicaId};
use concord_protocol::{ClientRequest, ModelId, OpenedModel, ServerPush, ServerResponse};
use concord_testkit::wire::WireClient;

/// Short leases keep the test short; a node takes over after at most this long.
const LEASE_MILLIS: &str = "1000";

fn node(dir: &std::path::Path, store: &str) -> anyhow::Result<ServeProcess> {
    serve(dir, &["--store", store, "--cluster", "--lease-millis", LEASE_MILLIS])
}

/// Opens `model`, or the error the node answered with.
async fn try_open(
    client: &mut WireClient,
    model: &ModelId,
) -> anyhow::Result<Result<OpenedModel, String>> {
    let request = ClientRequest::OpenModel { model: model.clone(), auto_create: false };
    Ok(match client.request(request).await? {
        Ok(ServerResponse::ModelOpened(opened)) => Ok(opened),
        Ok(other) => bail!("opening {model}: {other:?}"),
        Err(error) => Err(error.message),
    })
}

/// Opens `model` on `url`, connecting again until the node serves it (it takes the lease
/// over once the old owner's runs out); returns the client, the model and how long it took.
async fn open_when_served(
    url: &str,
    token: &str,
    model: &ModelId,
) -> anyhow::Result<(WireClient, OpenedModel, Duration)> {
    let started = Instant::now();
    loop {
        let mut client = connect(url, token).await?;
        match try_open(&mut client, model).await? {
            Ok(opened) => return Ok((client, opened, started.elapsed())),
            Err(why) if started.elapsed() < Duration::from_secs(30) => {
                assert!(why.contains("served by node"), "{why}");
                client.close().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(why) => bail!("{url} never served {model}: {why}"),
        }
    }
}

fn text_of(opened: &OpenedModel) -> anyhow::Result<(ElementId, String)> {
    let data = &opened.snapshot.data;
    let text = data.element_at(&[PathSegment::Key("text".into())]).context("no `text`")?;
    Ok((text, data.text(text).context("`text` is not a string")?))
}

/// Submits an operation inserting `marker`; its acknowledged version, or why not.
async fn insert(
    client: &mut WireClient,
    opened: &OpenedModel,
    replica: ReplicaId,
    seq: u64,
    base: u64,
    marker: &str,
) -> anyhow::Result<Result<u64, String>> {
    let (text, _) = text_of(opened)?;
    let kind = OperationKind::StringSplice { index: 0, delete_count: 0, insert: marker.into() };
    let model = opened.model.clone();
    if let Err(e) =
        client.submit(&model, replica, seq, base, DiscreteOperation::new(text, kind).into()).await
    {
        return Ok(Err(format!("sending failed: {e}")));
    }
    let answer = client
        .push(|push| match push {
            ServerPush::Ack { model: m, seq: s, version, .. } if *m == model && *s == seq => {
                Some(Ok(*version))
            }
            ServerPush::SubmitRejected { model: m, seq: s, error } if *m == model && *s == seq => {
                Some(Err(error.message.clone()))
            }
            _ => None,
        })
        .await;
    Ok(answer.unwrap_or_else(|e| Err(format!("the connection ended: {e}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_writes_nothing_and_a_killed_owner_is_taken_over_with_nothing_lost()
-> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("cluster");
    let mut a = node(dir.path(), &store)?;
    let mut b = node(dir.path(), &store)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let (url_a, url_b) = (a.url("acme", "team"), b.url("acme", "team"));

    // a creates the model and sequences it.
    let mut on_a = connect(&url_a, &token).await?;
    create_model(&mut on_a, &model, text_document(1)).await?;
    let (mut on_a, opened_a, _) = open_when_served(&url_a, &token, &model).await?;
    let v1 = insert(&mut on_a, &opened_a, ReplicaId(11), 1, opened_a.snapshot.version, "<a1>")
        .await?
        .map_err(anyhow::Error::msg)?;
    // b says who serves it.
    let mut on_b = connect(&url_b, &token).await?;
    let refused = try_open(&mut on_b, &model).await?.expect_err("a holds the lease");
    assert!(refused.contains(&a.addr().to_string()), "{refused}");

    // a is paused past its lease: b takes the model over and commits on it.
    a.signal("STOP")?;
    let (mut on_b, opened_b, took) = open_when_served(&url_b, &token, &model).await?;
    println!("b took the model over {took:?} after a was paused");
    let (_, text) = text_of(&opened_b)?;
    assert_eq!(text, "<a1>", "b loaded what a acknowledged");
    let v2 = insert(&mut on_b, &opened_b, ReplicaId(21), 1, opened_b.snapshot.version, "<b1>")
        .await?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(v2, v1 + 1);
    // a wakes up, still serving the model as far as it knew; what it is sent now is never
    // acknowledged, and it steps down.
    a.signal("CONT")?;
    let late = insert(&mut on_a, &opened_a, ReplicaId(11), 2, v1, "<a2>").await?;
    assert!(late.is_err(), "a paused node acknowledged {late:?}");
    a.wait_for_log("lease")?;
    let stored = cluster.sql_in("cluster", "SELECT string_agg(version::text, ',' ORDER BY version) FROM operations WHERE model = 'doc'");
    assert_eq!(stored, format!("{v1},{v2}"), "nothing of a's after its pause");

    // b is killed with submissions in flight: a takes over within the lease time, with
    // every acknowledged operation, once.
    let mut acked = vec!["<a1>".to_owned(), "<b1>".to_owned()];
    let mut base = v2;
    for seq in 2..=20 {
        let marker = format!("<b{seq}>");
        base = insert(&mut on_b, &opened_b, ReplicaId(21), seq, base, &marker)
            .await?
            .map_err(anyhow::Error::msg)?;
        acked.push(marker);
    }
    let _ = on_b
        .submit(&model, ReplicaId(21), 21, base, {
            let (text, _) = text_of(&opened_b)?;
            DiscreteOperation::new(
                text,
                OperationKind::StringSplice { index: 0, delete_count: 0, insert: "<b21>".into() },
            )
            .into()
        })
        .await;
    b.kill()?;
    let killed = Instant::now();
    let (_on_a, opened, _) = open_when_served(&url_a, &token, &model).await?;
    println!("a took the model over {:?} after b was killed", killed.elapsed());
    let (_, text) = text_of(&opened)?;
    for marker in &acked {
        assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {text}");
    }
    assert_eq!(text.matches('<').count() as u64, opened.snapshot.version, "{text}");

    // A graceful shutdown hands the model over without waiting for the lease: a releases
    // it once everything is durable, and the restarted b serves it with all of it.
    b.restart()?;
    let version = opened.snapshot.version;
    a.stop()?;
    let lease =
        cluster.sql_in("cluster", "SELECT expires_at FROM concord_leases WHERE model = 'doc'");
    assert_eq!(lease, "-infinity", "a released its lease");
    let (_on_b, opened, _) = open_when_served(&b.url("acme", "team"), &token, &model).await?;
    assert_eq!(opened.snapshot.version, version);
    Ok(())
}

/// The nodes' PostgreSQL connections are ended again and again while a client edits: a
/// node renews on fresh connections and keeps its leases, or loses them and another node
/// takes the model over; the client resends what was not acknowledged to whichever node
/// serves the model, and everything acknowledged is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_nodes_postgres_connections_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("connections");
    let a = node(dir.path(), &store)?;
    let b = node(dir.path(), &store)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let urls = [a.url("acme", "team"), b.url("acme", "team")];
    let mut creator = connect(&urls[0], &token).await?;
    create_model(&mut creator, &model, text_document(1)).await?;
    creator.close().await?;

    let (mut client, mut opened, _) = open_when_served(&urls[0], &token, &model).await?;
    let mut acked = Vec::new();
    let (mut ended, mut terminated) = (0_u64, 0_usize);
    let mut seq = 1;
    while seq <= 30 {
        if seq % 6 == 0 && ended < seq / 6 {
            ended += 1;
            terminated += cluster.terminate_connections("connections");
        }
        let marker = format!("<{seq}>");
        match insert(&mut client, &opened, ReplicaId(7), seq, opened.snapshot.version, &marker)
            .await?
        {
            Ok(_) => {
                acked.push(marker);
                seq += 1;
            }
            Err(why) => {
                // Resend the same submission to whichever node serves the model now: if it
                // was committed, its answer is the original acknowledgement.
                println!("submission {seq}: {why}");
                (client, opened) = open_anywhere(&urls, &token, &model).await?;
            }
        }
    }
    assert!(terminated as u64 >= ended, "{terminated} connections ended in {ended} rounds");
    let (_, text) = text_of(&open_anywhere(&urls, &token, &model).await?.1)?;
    for marker in &acked {
        assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {text}");
    }
    assert_eq!(text.matches('<').count(), acked.len(), "{text}");
    Ok(())
}

/// Opens `model` on whichever of `urls` serves it (a node that does not says which does).
async fn open_anywhere(
    urls: &[String],
    token: &str,
    model: &ModelId,
) -> anyhow::Result<(WireClient, OpenedModel)> {
    let started = Instant::now();
    for url in urls.iter().cycle() {
        let mut client = connect(url, token).await?;
        match try_open(&mut client, model).await? {
            Ok(opened) => return Ok((client, opened)),
            Err(why) if started.elapsed() < Duration::from_secs(30) => {
                assert!(why.contains("served by node"), "{why}");
                client.close().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(why) => bail!("no node served {model}: {why}"),
        }
    }
    unreachable!("cycling through the nodes")
}

/// A client given both nodes' URLs keeps editing when the node it is connected to, the
/// model's owner, is killed: it reconnects to the other, which takes the model over, and
/// resyncs. Every change the client saw acknowledged is on the server once, and every
/// change it made is acknowledged in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_two_nodes_keeps_editing_when_its_node_is_killed() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("client_urls");
    let mut a = node(dir.path(), &store)?;
    let b = node(dir.path(), &store)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let (url_a, url_b) = (a.url("acme", "team"), b.url("acme", "team"));
    let mut creator = connect(&url_a, &token).await?;
    create_model(&mut creator, &model, text_document(1)).await?;
    creator.close().await?;

    let domain = concord_client::Domain::builder(url_a.clone())
        .fallback_urls([url_b.clone()])
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build();
    domain.connect_with_jwt(token.clone()).await?;
    let doc = domain.models().open(&model).await?;
    let text = doc.root().get("text").await?.context("no `text`")?.as_string()?;
    let acknowledged = |change| {
        let doc = doc.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), doc.acknowledged(change))
                .await
                .context("not acknowledged within a minute")?
                .map_err(anyhow::Error::from)
        }
    };
    let mut acked = Vec::new();
    for i in 0..10 {
        let marker = format!("<{i}>");
        acknowledged(text.insert(0, &marker).await?).await?;
        acked.push(marker);
    }
    // Changes in flight when a dies, and more made while no node serves the model.
    let mut unacked = Vec::new();
    for i in 10..15 {
        let marker = format!("<{i}>");
        unacked.push((text.insert(0, &marker).await?, marker));
    }
    a.kill()?;
    for i in 15..30 {
        let marker = format!("<{i}>");
        unacked.push((text.insert(0, &marker).await?, marker));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (change, marker) in unacked {
        acknowledged(change).await?;
        acked.push(marker);
    }
    assert_eq!(domain.url(), url_a, "the first URL names the domain");
    // b serves the model now, with every change once.
    let (_on_b, opened, _) = open_when_served(&url_b, &token, &model).await?;
    let (_, stored) = text_of(&opened)?;
    for marker in &acked {
        assert_eq!(stored.matches(marker.as_str()).count(), 1, "{marker} in {stored}");
    }
    assert_eq!(stored.matches('<').count(), 30, "{stored}");
    assert_eq!(text.value().await?, stored, "the client agrees with the server");
    Ok(())
}
