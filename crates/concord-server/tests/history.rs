//! Reading a model's history over a real server: pages bounded in operations and bytes,
//! checkpoints that bound what opening a version replays, read permission, deleted models,
//! and a history that survives a restart.

mod support;

use concord_ot::ReplicaId;
use concord_protocol::{
    ClientRequest, ErrorCode, ErrorReply, HistoryInfo, HistoryPage, HistoryStart, Permissions,
    ServerResponse, UserId,
};
use concord_server::{CollectionConfig, RunningServer};
use concord_testkit::wire::{Editor, WireClient};
use support::*;

/// Operations committed in the tests' histories.
const OPERATIONS: u64 = 300;
/// The server's checkpoint interval in these tests.
const EVERY: u64 = 40;

async fn server(dir: &std::path::Path) -> anyhow::Result<RunningServer> {
    start(dir, |config| {
        config.snapshot_every = EVERY;
        let private = CollectionConfig { world: Permissions::NONE, ..CollectionConfig::default() };
        config.collections.insert(collection("private"), private);
    })
    .await
}

/// `id` in `collection` with `count` one-letter insertions by alice.
async fn edited(
    client: &mut WireClient,
    collection_id: &str,
    id: &str,
    count: u64,
) -> anyhow::Result<()> {
    create_in(client, collection_id, id, "").await?;
    let snapshot = open(client, id).await?;
    let mut editor = Editor::new(model(id), ReplicaId(77), &snapshot);
    for n in 0..count {
        let letter = char::from(b'a' + (n % 26) as u8).to_string();
        let operation = insert(&snapshot.data, n as usize, &letter);
        commit(client, &mut editor, operation).await?;
    }
    Ok(())
}

async fn history_open(
    client: &mut WireClient,
    id: &str,
) -> anyhow::Result<Result<HistoryInfo, ErrorReply>> {
    Ok(match client.request(ClientRequest::HistoryOpen { model: model(id) }).await? {
        Ok(ServerResponse::HistoryOpened(info)) => Ok(info),
        Ok(other) => anyhow::bail!("{other:?}"),
        Err(error) => Err(error),
    })
}

async fn fetch(
    client: &mut WireClient,
    id: &str,
    start: HistoryStart,
    checkpoint: bool,
    max_operations: u32,
    max_bytes: u32,
) -> anyhow::Result<Result<HistoryPage, ErrorReply>> {
    let request = ClientRequest::HistoryFetch {
        model: model(id),
        start,
        checkpoint,
        max_operations,
        max_bytes,
    };
    Ok(match client.request(request).await? {
        Ok(ServerResponse::HistoryPage(page)) => Ok(page),
        Ok(other) => anyhow::bail!("{other:?}"),
        Err(error) => Err(error),
    })
}

support::on_each_store!(a_long_history_comes_in_bounded_pages_from_checkpoints);
async fn a_long_history_comes_in_bounded_pages_from_checkpoints() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let mut alice = connect(&server, "alice").await?;
    edited(&mut alice, "notes", "long", OPERATIONS).await?;
    let info = history_open(&mut alice, "long").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!((info.min_version, info.max_version), (0, OPERATIONS));
    assert_eq!(info.checkpoint_every, EVERY);

    // The whole log, page after page of at most 64 operations.
    let mut after = 0;
    let mut pages = 0;
    while after < OPERATIONS {
        let page = fetch(&mut alice, "long", HistoryStart::Version(after), false, 64, u32::MAX)
            .await?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(!page.operations.is_empty() && page.operations.len() <= 64);
        for (i, operation) in page.operations.iter().enumerate() {
            assert_eq!(operation.operation.version, after + 1 + i as u64);
            assert_eq!(operation.user, Some(UserId("alice".into())));
        }
        after += page.operations.len() as u64;
        pages += 1;
    }
    assert_eq!(pages, OPERATIONS.div_ceil(64));
    let end = fetch(&mut alice, "long", HistoryStart::Version(OPERATIONS), false, 64, u32::MAX)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(end.operations.is_empty());

    // A byte bound cuts a page short, never to nothing.
    let small =
        fetch(&mut alice, "long", HistoryStart::Version(0), false, 1_000, 200).await?.unwrap();
    assert!(
        !small.operations.is_empty() && small.operations.len() < 20,
        "{}",
        small.operations.len()
    );
    // And the server bounds what a client may ask for.
    let asked = fetch(&mut alice, "long", HistoryStart::Version(0), false, u32::MAX, u32::MAX)
        .await?
        .unwrap();
    assert!(asked.operations.len() as u32 <= concord_sync::host::MAX_HISTORY_PAGE_OPERATIONS);

    // Any version's checkpoint is less than an interval before it, and its text is the
    // first `checkpoint.version` letters.
    for version in [0, 1, 39, 40, 41, 123, 299, 300] {
        let page = fetch(&mut alice, "long", HistoryStart::Version(version), true, 1, u32::MAX)
            .await?
            .unwrap();
        let checkpoint = page.checkpoint.expect("a checkpoint");
        assert!(checkpoint.version <= version && version - checkpoint.version < EVERY);
        assert_eq!(body(&checkpoint.data).chars().count() as u64, checkpoint.version);
    }

    // Outside the history: a typed error.
    let past = fetch(&mut alice, "long", HistoryStart::Version(OPERATIONS + 1), true, 1, 1).await?;
    assert_eq!(past.unwrap_err().code, ErrorCode::INVALID_ARGUMENT);

    // It all survives a restart.
    let addr = server.addr();
    drop(alice);
    server.stop().await?;
    let server = start(dir.path(), |config| {
        config.bind = addr;
        config.snapshot_every = EVERY;
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    let page =
        fetch(&mut alice, "long", HistoryStart::Version(123), true, 100, u32::MAX).await?.unwrap();
    assert_eq!(page.checkpoint.map(|c| c.version), Some(120));
    assert_eq!(page.operations.first().map(|o| o.operation.version), Some(121));
    Ok(())
}

support::on_each_store!(history_needs_read_permission_and_a_model_that_exists);
async fn history_needs_read_permission_and_a_model_that_exists() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let mut alice = connect(&server, "alice").await?;
    let mut bob = connect(&server, "bob").await?;
    edited(&mut alice, "private", "secret", 3).await?;
    // Bob may not read alice's model: he is told what he would be told of no model at all.
    let refused = history_open(&mut bob, "secret").await?.unwrap_err();
    assert_eq!(refused.code, ErrorCode::MODEL_NOT_FOUND);
    let refused =
        fetch(&mut bob, "secret", HistoryStart::Version(0), true, 10, 1_000).await?.unwrap_err();
    assert_eq!(refused.code, ErrorCode::MODEL_NOT_FOUND);
    let absent = history_open(&mut bob, "never-was").await?.unwrap_err();
    assert_eq!(absent.code, ErrorCode::MODEL_NOT_FOUND);
    // Alice may.
    assert_eq!(history_open(&mut alice, "secret").await?.unwrap().max_version, 3);

    // A deleted model has no history.
    match alice
        .request(ClientRequest::DeleteModel { model: model("secret"), creation: None })
        .await?
    {
        Ok(ServerResponse::Done) => {}
        other => anyhow::bail!("deleting: {other:?}"),
    }
    let gone = history_open(&mut alice, "secret").await?.unwrap_err();
    assert_eq!(gone.code, ErrorCode::MODEL_NOT_FOUND);
    let gone =
        fetch(&mut alice, "secret", HistoryStart::Version(0), true, 10, 1_000).await?.unwrap_err();
    assert_eq!(gone.code, ErrorCode::MODEL_NOT_FOUND);
    Ok(())
}
