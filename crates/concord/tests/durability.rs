//! An acknowledged operation survives SIGKILL: clients submit operations as fast as they are
//! acknowledged, the server process is killed at a random moment, and after a restart on the
//! same data directory every acknowledged operation is in the model.

mod common;
#[path = "../../concord-server/tests/support/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use common::{
    BIN, PATIENCE, ServeProcess, connect, create_model, open_model, serve, text_document, token,
};
use concord_ot::{DiscreteOperation, ElementId, OperationKind, PathSegment, ReplicaId};
use concord_protocol::{ModelId, OpenedModel, ServerPush};
use concord_testkit::SimRng;

const KILLS: u64 = 5;
const CLIENTS: u64 = 4;

/// One acknowledged operation: the marker it inserted and the version it was committed as.
#[derive(Debug, Clone)]
struct Acked {
    marker: String,
    version: u64,
}

fn text_of(opened: &OpenedModel) -> anyhow::Result<(ElementId, String)> {
    let data = &opened.snapshot.data;
    let text = data.element_at(&[PathSegment::Key("text".into())]).context("no `text`")?;
    Ok((text, data.text(text).context("`text` is not a string")?))
}

/// Submits operations one after another, each once the previous one is acknowledged, until
/// the connection fails; every acknowledgement is recorded in `acked` as it arrives.
async fn submit_until_killed(
    url: String,
    token: String,
    model: ModelId,
    replica: ReplicaId,
    open: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> anyhow::Result<()> {
    let mut client = connect(&url, &token).await?;
    let opened = open_model(&mut client, &model).await?;
    open.fetch_add(1, Ordering::SeqCst);
    let (text, _) = text_of(&opened)?;
    let mut base_version = opened.snapshot.version;
    for seq in 1.. {
        let marker = format!("<{}.{seq}>", replica.0);
        let kind =
            OperationKind::StringSplice { index: 0, delete_count: 0, insert: marker.clone() };
        let operation = DiscreteOperation::new(text, kind).into();
        if client.submit(&model, replica, seq, base_version, operation).await.is_err() {
            return Ok(()); // The server is gone.
        }
        let answer = client
            .push(|push| match push {
                ServerPush::Ack { model: m, seq: s, version, .. } if *m == model && *s == seq => {
                    Some(Ok(*version))
                }
                ServerPush::SubmitRejected { model: m, seq: s, error }
                    if *m == model && *s == seq =>
                {
                    Some(Err(error.clone()))
                }
                _ => None,
            })
            .await;
        match answer {
            Ok(Ok(version)) => {
                acked.lock().unwrap().push(Acked { marker, version });
                base_version = version;
            }
            Ok(Err(error)) => {
                bail!("submission {seq} of replica {} rejected: {error:?}", replica.0)
            }
            Err(_) => return Ok(()), // The server is gone.
        }
    }
    Ok(())
}

/// Opens `model` on a fresh server and checks that everything in `acked` is there.
async fn check(url: &str, token: &str, model: &ModelId, acked: &[Acked]) -> anyhow::Result<u64> {
    let mut client = connect(url, token).await?;
    let opened = open_model(&mut client, model).await?;
    let (_, text) = text_of(&opened)?;
    let version = opened.snapshot.version;
    let highest = acked.iter().map(|a| a.version).max().unwrap_or(0);
    assert!(version >= highest, "version {version} < acknowledged version {highest}");
    for a in acked {
        assert!(text.contains(&a.marker), "acknowledged {a:?} is missing after SIGKILL");
    }
    // Each committed operation inserted one marker: none is lost or applied twice.
    assert_eq!(text.matches('<').count() as u64, version, "markers vs version in {text:?}");
    let mut versions: Vec<u64> = acked.iter().map(|a| a.version).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), acked.len(), "two acknowledgements share a version");
    client.close().await?;
    Ok(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    kill_and_restart(dir.path(), &[]).await
}

/// The same on PostgreSQL: the server process killed with its commits in flight, and
/// started again on the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill_on_postgres() -> anyhow::Result<()> {
    let Some(cluster) = postgres::private() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("durability");
    kill_and_restart(dir.path(), &["--store", &store]).await?;
    let stored = cluster.sql_in("durability", "SELECT count(*) FROM operations");
    assert!(stored.parse::<u64>()? >= KILLS, "the operations are in PostgreSQL: {stored}");
    Ok(())
}

/// Rounds of clients submitting until the server is killed at a random moment; each round
/// starts by checking, on the restarted server, everything acknowledged before.
async fn kill_and_restart(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = SimRng::new(seed);
    let model = ModelId::new("durable")?;
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let mut writer_token: Option<String> = None;
    let opened = Arc::new(AtomicU64::new(0));

    let mut server = serve(dir, args)?;
    for round in 0..=KILLS {
        if round > 0 {
            server.restart()?;
        }
        let url = server.url("acme", "durability");
        if writer_token.is_none() {
            writer_token = Some(token(dir, "writer")?);
        }
        let token = writer_token.as_ref().unwrap();
        if round == 0 {
            let mut client = connect(&url, token).await?;
            create_model(&mut client, &model, text_document(1)).await?;
            client.close().await?;
        } else {
            let before = acked.lock().unwrap().clone();
            let version = check(&url, token, &model, &before).await?;
            println!("round {round}: {} acknowledged operations, version {version}", before.len());
        }
        if round == KILLS {
            break;
        }

        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let replica = ReplicaId(100 * (round + 1) + i);
                let (url, token, model) = (url.clone(), token.clone(), model.clone());
                tokio::spawn(submit_until_killed(
                    url,
                    token,
                    model,
                    replica,
                    opened.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        // Let every client open the model and submissions flow, then kill at a random
        // moment while they are in flight.
        let started = acked.lock().unwrap().len();
        let all_open = (round + 1) * CLIENTS;
        for _ in 0..1000 {
            if opened.load(Ordering::SeqCst) == all_open && acked.lock().unwrap().len() > started {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(acked.lock().unwrap().len() > started, "no operation was acknowledged");
        tokio::time::sleep(Duration::from_millis(50 + rng.below(500) as u64)).await;
        server.kill()?;
        for client in clients {
            tokio::time::timeout(Duration::from_secs(20), client)
                .await
                .context("a client did not notice the server died")??
                .context("a client failed")?;
        }
    }
    assert!(acked.lock().unwrap().len() as u64 >= KILLS);
    Ok(())
}

/// Submits operations that each insert `marker` and a few KiB of filler, one after another,
/// until the server stops answering; returns the markers acknowledged.
async fn fill_until_refused(
    url: &str,
    token: &str,
    model: &ModelId,
) -> anyhow::Result<Vec<String>> {
    let mut client = connect(url, token).await?;
    let opened = open_model(&mut client, model).await?;
    let (text, _) = text_of(&opened)?;
    let mut base_version = opened.snapshot.version;
    let replica = ReplicaId(9);
    let mut acked = Vec::new();
    for seq in 1.. {
        let marker = format!("<{seq}>");
        let insert = format!("{marker}{}", "f".repeat(8 * 1024));
        let kind = OperationKind::StringSplice { index: 0, delete_count: 0, insert };
        let operation = DiscreteOperation::new(text, kind).into();
        if client.submit(model, replica, seq, base_version, operation).await.is_err() {
            break;
        }
        let answer = client
            .push(|push| match push {
                ServerPush::Ack { seq: s, version, .. } if *s == seq => Some(Some(*version)),
                ServerPush::SubmitRejected { seq: s, .. } if *s == seq => Some(None),
                _ => None,
            })
            .await;
        match answer {
            Ok(Some(version)) => {
                acked.push(marker);
                base_version = version;
            }
            // Refused, or the connection is gone: the server stopped.
            Ok(None) | Err(_) => break,
        }
        if seq > 2_000 {
            bail!("the store never failed");
        }
    }
    Ok(acked)
}

/// A store write that fails (here: the file may not grow past a limit, as on a full disk)
/// stops the server rather than let it run ahead of its disk; restarted with room, it has
/// every operation it acknowledged.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_write_stops_the_server_and_loses_nothing_acknowledged() -> anyhow::Result<()>
{
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let model = ModelId::new("full")?;
    let mut server = serve(&data, &[])?;
    let token = token(&data, "writer")?;
    let url = server.url("acme", "full");
    let mut client = connect(&url, &token).await?;
    create_model(&mut client, &model, text_document(1)).await?;
    client.close().await?;
    server.stop()?;

    // The same server, in a shell that lets the store file grow by at most 2 MiB and turns
    // the signal for an oversized write into an error (as a full disk gives).
    let size = std::fs::metadata(data.join("concord.redb"))?.len();
    let blocks = (size + 2 * 1024 * 1024) / 512;
    let wrapper = dir.path().join("concord-with-a-small-disk");
    let script = format!("#!/bin/sh\ntrap '' XFSZ\nulimit -f {blocks}\nexec {BIN} \"$@\"\n");
    std::fs::write(&wrapper, script)?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let mut server = ServeProcess::start(&wrapper, &data, &[])?;
    let url = server.url("acme", "full");
    let acked = fill_until_refused(&url, &token, &model).await?;
    assert!(!acked.is_empty(), "some operations were acknowledged before the disk filled");
    let status = server.wait(PATIENCE)?.context("the server kept running after a failed write")?;
    assert!(!status.success(), "a failed write is not a clean stop: {status}");
    let log = server.log();
    assert!(log.contains("store write failed"), "the log says why:\n{log}");

    // Restarted with room: every acknowledged operation is there, once.
    let server = serve(&data, &[])?;
    let url = server.url("acme", "full");
    let mut client = connect(&url, &token).await?;
    let opened = open_model(&mut client, &model).await?;
    let (_, text) = text_of(&opened)?;
    for marker in &acked {
        assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} after the restart");
    }
    assert_eq!(text.matches('<').count() as u64, opened.snapshot.version);
    Ok(())
}
