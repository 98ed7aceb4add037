//! The server's store over a real server: a store file damaged since it was written is
//! refused at start, untouched, until it is restored; a truncated or foreign file is refused
//! rather than replaced by an empty store; and the data directory and store are private. The
//! tests of the file are the embedded store's; on PostgreSQL, a record damaged in the
//! database fails the model it belongs to, and only it.

mod support;

use std::path::Path;

use concord_ot::ReplicaId;
use concord_protocol::{ErrorCode, Timestamp};
use concord_server::{
    Damage, MaintenanceError, Server, ServerConfig, ServerError, StoreError, StoreLocation,
    check_store, drop_damaged_model, rebuild_snapshot,
};
use concord_testkit::wire::Editor;
use support::*;

/// The store's file in a data directory.
const STORE_FILE: &str = "concord.redb";

/// Flips one bit in every copy of `text` in `file` (redb may still hold older copies of a
/// record in free pages); returns how many it found.
fn flip_every_copy(file: &Path, text: &str) -> anyhow::Result<usize> {
    let mut bytes = std::fs::read(file)?;
    let needle = text.as_bytes();
    let mut found = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        let start = at + offset;
        bytes[start + needle.len() / 2] ^= 0x01;
        found += 1;
        at = start + needle.len();
    }
    std::fs::write(file, bytes)?;
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_file_refuses_the_store_untouched_until_it_is_restored()
-> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    victim_and_bystander(temp.path()).await?;
    let file = temp.path().join(STORE_FILE);
    let backup = std::fs::read(&file)?;
    assert!(flip_every_copy(&file, "the victim's text, soon damaged")? > 0, "the text is stored");
    let damaged = std::fs::read(&file)?;

    // Refused whole at start, by redb's check of every page: a plain open would trust the
    // file, and damage in redb's own structures could then abort the process.
    let error = refused_store(temp.path()).await;
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("integrity check") && message.contains("backup"), "{message}");
    assert!(std::fs::read(&file)? == damaged, "the refused file was written to");

    // Restored from the backup copy, the store serves both models again.
    std::fs::write(&file, backup)?;
    let server = start(temp.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    assert_eq!(body(&open(&mut alice, "victim").await?.data), "the victim's text, soon damaged");
    assert_eq!(body(&open(&mut alice, "bystander").await?.data), "the bystander's text");
    server.stop().await?;
    Ok(())
}

/// Creates the models `victim` and `bystander` on a server on `dir`, then stops it.
async fn victim_and_bystander(dir: &Path) -> anyhow::Result<()> {
    let server = start(dir, |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "victim", "the victim's text, soon damaged").await?;
    create(&mut alice, "bystander", "the bystander's text").await?;
    server.stop().await?;
    Ok(())
}

/// With `victim` damaged on `dir`'s store: a server started on it refuses to serve `victim`,
/// to anyone, and serves `bystander`, which takes and keeps changes.
async fn the_victim_is_refused_and_the_bystander_serves_on(dir: &Path) -> anyhow::Result<()> {
    let server = start(dir, |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    let refused = try_open(&mut alice, "victim").await?.expect_err("a damaged model is not served");
    assert_eq!(refused.code, ErrorCode::INTERNAL);
    assert!(refused.message.contains("corrupt"), "{}", refused.message);
    // Asked again, from another connection, it is still refused: nothing damaged is served.
    let mut bob = connect(&server, "bob").await?;
    assert!(try_open(&mut bob, "victim").await?.is_err());

    // The other model opens, takes changes and keeps them.
    let snapshot = open(&mut alice, "bystander").await?;
    assert_eq!(body(&snapshot.data), "the bystander's text");
    let mut editor = Editor::new(model("bystander"), ReplicaId(1), &snapshot);
    let change = insert(&snapshot.data, 0, "still ");
    commit(&mut alice, &mut editor, change).await?;
    let snapshot = open(&mut bob, "bystander").await?;
    assert_eq!(body(&snapshot.data), "still the bystander's text");
    server.stop().await?;
    Ok(())
}

/// On PostgreSQL, which keeps no checksums of its own, the records' checksums are all there
/// is: the victim's snapshot, cut short in the database, does not decode, and only the victim
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_in_postgresql_fails_that_model_and_the_others_serve_on()
-> anyhow::Result<()> {
    support::on_postgres(async {
        let temp = tempfile::tempdir()?;
        victim_and_bystander(temp.path()).await?;
        let damaged = sql_for_dir(
            temp.path(),
            "WITH cut AS (UPDATE snapshots SET snapshot = substring(snapshot FROM 1 FOR 3) \
             WHERE model = 'victim' RETURNING 1) SELECT count(*) FROM cut",
        );
        assert_eq!(damaged, "1", "the victim's snapshot is stored");
        the_victim_is_refused_and_the_bystander_serves_on(temp.path()).await
    })
    .await
}

/// The operator's way out when there is no backup: `concord store check` names the model a
/// damaged record keeps from being served, `drop-model` deletes it, and its collaborators are
/// then told it was deleted while the others serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_damaged_in_postgresql_is_found_by_a_check_and_dropped_as_deleted()
-> anyhow::Result<()> {
    support::on_postgres(async {
        let temp = tempfile::tempdir()?;
        victim_and_bystander(temp.path()).await?;
        let damaged = "UPDATE models SET record = decode('00', 'hex') WHERE model = 'victim'";
        sql_for_dir(temp.path(), damaged);
        let location = location_on_postgres(temp.path());

        let check = check_store(&location, |_| {}).await?;
        assert_eq!(check.models, 2);
        let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
        assert_eq!(damaged.model, "victim");
        assert_eq!(damaged.kind, Damage::Model);
        assert!(damaged.damage.contains("record"), "{damaged:?}");
        // A refused drop fences nobody: a server running meanwhile still commits.
        let server = start(temp.path(), |_| {}).await?;
        let bystander = model("bystander");
        let refused = drop_damaged_model(&location, "test/main", &bystander, Timestamp(9)).await;
        assert!(matches!(refused, Err(MaintenanceError::NotDamaged { .. })), "{refused:?}");
        let mut alice = connect(&server, "alice").await?;
        let snapshot = open(&mut alice, "bystander").await?;
        let mut editor = Editor::new(bystander.clone(), ReplicaId(1), &snapshot);
        commit(&mut alice, &mut editor, insert(&snapshot.data, 0, "still ")).await?;
        server.stop().await?;
        drop_damaged_model(&location, "test/main", &model("victim"), Timestamp(9)).await?;
        assert_eq!(check_store(&location, |_| {}).await?.damaged, []);

        let server = start(temp.path(), |_| {}).await?;
        let mut alice = connect(&server, "alice").await?;
        // Gone, as any deleted model (clients drop it), no longer `internal`.
        let gone = try_open(&mut alice, "victim").await?.expect_err("the victim was dropped");
        assert_eq!(gone.code, ErrorCode::MODEL_NOT_FOUND, "{gone:?}");
        let text = "still the bystander's text";
        assert_eq!(body(&open(&mut alice, "bystander").await?.data), text);
        server.stop().await?;
        Ok(())
    })
    .await
}

/// A model whose snapshot is gone from PostgreSQL is found by a check and rebuilt from its
/// checkpoint by `rebuild-snapshot`: a server then serves it as it was, edits included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_lost_in_postgresql_is_rebuilt_from_its_checkpoint() -> anyhow::Result<()> {
    support::on_postgres(async {
        let temp = tempfile::tempdir()?;
        victim_and_bystander(temp.path()).await?;
        let server = start(temp.path(), |_| {}).await?;
        let mut alice = connect(&server, "alice").await?;
        let snapshot = open(&mut alice, "victim").await?;
        let mut editor = Editor::new(model("victim"), ReplicaId(1), &snapshot);
        commit(&mut alice, &mut editor, insert(&snapshot.data, 0, "kept: ")).await?;
        server.stop().await?;
        let lost = sql_for_dir(
            temp.path(),
            "WITH lost AS (DELETE FROM snapshots WHERE model = 'victim' RETURNING 1) \
             SELECT count(*) FROM lost",
        );
        assert_eq!(lost, "1", "the victim's snapshot was stored");
        let location = location_on_postgres(temp.path());

        let check = check_store(&location, |_| {}).await?;
        let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
        assert_eq!((damaged.model.as_str(), damaged.kind), ("victim", Damage::Snapshot));
        assert!(damaged.damage.contains("snapshot is missing"), "{damaged:?}");
        let rebuilt = rebuild_snapshot(&location, "test/main", &model("victim")).await?;
        // The server wrote its last state as a snapshot, and so as a checkpoint, when it
        // stopped.
        assert_eq!((rebuilt.checkpoint, rebuilt.replayed), (1, 0), "{rebuilt:?}");
        assert_eq!(check_store(&location, |_| {}).await?.damaged, []);

        let server = start(temp.path(), |_| {}).await?;
        let mut bob = connect(&server, "bob").await?;
        let victim = open(&mut bob, "victim").await?;
        assert_eq!(
            (victim.version, body(&victim.data)),
            (1, "kept: the victim's text, soon damaged".into())
        );
        assert_eq!(body(&open(&mut bob, "bystander").await?.data), "the bystander's text");
        server.stop().await?;
        Ok(())
    })
    .await
}

/// The store of the servers on `dir`, as `concord store` finds it (within `on_postgres`).
fn location_on_postgres(dir: &Path) -> StoreLocation {
    let cluster = support::postgres_cluster().expect("within on_postgres");
    let store = Some(cluster.url_for_dir(dir).into());
    StoreLocation { data_dir: dir.to_owned(), store, indexes: Default::default() }
}

/// Runs `sql` in the PostgreSQL database of the servers on `dir` (within `on_postgres`);
/// returns what it printed.
fn sql_for_dir(dir: &Path, sql: &str) -> String {
    let cluster = support::postgres_cluster().expect("within on_postgres");
    cluster.sql_in(&support::postgres::TestPostgres::database_for_dir(dir), sql)
}

async fn refused_store(dir: &Path) -> StoreError {
    match Server::bind(ServerConfig::development(dir, SECRET)).await {
        Err(ServerError::Store(error)) => error,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a server started on {}", dir.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_foreign_store_file_is_refused_not_replaced() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = start(temp.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "kept").await?;
    server.stop().await?;
    let file = temp.path().join(STORE_FILE);
    let backup = std::fs::read(&file)?;

    std::fs::File::options().write(true).open(&file)?.set_len(0)?;
    let error = refused_store(temp.path()).await;
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("empty") && message.contains("backup"), "{message}");
    assert_eq!(std::fs::metadata(&file)?.len(), 0, "the truncated file was written to");

    std::fs::write(&file, b"#!/bin/sh\necho this is not a store\n")?;
    let error = refused_store(temp.path()).await;
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");

    // Restored from the backup copy, the store serves what it held.
    std::fs::write(&file, backup)?;
    let server = start(temp.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    assert_eq!(body(&open(&mut alice, "doc").await?.data), "kept");
    server.stop().await?;
    Ok(())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_store_are_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("data");
    let server = start(&dir, |_| {}).await?;
    let mode = |path: &Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&dir)?, 0o700, "the data directory");
    assert_eq!(mode(&dir.join(STORE_FILE))?, 0o600, "the store file");
    server.stop().await?;
    Ok(())
}
