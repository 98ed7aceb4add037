//! The client while the server's database is down or damaged: a real server on a PostgreSQL
//! cluster of the test's own, and a client with a redb store. What the server cannot do for
//! want of its database it answers `unavailable`; the client takes that as "not now", never
//! as "no" (a query or a history asked meanwhile fails `unavailable`). A model the server
//! cannot load (a damaged record) stays on the client, offline, keeping its changes until a
//! later attempt finds it repaired.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use concord_client::{ClientError, ConnectionState, DomainEvent, ErrorCode};
use concord_server::{RunningServer, Server, ServerConfig};
use concord_testkit::postgres::{ThrowawayPostgres, bin_dir_or_skip};
use serde_json::json;
use support::*;

/// A PostgreSQL cluster of the test's own, and the directory of the server on it and of the
/// clients' stores.
struct OnPostgres {
    dir: tempfile::TempDir,
    postgres: ThrowawayPostgres,
    /// Where the server listens, once it started: it starts there again.
    addr: Option<SocketAddr>,
}

impl OnPostgres {
    /// `None` where PostgreSQL is not installed (the test is skipped, saying so).
    fn start() -> anyhow::Result<Option<OnPostgres>> {
        if bin_dir_or_skip().is_none() {
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let postgres = ThrowawayPostgres::start(&dir.path().join("postgres"), 0)?;
        Ok(Some(OnPostgres { dir, postgres, addr: None }))
    }

    /// Starts the server, at the address of its last start if it had one.
    async fn server(&mut self) -> anyhow::Result<RunningServer> {
        let mut config = ServerConfig::development(self.dir.path().join("server"), SECRET);
        config.store = Some(self.postgres.url().into());
        if let Some(addr) = self.addr {
            config.bind = addr;
        }
        let server = Server::spawn(config).await?;
        self.addr = Some(server.addr());
        Ok(server)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_and_a_creation_wait_out_the_servers_database_outage() -> anyhow::Result<()> {
    let Some(mut pg) = OnPostgres::start()? else { return Ok(()) };
    let server = pg.server().await?;
    let alice = connected(&server, pg.path(), "alice").await?;
    let doc = id("doc");
    create_confirmed(&alice, std::slice::from_ref(&doc), json!({ "n": 1 })).await?;

    // A restarted server has not loaded the model: deleting it must read the database.
    server.stop().await?;
    let server = pg.server().await?;
    eventually("alice is connected again", || async {
        Ok(alice.state() == ConnectionState::Connected)
    })
    .await?;
    pg.postgres.stop()?;

    let mut events = alice.events();
    alice.models().remove(&doc).await?;
    let fresh = id("fresh");
    alice.models().create_with_id(&fresh, &notes(), json!({ "made": "in the outage" })).await?;
    // Asked again and again (the backoff is at most 500 ms here), answered `unavailable`
    // each time: nothing is refused, and the deleted model does not come back.
    let outage = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(outage);
    loop {
        tokio::select! {
            () = &mut outage => break,
            event = events.next() => match event {
                Some(DomainEvent::DeletionRefused { model, error }) => {
                    anyhow::bail!("the deletion of {model} was refused: {error:?}")
                }
                Some(DomainEvent::CreationRefused { model, error }) => {
                    anyhow::bail!("the creation of {model} was refused: {error:?}")
                }
                Some(event @ (DomainEvent::Deleted { .. } | DomainEvent::Created { .. })) => {
                    anyhow::bail!("without the database: {event:?}")
                }
                Some(_) => {}
                None => anyhow::bail!("events ended"),
            },
        }
    }
    let stored = alice.models().stored_models().await?;
    assert!(stored.iter().any(|m| m.id == doc && m.deleted_locally), "{stored:?}");
    assert_eq!(alice.state(), ConnectionState::Connected);

    pg.postgres.start_again()?;
    let (mut deleted, mut created) = (false, false);
    while !(deleted && created) {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(DomainEvent::Deleted { model }) if model == doc => deleted = true,
            Some(DomainEvent::Created { model }) if model == fresh => created = true,
            Some(
                event @ (DomainEvent::DeletionRefused { .. } | DomainEvent::CreationRefused { .. }),
            ) => {
                anyhow::bail!("refused: {event:?}")
            }
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    assert!(alice.models().stored_models().await?.iter().all(|m| m.id != doc), "forgotten");
    let bob = connected(&server, pg.path(), "bob").await?;
    assert!(bob.models().open(&doc).await.is_err(), "the server deleted it");
    let made = bob.models().open(&fresh).await?;
    assert_eq!(made.value().await?, json!({ "made": "in the outage" }));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_servers_database_is_down_goes_through_once_it_is_back()
-> anyhow::Result<()> {
    let Some(mut pg) = OnPostgres::start()? else { return Ok(()) };
    let server = pg.server().await?;
    let alice = connected(&server, pg.path(), "alice").await?;
    let doc = id("doc");
    create_confirmed(&alice, std::slice::from_ref(&doc), json!({ "n": 1 })).await?;

    // A restarted server has the model loaded (bob opened it) but has not yet seen alice's
    // replica: her next submission must read its owner from the database.
    server.stop().await?;
    let server = pg.server().await?;
    let bob = connected(&server, pg.path(), "bob").await?;
    let bobs = bob.models().open(&doc).await?;
    eventually("alice is connected again", || async {
        Ok(alice.state() == ConnectionState::Connected)
    })
    .await?;
    let model = alice.models().open(&doc).await?;
    pg.postgres.stop()?;

    // Refused `unavailable` again and again while the database is down: kept, not a fault,
    // and the connection stays.
    let mut events = alice.events();
    let change = model.root().set("n", json!(2)).await?;
    model.stored(change).await?;
    // A query and a history need the database too: "later", not "failed".
    let unavailable = |e: ClientError| match e {
        ClientError::Server(error) if error.code == ErrorCode::UNAVAILABLE => Ok(()),
        other => Err(anyhow::anyhow!("not unavailable: {other:?}")),
    };
    let query = alice.models().query("SELECT n FROM notes").await;
    unavailable(query.expect_err("no query without the database"))?;
    let history = alice.models().history(&doc).await;
    unavailable(history.expect_err("no history without the database"))?;
    let outage = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(outage);
    loop {
        tokio::select! {
            () = &mut outage => break,
            event = events.next() => match event {
                Some(event @ (DomainEvent::ServerFault { .. }
                | DomainEvent::ProtocolViolation { .. }
                | DomainEvent::ChangesRejected { .. }
                | DomainEvent::State(_))) => {
                    anyhow::bail!("while the database is down: {event:?}")
                }
                Some(_) => {}
                None => anyhow::bail!("events ended"),
            },
        }
    }

    // The database back, the change goes through on the same connection.
    pg.postgres.start_again()?;
    tokio::time::timeout(Duration::from_secs(20), model.acknowledged(change)).await??;
    assert_eq!(alice.state(), ConnectionState::Connected);
    eventually("bob sees the change", || async { Ok(bobs.value().await? == json!({ "n": 2.0 })) })
        .await?;
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_server_holds_damaged_stays_here_offline_and_syncs_once_repaired()
-> anyhow::Result<()> {
    let Some(mut pg) = OnPostgres::start()? else { return Ok(()) };
    let server = pg.server().await?;
    let alice = connected(&server, pg.path(), "alice").await?;
    let (victim, bystander) = (id("victim"), id("bystander"));
    create_confirmed(&alice, &[victim.clone(), bystander.clone()], json!({ "n": 1 })).await?;

    // The victim's snapshot is cut short in the database (kept aside to repair it later),
    // under a restarted server that has not loaded it.
    server.stop().await?;
    let cut = pg.postgres.sql(
        "CREATE TABLE kept AS SELECT * FROM snapshots WHERE model = 'victim'; \
         UPDATE snapshots SET snapshot = substring(snapshot FROM 1 FOR 3) WHERE model = 'victim'",
    )?;
    assert!(cut.ends_with("UPDATE 1") || cut.is_empty(), "{cut}");
    let server = pg.server().await?;
    eventually("alice is connected again", || async {
        Ok(alice.state() == ConnectionState::Connected)
    })
    .await?;

    // Opened from alice's store, the victim's resync is answered `internal`: a server
    // fault, not a protocol violation; the model stays open here and takes changes.
    let mut events = alice.events();
    let model = alice.models().open(&victim).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(DomainEvent::ServerFault { model, error }) if model == victim => {
                assert_eq!(error.code, ErrorCode::INTERNAL, "{error:?}");
                break;
            }
            Some(event @ DomainEvent::ProtocolViolation { .. }) => {
                anyhow::bail!("a fault taken for a violation: {event:?}")
            }
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    let change = model.root().set("n", json!(2)).await?;
    model.stored(change).await?;
    assert_eq!(model.value().await?, json!({ "n": 2.0 }));
    let stored = alice.models().stored_models().await?;
    assert!(stored.iter().any(|m| m.id == victim && m.has_pending_changes), "{stored:?}");
    // Only the victim: the bystander opens and syncs on the same connection.
    let other = alice.models().open(&bystander).await?;
    let change_there = other.root().set("n", json!(3)).await?;
    other.acknowledged(change_there).await?;
    assert_eq!(alice.state(), ConnectionState::Connected);

    // Repaired under the running server: the same connection tries the victim again after
    // its backoff and syncs the change made here.
    let mut events = alice.events();
    pg.postgres.sql(
        "UPDATE snapshots SET snapshot = kept.snapshot FROM kept \
         WHERE snapshots.domain = kept.domain AND snapshots.model = kept.model",
    )?;
    tokio::time::timeout(Duration::from_secs(20), model.acknowledged(change)).await??;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await
    {
        let reconnected = matches!(event, DomainEvent::State(_));
        assert!(!reconnected, "synced on the same connection, yet: {event:?}");
    }
    let bob = connected(&server, pg.path(), "bob").await?;
    assert_eq!(bob.models().open(&victim).await?.value().await?, json!({ "n": 2.0 }));
    server.stop().await?;
    Ok(())
}
