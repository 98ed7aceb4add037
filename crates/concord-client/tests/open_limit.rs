//! More models changed offline than the server lets one connection open: every change
//! reaches the server, with and without the application holding models open, across a
//! reconnection in the middle; progress counts only what the server acknowledged.
//!
//! The real server on loopback with its open-model limit lowered to [`LIMIT`], clients with
//! redb stores. The engines are not told the limit (the handshake does not carry it yet):
//! they learn it from the server's first refusal.

mod support;

use std::path::Path;
use std::time::Duration;

use concord_client::{Domain, DomainEvent, ModelId};
use concord_server::{RunningServer, Server, ServerConfig};
use serde_json::json;
use support::*;

const LIMIT: usize = 20;
const MODELS: usize = 150;

async fn server(dir: &Path, addr: Option<std::net::SocketAddr>) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    config.limits.max_open_models = LIMIT;
    if let Some(addr) = addr {
        config.bind = addr;
    }
    Ok(Server::spawn(config).await?)
}

fn ids() -> Vec<ModelId> {
    (0..MODELS).map(|i| id(&format!("note-{i:03}"))).collect()
}

/// Offline: creates every model and changes it once (each change awaited as stored);
/// returns the handles of the first `held`, the others are closed.
async fn create_offline(
    domain: &Domain,
    held: usize,
) -> anyhow::Result<Vec<concord_client::RealTimeModel>> {
    domain.initialize_offline("alice").await?;
    let mut handles = Vec::new();
    for (i, model) in ids().iter().enumerate() {
        domain.models().create_with_id(model, &notes(), json!({ "n": 0 })).await?;
        let handle = domain.models().open(model).await?;
        let n = handle.root().get("n").await?.expect("n").as_number()?;
        let change = n.set(1.0).await?;
        handle.stored(change).await?;
        if i < held {
            handles.push(handle);
        }
    }
    Ok(handles)
}

/// What the domain reported while syncing: the last progress, and the problems.
#[derive(Debug, Default)]
struct Seen {
    progress: Option<(usize, usize, usize)>,
    problems: Vec<DomainEvent>,
}

impl Seen {
    fn take(&mut self, events: &mut concord_client::Events<DomainEvent>) {
        while let Some(event) = events.try_next() {
            match event {
                DomainEvent::SyncProgress { done, failed, total } => {
                    assert!(done + failed <= total, "{done} + {failed} > {total}");
                    self.progress = Some((done, failed, total));
                }
                event @ (DomainEvent::ProtocolViolation { .. }
                | DomainEvent::ServerFault { .. }
                | DomainEvent::ChangesRejected { .. }
                | DomainEvent::CreationRefused { .. }
                | DomainEvent::ModelGone { .. }) => self.problems.push(event),
                _ => {}
            }
        }
        assert_eq!(events.missed(), 0, "the test must see every event");
    }
}

/// Reads the store after the events: how many models still hold changes the server has
/// not acknowledged. Checks that done means acknowledged: the store has at least as many
/// models in sync as this connection counted done, beside those it did not list (synced
/// before, but for the `held` ones the application holds).
async fn owed(domain: &Domain, seen: &Seen, held: usize) -> anyhow::Result<usize> {
    let stored = domain.models().stored_models().await?;
    let owed = stored.iter().filter(|m| m.has_pending_changes || m.created_locally).count();
    if let Some((done, _, total)) = seen.progress {
        let in_sync = stored.len() - owed;
        let floor = (MODELS - total - held) + done;
        assert!(in_sync >= floor, "{done} of {total} done, {in_sync} in sync, {held} held");
    }
    Ok(owed)
}

/// Waits until the store holds nothing the server has not acknowledged.
async fn all_acknowledged(
    domain: &Domain,
    events: &mut concord_client::Events<DomainEvent>,
    seen: &mut Seen,
    held: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        seen.take(events);
        let owed = owed(domain, seen, held).await?;
        if owed == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{owed} models still hold changes the server has not acknowledged; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Another user opens every model at the server, one at a time, and finds the change.
async fn server_has_every_change(url: &str, dir: &Path) -> anyhow::Result<()> {
    let bob = domain(url, dir);
    bob.connect_with_jwt(token("bob")).await?;
    for model in ids() {
        let handle = bob.models().open(&model).await?;
        assert_eq!(handle.value().await?, json!({ "n": 1.0 }), "{model}");
    }
    bob.close().await?;
    Ok(())
}

/// Waits until background sync reported at least `done` models done.
async fn progress_reaches(
    domain: &Domain,
    events: &mut concord_client::Events<DomainEvent>,
    seen: &mut Seen,
    done: usize,
    held: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.progress.is_none_or(|(d, _, _)| d < done) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen.take(events);
        owed(domain, seen, held).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stored_offline_in_more_models_than_the_limit_all_reach_the_server_across_a_server_restart()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server_dir = dir.path().join("server");
    let running = server(&server_dir, None).await?;
    let addr = running.addr();
    let url = url(&running);
    // The changes are made offline by one process (domain), and synced by the next.
    let writer = domain(&url, &dir.path().join("alice"));
    drop(create_offline(&writer, 0).await?);
    writer.close().await?;

    let alice = domain(&url, &dir.path().join("alice"));
    let mut events = alice.events();
    let mut seen = Seen::default();
    alice.connect_with_jwt(token("alice")).await?;
    // Halfway, the server goes away and comes back: the engine reconnects by itself and
    // lists what is left.
    progress_reaches(&alice, &mut events, &mut seen, MODELS / 3, 0).await?;
    running.stop().await?;
    let running = server(&server_dir, Some(addr)).await?;
    all_acknowledged(&alice, &mut events, &mut seen, 0).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    seen.take(&mut events);
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    // The connection after the restart counts what it synced; all of it done, nothing failed.
    let (done, failed, total) = seen.progress.expect("progress reported");
    assert_eq!((done, failed), (total, 0), "{seen:?}");
    assert!(total > 0 && total < MODELS, "the restart left part of the work: {seen:?}");
    alice.close().await?;
    server_has_every_change(&url, &dir.path().join("bob")).await?;
    running.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_more_models_held_open_than_the_limit_the_others_still_sync_and_the_held_ones_too()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = server(&dir.path().join("server"), None).await?;
    let url = url(&running);
    let alice = domain(&url, &dir.path().join("alice"));
    let held = create_offline(&alice, LIMIT + 5).await?;
    let mut events = alice.events();
    let mut seen = Seen::default();
    alice.connect_with_jwt(token("alice")).await?;
    progress_reaches(&alice, &mut events, &mut seen, MODELS / 4, held.len()).await?;
    // A reconnection in the middle.
    alice.disconnect().await?;
    alice.connect_with_jwt(token("alice")).await?;
    all_acknowledged(&alice, &mut events, &mut seen, held.len()).await?;
    // The held models, more than the server lets one connection open, still take changes
    // and push them (those beyond the limit on a turn).
    for handle in &held {
        let n = handle.root().get("n").await?.expect("n").as_number()?;
        let change = n.set(2.0).await?;
        tokio::time::timeout(Duration::from_secs(20), handle.acknowledged(change)).await??;
        n.set(1.0).await?;
    }
    all_acknowledged(&alice, &mut events, &mut seen, held.len()).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    seen.take(&mut events);
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    let (done, failed, total) = seen.progress.expect("progress reported");
    assert_eq!((done, failed), (total, 0), "{seen:?}");
    server_has_every_change(&url, &dir.path().join("bob")).await?;
    drop(held);
    alice.close().await?;
    running.stop().await?;
    Ok(())
}
