//! The server on PostgreSQL when PostgreSQL fails under load: restarted, its connections
//! killed, or gone for longer than the server retries a commit. A real server, a real
//! PostgreSQL cluster of the test's own, and protocol clients over loopback that resend what
//! was not acknowledged after any lost connection, as every Concord client does. Each time,
//! every acknowledged operation is stored, every client's operations are applied exactly
//! once, and a server started afresh on the database reads the same.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use concord_ot::ReplicaId;
use concord_protocol::{ErrorCode, ServerPush};
use concord_server::RunningServer;
use concord_testkit::wire::WireClient;
use support::postgres::TestPostgres;
use support::{body, create, insert, jwt, model, open, start, try_open, url};

const CLIENTS: u64 = 4;
const PER_CLIENT: u64 = 50;
/// How long a client keeps trying before the test fails.
const CLIENT_PATIENCE: Duration = Duration::from_secs(120);

/// What the clients saw.
#[derive(Debug, Default)]
struct Log {
    /// Each acknowledged operation: its marker and the version it was committed as.
    acked: Vec<(String, u64)>,
    /// Sessions the server closed saying a write was lost (`SessionClosing`, unavailable).
    told: usize,
    /// Connections lost or refused, after which the client connected again and resent.
    reconnects: usize,
    /// Why each client's last session ended, by replica: said if the test gives up.
    last_failures: BTreeMap<u64, String>,
}

async fn start_on(
    cluster: &TestPostgres,
    dir: &Path,
    retry: Duration,
) -> anyhow::Result<RunningServer> {
    let store = cluster.url_for_dir(dir);
    start(dir, |config| {
        config.store = Some(store.into());
        config.store_retry = retry;
    })
    .await
}

/// What became of one submission.
enum Answer {
    Acked(u64),
    /// The connection is gone, or the server closed it saying a write was lost.
    Lost {
        told: bool,
        /// What ended the session, for the message if the client gives up.
        why: String,
    },
}

/// Submits `count` operations for `replica`, one at a time, each inserting `<replica.seq>`
/// at the start of the body; after a lost connection it connects again, opens the model
/// and resends the submission that was not acknowledged (same replica and seq).
async fn resend_until_done(
    url: String,
    replica: u64,
    count: u64,
    log: Arc<Mutex<Log>>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + CLIENT_PATIENCE;
    let doc = model("doc");
    let mut seq = 1;
    while seq <= count {
        if tokio::time::Instant::now() > deadline {
            let last = log.lock().unwrap().last_failures.get(&replica).cloned();
            bail!(
                "replica {replica} got {} of {count} acknowledged in time; its last session ended with: {}",
                seq - 1,
                last.as_deref().unwrap_or("nothing")
            );
        }
        let session = async {
            let (mut client, _) = WireClient::connect_as(&url, jwt("writer")).await?;
            let snapshot =
                try_open(&mut client, "doc").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            anyhow::Ok((client, snapshot))
        };
        let (mut client, snapshot) = match session.await {
            Ok(opened) => opened,
            Err(error) => {
                // The server could not open the model (PostgreSQL is away): later.
                let why = format!("opening the model failed: {error:#}");
                {
                    let mut log = log.lock().unwrap();
                    log.reconnects += 1;
                    log.last_failures.insert(replica, why);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut base = snapshot.version;
        while seq <= count {
            let operation = insert(&snapshot.data, 0, &format!("<{replica}.{seq}>"));
            let answer = match client.submit(&doc, ReplicaId(replica), seq, base, operation).await {
                Err(error) => {
                    Answer::Lost { told: false, why: format!("submitting failed: {error:#}") }
                }
                Ok(()) => client
                    .push(|push| match push {
                        ServerPush::Ack { model, seq: s, version, .. }
                            if *model == doc && *s == seq =>
                        {
                            Some(Ok(Answer::Acked(*version)))
                        }
                        ServerPush::SubmitRejected { model, seq: s, error }
                            if *model == doc && *s == seq =>
                        {
                            Some(Err(format!("{error:?}")))
                        }
                        ServerPush::SessionClosing { code, message } => Some(Ok(Answer::Lost {
                            told: *code == ErrorCode::UNAVAILABLE,
                            why: format!("the server closed the session ({code:?}): {message}"),
                        })),
                        _ => None,
                    })
                    .await
                    .unwrap_or_else(|error| {
                        let why = format!("waiting for the answer failed: {error:#}");
                        Ok(Answer::Lost { told: false, why })
                    })
                    .map_err(|e| anyhow::anyhow!("replica {replica} seq {seq} refused: {e}"))?,
            };
            match answer {
                Answer::Acked(version) => {
                    log.lock().unwrap().acked.push((format!("<{replica}.{seq}>"), version));
                    base = version;
                    seq += 1;
                }
                Answer::Lost { told, why } => {
                    let mut log = log.lock().unwrap();
                    log.last_failures.insert(replica, why);
                    log.told += usize::from(told);
                    log.reconnects += 1;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Creates the model, starts the clients, runs `fault` once they are under way, waits for
/// them, and checks the outcome on the server and on a server started afresh.
async fn under_load<F, Fut>(retry: Duration, fault: F) -> anyhow::Result<Option<Log>>
where
    F: FnOnce(Arc<TestPostgres>, String, Arc<Mutex<Log>>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(cluster) = support::postgres::private() else { return Ok(None) };
    let cluster = Arc::new(cluster);
    let dir = tempfile::tempdir()?;
    let server = start_on(&cluster, dir.path(), retry).await?;
    let mut creator = support::connect(&server, "writer").await?;
    create(&mut creator, "doc", "").await?;
    let created = open(&mut creator, "doc").await?.version;
    creator.close().await?;

    let log = Arc::new(Mutex::new(Log::default()));
    let clients: Vec<_> = (1..=CLIENTS)
        .map(|replica| {
            tokio::spawn(resend_until_done(url(&server), replica, PER_CLIENT, log.clone()))
        })
        .collect();
    let database = TestPostgres::database_for_dir(dir.path());
    fault(cluster.clone(), database, log.clone()).await?;
    for client in clients {
        client.await.context("a client panicked")??;
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    check(&server, created, &log).await.context("on the server that lived through it")?;
    server.stop().await?;
    let server = start_on(&cluster, dir.path(), retry).await?;
    check(&server, created, &log).await.context("on a server started afresh")?;
    server.stop().await?;
    println!("{} acknowledged, {} told, {} reconnects", log.acked.len(), log.told, log.reconnects);
    Ok(Some(log))
}

/// Every client's every operation is in the model exactly once, every acknowledged one at a
/// version of its own, and the model is at the version that many operations make.
async fn check(server: &RunningServer, created: u64, log: &Log) -> anyhow::Result<()> {
    let mut reader = support::connect(server, "writer").await?;
    let snapshot = open(&mut reader, "doc").await?;
    let text = body(&snapshot.data);
    for replica in 1..=CLIENTS {
        for seq in 1..=PER_CLIENT {
            let marker = format!("<{replica}.{seq}>");
            assert_eq!(text.matches(&marker).count(), 1, "{marker} in {text}");
        }
    }
    assert_eq!(text.matches('<').count() as u64, CLIENTS * PER_CLIENT, "{text}");
    assert_eq!(snapshot.version, created + CLIENTS * PER_CLIENT, "one version per operation");
    assert_eq!(log.acked.len() as u64, CLIENTS * PER_CLIENT, "every operation acknowledged once");
    let mut versions: Vec<u64> = log.acked.iter().map(|(_, version)| *version).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), log.acked.len(), "two acknowledgements share a version");
    reader.close().await?;
    Ok(())
}

/// Waits until the clients have had `more` operations acknowledged since now, or all of
/// theirs (on a fast machine they may finish before every fault was injected).
async fn progress(log: &Mutex<Log>, more: usize) -> anyhow::Result<()> {
    let all = (CLIENTS * PER_CLIENT) as usize;
    let goal = (log.lock().unwrap().acked.len() + more).min(all);
    let deadline = tokio::time::Instant::now() + CLIENT_PATIENCE;
    loop {
        let acked = log.lock().unwrap().acked.len();
        if acked >= goal {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let last = &log.lock().unwrap().last_failures;
            bail!(
                "the clients made no progress: {acked} of {goal} acknowledged; their last sessions ended with: {last:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn blocking(run: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(run).await.context("a cluster command panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_no_acknowledged_operation_and_applies_each_once()
-> anyhow::Result<()> {
    under_load(Duration::from_secs(30), |cluster, _, log| async move {
        for _ in 0..2 {
            progress(&log, 20).await?;
            let cluster = cluster.clone();
            blocking(move || cluster.restart()).await?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_terminated_mid_load_lose_no_acknowledged_operation_and_apply_each_once()
-> anyhow::Result<()> {
    under_load(Duration::from_secs(30), |cluster, database, log| async move {
        let mut terminated = 0;
        for _ in 0..6 {
            progress(&log, 10).await?;
            let (cluster, database) = (cluster.clone(), database.clone());
            terminated +=
                tokio::task::spawn_blocking(move || cluster.terminate_connections(&database))
                    .await?;
        }
        assert!(terminated > 0, "the server had connections to end");
        Ok(())
    })
    .await?;
    Ok(())
}

/// PostgreSQL away for longer than the server retries: the commits waiting are given up,
/// their sessions are told so and closed, and the clients resend once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_past_the_retry_time_closes_the_sessions_waiting_and_clients_resend()
-> anyhow::Result<()> {
    let log = under_load(Duration::from_millis(300), |cluster, _, log| async move {
        progress(&log, 20).await?;
        let stopping = cluster.clone();
        blocking(move || stopping.stop()).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        blocking(move || cluster.start_again()).await?;
        Ok(())
    })
    .await?;
    if let Some(log) = log {
        assert!(
            log.told > 0,
            "no session was told its write was lost ({} reconnects)",
            log.reconnects
        );
    }
    Ok(())
}
