//! Backing up a running server's store (`Backups::write`, SIGUSR1 for `concord serve`): the
//! copy is a consistent state holding everything acknowledged before it began, commits made
//! while it is written are acknowledged and kept, and a server started on the copy alone
//! serves that state. On PostgreSQL a backup is refused, pointing at its own tools.

mod support;

use concord_ot::ReplicaId;
use concord_server::StoreError;
use concord_testkit::wire::Editor;
use support::*;

/// The edits a client makes while the backup is written.
const EDITS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_a_client_edits_opens_alone_with_a_consistent_state()
-> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = start(temp.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "note", "").await?;
    let snapshot = open(&mut alice, "note").await?;
    let mut editor = Editor::new(model("note"), ReplicaId(1), &snapshot);
    let change = insert(&snapshot.data, 0, "x");
    assert_eq!(commit(&mut alice, &mut editor, change).await?, 1);

    // One `x` per version, so that any state of the model says whether it is whole.
    let editing = tokio::spawn(async move {
        for _ in 1..EDITS {
            let change = insert(&editor.document, 0, "x");
            commit(&mut alice, &mut editor, change).await?;
        }
        anyhow::Ok((alice, editor))
    });
    let backup = server.backups().write().await?;
    let (mut alice, mut editor) = editing.await??;
    assert!(backup.path.starts_with(temp.path().join("backups")), "{backup:?}");
    assert_eq!(backup.bytes, std::fs::metadata(&backup.path)?.len());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup.path)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a backup is private");
    }
    let change = insert(&editor.document, 0, "after");
    commit(&mut alice, &mut editor, change).await?;
    server.stop().await?;

    // The copy alone, as `concord.redb` of a new data dir: a whole state from during the
    // edits, with at least the first one.
    let restored = tempfile::tempdir()?;
    std::fs::copy(&backup.path, restored.path().join("concord.redb"))?;
    let server = start(restored.path(), |_| {}).await?;
    let mut bob = connect(&server, "bob").await?;
    let copy = open(&mut bob, "note").await?;
    assert!((1..=EDITS as u64).contains(&copy.version), "version {}", copy.version);
    assert_eq!(body(&copy.data), "x".repeat(copy.version as usize));
    server.stop().await?;

    // The store itself kept every edit, those made during the backup and after it.
    let server = start(temp.path(), |_| {}).await?;
    let mut bob = connect(&server, "bob").await?;
    let live = open(&mut bob, "note").await?;
    assert_eq!(live.version, EDITS as u64 + 1);
    assert_eq!(body(&live.data), format!("after{}", "x".repeat(EDITS)));
    server.stop().await?;

    // A stopped server's handle backs up nothing.
    let stopped = server_backups_after_stop(temp.path()).await?;
    assert!(matches!(stopped, Err(StoreError::Unavailable(_))), "{stopped:?}");
    Ok(())
}

async fn server_backups_after_stop(
    dir: &std::path::Path,
) -> anyhow::Result<Result<concord_server::Backup, StoreError>> {
    let server = start(dir, |_| {}).await?;
    let backups = server.backups().clone();
    server.stop().await?;
    Ok(backups.write().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_is_not_backed_up_by_the_server() -> anyhow::Result<()> {
    support::on_postgres(async {
        let temp = tempfile::tempdir()?;
        let server = start(temp.path(), |_| {}).await?;
        let refused = server.backups().write().await;
        match &refused {
            Err(error @ StoreError::NotSupported(_)) => {
                assert!(error.to_string().contains("pg_dump"), "{error}");
            }
            other => panic!("a PostgreSQL store was backed up: {other:?}"),
        }
        assert!(!temp.path().join("backups").exists());
        server.stop().await?;
        Ok(())
    })
    .await
}

/// Pruning keeps the newest backups the server wrote and touches nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_the_newest_backups_and_nothing_else_goes() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let server = start(temp.path(), |_| {}).await?;
    let backups = server.backups().clone();
    let written = backups.write().await?;
    let dir = backups.dir();
    for name in ["concord-1.redb", "concord-2.redb", "concord-x.redb", "notes.txt"] {
        std::fs::write(dir.join(name), "kept or not")?;
    }
    let deleted = backups.prune(1)?;
    assert_eq!(deleted, [dir.join("concord-1.redb"), dir.join("concord-2.redb")]);
    let mut left: Vec<_> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    left.sort();
    let mut expected =
        vec![written.path.clone(), dir.join("concord-x.redb"), dir.join("notes.txt")];
    expected.sort();
    assert_eq!(left, expected);
    assert!(backups.prune(1)?.is_empty(), "nothing more to delete");
    server.stop().await?;
    Ok(())
}
