//! A server run as a task of the test's process (`Server::spawn`): `stop` returns once the
//! store is closed, and dropping the handle shuts the server down as well.

mod support;

use std::time::Duration;

use support::*;

support::on_each_store!(stop_closes_the_store_and_dropping_the_handle_shuts_the_server_down);
async fn stop_closes_the_store_and_dropping_the_handle_shuts_the_server_down() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "hello").await?;
    // While it runs, its data dir is taken: the embedded store's file is locked. (On
    // PostgreSQL a second server is let in and fences the first, `docs/server.md`.)
    if support::postgres_cluster().is_none() {
        assert!(start(dir.path(), |_| {}).await.is_err());
    }
    server.stop().await?;

    // Once `stop` returned, the data dir opens at once, with the model in it.
    let server = start(dir.path(), |_| {}).await?;
    let mut bob = connect(&server, "bob").await?;
    assert_eq!(body(&open(&mut bob, "doc").await?.data), "hello");

    // Dropping the handle shuts the server down in the background: bob's connection is
    // closed, and the data dir is free again a moment later.
    drop(server);
    bob.closed().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let server = loop {
        match start(dir.path(), |_| {}).await {
            Ok(server) => break server,
            Err(error) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("the dropped server kept its store: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    server.stop().await?;
    Ok(())
}
