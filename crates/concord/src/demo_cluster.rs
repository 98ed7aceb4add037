//! `concord demo --cluster`: several nodes on one PostgreSQL (`docs/cluster.md`). A
//! throwaway PostgreSQL starts (a clear error if it is not installed), three cluster nodes
//! run in this process on it, and two clients, each given every node's URL but starting at
//! different nodes, edit one note and converge; then the node that owns the note stops
//! (handing it over), and both go on through another node and converge again.
//!
//! It exits non-zero if anything did not converge.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use concord_client::{
    ClientError, CollectionId, Domain, DomainEvent, ModelId, RealTimeModel, RedbAdapter,
};
use concord_server::{ClusterConfig, RunningServer, Server, ServerConfig};
use serde_json::json;

use crate::demo::{SECRET, say, step, text_of, token, wait_until};

/// The throwaway cluster of `cargo xtask cluster` (std and anyhow only).
#[allow(dead_code, unreachable_pub)]
#[path = "../../concord-testkit/src/postgres.rs"]
mod postgres;

/// A client given every node's URL, `first` first.
fn client(urls: &[String], first: usize, dir: &Path) -> Domain {
    let order: Vec<String> = urls[first..].iter().chain(&urls[..first]).cloned().collect();
    Domain::builder(order[0].clone())
        .fallback_urls(order[1..].iter().cloned())
        .storage(RedbAdapter::new(dir))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
}

/// Opens `note`. A node that cannot serve it at that moment (its owner just changed) says
/// why; the refusal is shown, and the open tried again.
async fn open(who: &str, domain: &Domain, note: &ModelId) -> anyhow::Result<RealTimeModel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match domain.models().open(note).await {
            Ok(model) => return Ok(model),
            Err(ClientError::Server(refusal)) if tokio::time::Instant::now() < deadline => {
                say(format!("   {who}'s node: {}; {who} tries again", refusal.message));
            }
            Err(ClientError::NotAvailableOffline(_)) if tokio::time::Instant::now() < deadline => {}
            Err(error) => bail!("{who} cannot open {note}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn demo(dir: &Path) -> anyhow::Result<()> {
    say("Concord cluster demo: three nodes on one PostgreSQL, two people on different nodes.");

    step(1, "A throwaway PostgreSQL starts, and three nodes on it.");
    let mut database = postgres::ThrowawayPostgres::start(&dir.join("postgres"), 0)?;
    let store = database.url();
    say(format!("   PostgreSQL: {store} (data in {})", dir.join("postgres").display()));
    let mut nodes: Vec<Option<RunningServer>> = Vec::new();
    for n in 1..=3 {
        let mut config = ServerConfig::development(dir.join(format!("node{n}")), SECRET);
        config.store = Some(store.clone().into());
        config.cluster = Some(ClusterConfig {
            name: Some(format!("node{n}")),
            url: None,
            lease: Default::default(),
        });
        let node = Server::spawn(config).await.with_context(|| format!("starting node{n}"))?;
        say(format!("   node{n}: {}", node.url("demo", "notes")));
        nodes.push(Some(node));
    }
    let urls: Vec<String> = nodes.iter().flatten().map(|node| node.url("demo", "notes")).collect();

    step(2, "Alice starts at node1, Bob at node2; each client is given all three URLs.");
    let alice = client(&urls, 0, &dir.join("alice"));
    alice.connect_with_jwt(token("alice")?).await?;
    let bob = client(&urls, 1, &dir.join("bob"));
    bob.connect_with_jwt(token("bob")?).await?;
    say("   alice: connected to node1   bob: connected to node2");

    step(3, "Alice creates a note (node1 takes its lease); Bob opens it through node2.");
    let notes = CollectionId::new("notes")?;
    let note = ModelId::new("cluster-note")?;
    let mut alice_events = alice.events();
    alice.models().create_with_id(&note, &notes, json!({ "text": "Agenda:" })).await?;
    let a_note = open("alice", &alice, &note).await?;
    // Created offline-first: Bob can open it once the server has it.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = alice_events.next().await {
            if matches!(event, DomainEvent::Created { model } if model == note) {
                return;
            }
        }
    })
    .await
    .context("the server did not confirm the note")?;
    let a_text = a_note.root().get("text").await?.context("no text")?.as_string()?;
    let b_note = open("bob", &bob, &note).await?;
    let b_text = b_note.root().get("text").await?.context("no text")?.as_string()?;
    let owner = database.sql(
        "SELECT n.name FROM concord_leases l JOIN concord_nodes n ON n.id = l.node \
         WHERE l.model = 'cluster-note'",
    )?;
    say(format!("   the note's lease: {owner}"));
    if owner != "node2" {
        say(format!("   node2 forwards Bob's requests for it to {owner}"));
    }

    step(4, "Both edit at once.");
    let a_change = a_text.insert(a_text.len().await?, " budget").await?;
    let b_change = b_text.insert(b_text.len().await?, " hiring").await?;
    a_note.acknowledged(a_change).await?;
    b_note.acknowledged(b_change).await?;
    wait_until("both see both edits", || async {
        let (a, b) = (text_of(&a_note).await?, text_of(&b_note).await?);
        Ok(a == b && a.contains("budget") && a.contains("hiring"))
    })
    .await?;
    say(format!("   alice sees: {:?}", text_of(&a_note).await?));
    say(format!("   bob sees:   {:?}", text_of(&b_note).await?));

    step(
        5,
        format!("{owner}, the note's owner, shuts down; both clients go on elsewhere.").as_str(),
    );
    let index = ["node1", "node2", "node3"].iter().position(|n| *n == owner).context("no owner")?;
    if let Some(node) = nodes[index].take() {
        node.stop().await.context("stopping the owner")?;
    }
    let a_change = a_text.insert(0, "[moved] ").await?;
    let b_change = b_text.insert(b_text.len().await?, ", demo").await?;
    let patience = Duration::from_secs(60);
    for (who, model, change) in [("alice", &a_note, a_change), ("bob", &b_note, b_change)] {
        if tokio::time::timeout(patience, model.acknowledged(change)).await.is_err() {
            let lease = database.sql(
                "SELECT n.name || ' ' || l.expires_at FROM concord_leases l \
                 JOIN concord_nodes n ON n.id = l.node WHERE l.model = 'cluster-note'",
            )?;
            bail!("{who}'s edit was not acknowledged after the handover (lease: {lease})");
        }
    }
    let expected = "[moved] Agenda:";
    wait_until("both converge after the handover", || async {
        let (a, b) = (text_of(&a_note).await?, text_of(&b_note).await?);
        Ok(a == b && a.starts_with(expected) && a.ends_with(", demo"))
    })
    .await?;
    let owner = database.sql(
        "SELECT n.name FROM concord_leases l JOIN concord_nodes n ON n.id = l.node \
         WHERE l.model = 'cluster-note'",
    )?;
    say(format!("   the note's lease: {owner}"));
    say(format!("   alice: {:?}", text_of(&a_note).await?));
    say(format!("   bob:   {:?}", text_of(&b_note).await?));
    ensure!(text_of(&a_note).await?.matches("budget").count() == 1, "an edit applied twice");
    say("\nConverged.");

    alice.close().await?;
    bob.close().await?;
    for node in nodes.into_iter().flatten() {
        node.stop().await.context("a node failed")?;
    }
    database.stop()
}
