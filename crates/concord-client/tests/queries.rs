//! Queries end to end over a real server: only models the user may read appear (and count),
//! indexed queries read their index range and follow changes, paging stays stable while
//! models change, and the same query answered by the server and by the offline store agrees.

mod support;

use std::path::Path;

use concord_client::{
    ClientError, Domain, ModelId, PermissionGrants, Permissions, QueryData, QueryMode, QueryOrigin,
    QueryResult,
};
use concord_server::{RunningServer, Server, ServerConfig};
use serde_json::json;
use support::*;

/// A development server whose `notes` collection indexes `status` and `rank`.
async fn indexed_server(dir: &Path) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    let paths = ["status", "rank"].map(|p| concord_query::Path::parse(p).unwrap());
    config.indexes.insert(notes(), paths.to_vec());
    Ok(Server::spawn(config).await?)
}

/// Creates each `(id, data)` in `notes` and waits until the server has them all.
async fn create_all(
    domain: &Domain,
    models: &[(ModelId, serde_json::Value)],
) -> anyhow::Result<()> {
    for (id, data) in models {
        create_confirmed(domain, std::slice::from_ref(id), data.clone()).await?;
    }
    Ok(())
}

/// An indexed path as the server names it.
fn path(text: &str) -> String {
    concord_query::Path::parse(text).unwrap().to_string()
}

fn ids(result: &QueryResult) -> Vec<String> {
    result.rows.iter().map(|r| r.model.as_str().to_owned()).collect()
}

/// Sets `key` of model `id` to `value` and waits for the server's acknowledgement.
async fn set(
    domain: &Domain,
    id: &ModelId,
    key: &str,
    value: serde_json::Value,
) -> anyhow::Result<()> {
    let model = domain.models().open(id).await?;
    let change = model.root().set(key, value).await?;
    model.acknowledged(change).await?;
    Ok(())
}

#[tokio::test]
async fn another_users_private_models_never_appear_not_even_in_the_count() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = indexed_server(dir.path()).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let models: Vec<(ModelId, serde_json::Value)> =
        (0..5).map(|i| (id(&format!("n{i}")), json!({ "status": "open", "rank": i }))).collect();
    create_all(&alice, &models).await?;
    let private = PermissionGrants {
        override_collection: true,
        world: Permissions::NONE,
        ..Default::default()
    };
    for (model, _) in &models[3..] {
        alice.models().set_permissions(model, &private).await?;
    }
    for text in [
        "SELECT * FROM notes",
        "SELECT * FROM notes WHERE status = 'open'",
        "SELECT rank FROM notes WHERE rank >= 0 ORDER BY rank DESC LIMIT 2",
    ] {
        let seen = bob.models().query(text).await?;
        assert_eq!(seen.origin, QueryOrigin::Server);
        assert_eq!(seen.total, 3, "{text}");
        assert!(ids(&seen).iter().all(|m| ["n0", "n1", "n2"].contains(&m.as_str())), "{text}");
        assert_eq!(alice.models().query(text).await?.total, 5, "{text}");
    }
    Ok(())
}

#[tokio::test]
async fn an_indexed_query_reads_its_index_range_and_follows_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = indexed_server(dir.path()).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let models: Vec<(ModelId, serde_json::Value)> = (0..20)
        .map(|i| {
            let status = if i % 5 == 0 { "done" } else { "open" };
            (id(&format!("t{i:02}")), json!({ "status": status, "rank": i, "title": "x" }))
        })
        .collect();
    create_all(&alice, &models).await?;
    let done = "SELECT * FROM notes WHERE status = 'done'";
    let found = alice.models().query(done).await?;
    assert_eq!(ids(&found), ["t00", "t05", "t10", "t15"]);
    // Only the index's range was examined, not the 20 models.
    assert_eq!((found.scanned, found.index), (4, Some(path("status"))));
    // The index follows a commit.
    set(&alice, &id("t03"), "status", json!("done")).await?;
    let found = alice.models().query(done).await?;
    assert_eq!(ids(&found), ["t00", "t03", "t05", "t10", "t15"]);
    assert_eq!(found.scanned, 5);
    // A range with ORDER BY and LIMIT on an index.
    let top = alice
        .models()
        .query("SELECT rank FROM notes WHERE rank >= 10 ORDER BY rank DESC LIMIT 3")
        .await?;
    assert_eq!(ids(&top), ["t19", "t18", "t17"]);
    assert_eq!((top.total, top.scanned, top.index), (10, 10, Some(path("rank"))));
    // Not indexed: the whole collection.
    let scan = alice.models().query("SELECT * FROM notes WHERE title = 'x'").await?;
    assert_eq!((scan.total, scan.scanned, scan.index), (20, 20, None));
    Ok(())
}

#[tokio::test]
async fn paging_stays_stable_while_models_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = indexed_server(dir.path()).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let models: Vec<(ModelId, serde_json::Value)> =
        (0..25).map(|i| (id(&format!("p{i:02}")), json!({ "rank": i, "note": "" }))).collect();
    create_all(&alice, &models).await?;
    let mut seen = Vec::new();
    for page in 0..3 {
        let text = format!("SELECT rank FROM notes ORDER BY rank LIMIT 10 OFFSET {}", page * 10);
        let result = alice.models().query(&text).await?;
        assert_eq!(result.total, 25);
        seen.extend(ids(&result));
        // Between pages, others edit models already seen and yet to come.
        for i in [page * 10 + 2, page * 10 + 14] {
            if i < 25 {
                set(&bob, &id(&format!("p{i:02}")), "note", json!(format!("edit {page}"))).await?;
            }
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected, "every model once, in order");
    Ok(())
}

/// A result's rows, times included.
#[allow(clippy::type_complexity)]
fn comparable(result: &QueryResult) -> Vec<(String, String, u64, i64, i64, QueryData)> {
    let rows = result.rows.iter();
    rows.map(|r| {
        let (created, modified) = (r.created_at.0, r.modified_at.0);
        (
            r.model.to_string(),
            r.collection.to_string(),
            r.version,
            created,
            modified,
            r.data.clone(),
        )
    })
    .collect()
}

const STATUSES: [&str; 3] = ["open", "done", "late"];

#[tokio::test]
async fn the_same_query_offline_and_online_gives_the_same_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = indexed_server(dir.path()).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let models: Vec<(ModelId, serde_json::Value)> = (0..12)
        .map(|i| {
            let tags = if i % 2 == 0 { json!(["a", "b"]) } else { json!([]) };
            let data = json!({ "status": STATUSES[i % 3], "rank": i, "tags": tags });
            (id(&format!("o{i:02}")), data)
        })
        .collect();
    create_all(&alice, &models).await?;
    set(&alice, &id("o04"), "rank", json!(40)).await?;
    let queries = [
        "SELECT * FROM notes",
        "SELECT rank, tags[0] FROM notes WHERE status IN ('open', 'late') ORDER BY rank DESC",
        "SELECT * FROM notes WHERE rank > 3 AND NOT status = 'done' ORDER BY status, rank LIMIT 4 OFFSET 1",
        "SELECT status FROM notes WHERE tags[1] LIKE 'b%' OR rank < 2",
    ];
    for text in queries {
        let online = alice.models().query_with(text, QueryMode::Server).await?;
        let offline = alice.models().query_with(text, QueryMode::Store).await?;
        assert_eq!((online.origin, offline.origin), (QueryOrigin::Server, QueryOrigin::Store));
        // The times too: the server's creation time of models created here was copied into
        // the store when the server confirmed each creation.
        assert_eq!(comparable(&online), comparable(&offline), "{text}");
        assert_eq!(online.total, offline.total, "{text}");
    }
    // Offline, a query is answered by the store, with local changes applied.
    alice.disconnect().await?;
    let model = alice.models().open(&id("o01")).await?;
    model.root().set("rank", json!(100)).await?;
    let top = alice.models().query("SELECT rank FROM notes ORDER BY rank DESC LIMIT 1").await?;
    assert_eq!(top.origin, QueryOrigin::Store);
    assert_eq!(ids(&top), ["o01"]);
    let QueryData::Paths(values) = &top.rows[0].data else { panic!("paths selected") };
    assert_eq!(values[0].as_ref().map(|v| v.to_json()), Some(json!(100.0)));
    assert!(matches!(
        alice.models().query_with("SELECT * FROM notes", QueryMode::Server).await,
        Err(ClientError::Offline)
    ));
    Ok(())
}

#[tokio::test]
async fn a_malformed_query_fails_with_its_position() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = indexed_server(dir.path()).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let Err(ClientError::Query(error)) = alice.models().query("SELECT * FROM notes\nWHERE ;").await
    else {
        panic!("a malformed query was accepted")
    };
    assert_eq!(error.position().map(|p| p.line), Some(2), "{error}");
    Ok(())
}
