//! Queries at the protocol level over a real server: typed errors for malformed queries (with
//! their position), for queries past the scan limit and for unknown collections, and an
//! index declared after models were stored, built when the server starts again.

mod support;

use concord_ot::{DiscreteOperation, Document, Operation, OperationKind, PathSegment, ReplicaId};
use concord_protocol::{ClientRequest, ErrorCode, ErrorReply, QueryPage, ServerResponse};
use concord_query::Path;
use concord_server::QueryLimits;
use concord_testkit::wire::{Editor, WireClient};
use support::*;

/// Replaces `delete_count` chars at `index` of the document's `body` with `insert`.
fn splice(document: &Document, index: usize, delete_count: usize, insert: &str) -> Operation {
    let id = document.element_at(&[PathSegment::Key("body".into())]).unwrap();
    let kind = OperationKind::StringSplice { index, delete_count, insert: insert.into() };
    DiscreteOperation::new(id, kind).into()
}

async fn query(
    client: &mut WireClient,
    text: &str,
) -> anyhow::Result<Result<QueryPage, ErrorReply>> {
    Ok(match client.request(ClientRequest::Query { query: text.into() }).await? {
        Ok(ServerResponse::QueryResult(page)) => Ok(page),
        Ok(other) => anyhow::bail!("{other:?}"),
        Err(error) => Err(error),
    })
}

support::on_each_store!(bad_queries_get_typed_errors);
async fn bad_queries_get_typed_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |config| {
        config.query = QueryLimits { max_scanned: 5, ..QueryLimits::default() };
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    let error = query(&mut alice, "SELECT * FROM notes\n  WHERE body = = 1").await?.unwrap_err();
    assert_eq!(error.code, ErrorCode::INVALID_QUERY, "{error:?}");
    assert_eq!(error.details.get("line").map(String::as_str), Some("2"), "{error:?}");
    assert!(error.details.contains_key("column"), "{error:?}");
    let error = query(&mut alice, "SELECT * FROM a JOIN b ON a.x = b.x").await?.unwrap_err();
    assert_eq!(error.code, ErrorCode::INVALID_QUERY, "{error:?}");
    for i in 0..6 {
        create(&mut alice, &format!("m{i}"), "text").await?;
    }
    let error = query(&mut alice, "SELECT * FROM notes WHERE body = 'text'").await?.unwrap_err();
    assert_eq!(error.code, ErrorCode::QUERY_SCAN_LIMIT, "{error:?}");
    // The connection goes on.
    let page = query(&mut alice, "SELECT * FROM nothing").await?.unwrap();
    assert_eq!((page.total, page.scanned), (0, 0));
    server.stop().await?;

    let server = start(dir.path(), |config| {
        config.auto_create_collections = false;
        config.collections.insert(collection("notes"), Default::default());
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    let error = query(&mut alice, "SELECT * FROM nothing").await?.unwrap_err();
    assert_eq!(error.code, ErrorCode::COLLECTION_NOT_FOUND, "{error:?}");
    Ok(())
}

support::on_each_store!(an_index_declared_later_is_built_when_the_server_starts);
async fn an_index_declared_later_is_built_when_the_server_starts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let server = start(dir.path(), |_| {}).await?;
        let mut alice = connect(&server, "alice").await?;
        // More models than a PostgreSQL store reads at once while it builds an index.
        for i in 0..70 {
            create(&mut alice, &format!("m{i}"), if i % 35 == 0 { "x" } else { "y" }).await?;
        }
        // m1's body goes from "y" to "x" in two operations, which follow its snapshot.
        let snapshot = open(&mut alice, "m1").await?;
        let mut editor = Editor::new(model("m1"), ReplicaId(1), &snapshot);
        let delete = splice(&editor.document, 0, 1, "");
        commit(&mut alice, &mut editor, delete).await?;
        let insert = splice(&editor.document, 0, 0, "x");
        assert_eq!(commit(&mut alice, &mut editor, insert).await?, 2);
        let page = query(&mut alice, "SELECT * FROM notes WHERE body = 'x'").await?.unwrap();
        assert_eq!((page.total, page.scanned, page.index), (3, 70, None));
        server.stop().await?;
    }
    let server = start(dir.path(), |config| {
        config.indexes.insert(collection("notes"), vec![Path::parse("body").unwrap()]);
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    let page = query(&mut alice, "SELECT * FROM notes WHERE body = 'x'").await?.unwrap();
    let ids: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(ids, ["m0", "m1", "m35"]);
    assert_eq!((page.total, page.scanned, page.index.as_deref()), (3, 3, Some("body")));
    assert_eq!(page.rows[1].version, 2);
    // Every model was indexed, not only the first ones read.
    let page = query(&mut alice, "SELECT * FROM notes WHERE body = 'y'").await?.unwrap();
    assert_eq!((page.total, page.index.as_deref()), (67, Some("body")));
    Ok(())
}
