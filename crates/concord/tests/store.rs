//! `concord store` on the data directory of a real `concord serve`: refused while the server
//! runs and where there is no store, a clean check once it stopped, and a model that is not
//! damaged is never dropped. (Damaged records, and dropping them, are tested in the server's
//! own tests, which can damage one record without failing the whole file.) A backup asked of
//! the running server with SIGUSR1 serves on its own, and a store copied into PostgreSQL
//! serves from there.

mod common;
#[path = "../../concord-server/tests/support/postgres.rs"]
mod postgres;

use std::path::Path;

use common::{concord, connect, create_model, open_model, run, serve, text_document, token};
use concord_ot::{Document, IdGenerator, ReplicaId, Value};
use concord_protocol::ModelId;

/// Runs `concord store <args> --data-dir <data_dir>`: its exit code, stdout and stderr.
fn store(data_dir: &Path, args: &[&str]) -> anyhow::Result<(Option<i32>, String, String)> {
    let output = run(concord().arg("store").args(args).arg("--data-dir").arg(data_dir))?;
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok((output.status.code(), text(output.stdout), text(output.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_checked_once_its_server_stopped_and_a_sound_model_is_never_dropped_or_rebuilt()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let (code, _, stderr) = store(&data_dir, &["check"])?;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("there is no store in"), "{stderr}");
    assert!(!data_dir.exists(), "a check created the data directory");

    let mut server = serve(&data_dir, &[])?;
    let mut alice = connect(&server.url("acme", "docs"), &token(&data_dir, "alice")?).await?;
    let note = ModelId::new("note")?;
    create_model(&mut alice, &note, text_document(1)).await?;
    let (code, _, stderr) = store(&data_dir, &["check"])?;
    assert_eq!(code, Some(1), "checked while its server runs");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    drop(alice);
    server.stop()?;

    let (code, stdout, stderr) = store(&data_dir, &["check"])?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("1 models read whole, none damaged"), "{stdout}");
    for command in ["drop-model", "rebuild-snapshot"] {
        let note = [command, "--domain", "acme/docs", "--model", "note"];
        let (code, _, stderr) = store(&data_dir, &note)?;
        assert_eq!(code, Some(1), "{command}");
        assert!(stderr.contains("is not damaged"), "{command}: {stderr}");
    }

    let server = serve(&data_dir, &[])?;
    let mut alice = connect(&server.url("acme", "docs"), &token(&data_dir, "alice")?).await?;
    assert_eq!(
        open_model(&mut alice, &note).await?.snapshot.version,
        0,
        "the note is still served"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_backs_up_the_running_server_into_a_store_that_serves_on_its_own()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = serve(&data_dir, &[])?;
    let mut alice = connect(&server.url("acme", "docs"), &token(&data_dir, "alice")?).await?;
    let note = ModelId::new("note")?;
    create_model(&mut alice, &note, text_document(1)).await?;
    server.signal("USR1")?;
    let logged = server.wait_for_log("SIGUSR1: backed up the store")?;
    let backups: Vec<_> = std::fs::read_dir(data_dir.join("backups"))?.collect::<Result<_, _>>()?;
    let [backup] = backups.as_slice() else { panic!("{backups:?}\n{logged}") };
    assert!(logged.contains(&*backup.file_name().to_string_lossy()), "{logged}");
    drop(alice);
    drop(server);

    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored)?;
    std::fs::copy(backup.path(), restored.join("concord.redb"))?;
    std::fs::copy(data_dir.join("secret"), restored.join("secret"))?;
    let server = serve(&restored, &[])?;
    let mut bob = connect(&server.url("acme", "docs"), &token(&restored, "bob")?).await?;
    assert_eq!(open_model(&mut bob, &note).await?.snapshot.version, 0, "the note was backed up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_come_on_schedule_and_only_the_newest_are_kept() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = serve(&data_dir, &["--backup-every-secs", "1", "--backup-keep", "2"])?;
    server.wait_for_log("scheduled: backed up the store")?;
    drop(server);

    // Asked three times (no schedule to race with), two are kept: the newest.
    let server = serve(&data_dir, &["--backup-keep", "2"])?;
    for asked in 1..=3 {
        server.signal("USR1")?;
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while server.log().matches("SIGUSR1: backed up the store").count() < asked {
            assert!(std::time::Instant::now() < deadline, "{}", server.log());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Names are in milliseconds: the next one is another file.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    server.wait_for_log("deleted the oldest backups")?;
    let mut kept: Vec<String> = std::fs::read_dir(data_dir.join("backups"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    kept.sort();
    // The scheduled one and the first asked for are gone.
    assert_eq!(kept.len(), 2, "{kept:?}\n{}", server.log());
    let log = server.log();
    let newest: Vec<&str> =
        log.lines().filter(|line| line.contains("SIGUSR1: backed up the store")).skip(1).collect();
    for name in &kept {
        assert!(newest.iter().any(|line| line.contains(name.as_str())), "{name} kept:\n{log}");
    }
    Ok(())
}

/// `concord store copy`: a stopped server's embedded store, copied into an empty PostgreSQL
/// database, is served from there by `concord serve --store`; a second copy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_copied_into_postgresql_serves_from_there() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let mut ids = IdGenerator::new(ReplicaId(1), 0);
    let json = serde_json::json!({ "text": "moved to PostgreSQL", "n": 3 });
    let data = Document::new(Value::from_json(&json, &mut ids)?)?;
    let note = ModelId::new("note")?;
    let mut server = serve(&data_dir, &[])?;
    let mut alice = connect(&server.url("acme", "docs"), &token(&data_dir, "alice")?).await?;
    create_model(&mut alice, &note, data.clone()).await?;
    drop(alice);
    server.stop()?;

    let url = cluster.url("copied_by_the_binary");
    let (code, stdout, stderr) = store(&data_dir, &["copy", "--to", &url])?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("records from") && stdout.contains("--store"), "{stdout}");

    let mut server = serve(&data_dir, &["--store", &url])?;
    let mut bob = connect(&server.url("acme", "docs"), &token(&data_dir, "bob")?).await?;
    let opened = open_model(&mut bob, &note).await?;
    assert_eq!((opened.snapshot.version, opened.snapshot.data), (0, data));
    drop(bob);
    server.stop()?;
    let (code, _, stderr) = store(&data_dir, &["copy", "--to", &url])?;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("already holds a Concord store"), "{stderr}");
    Ok(())
}
