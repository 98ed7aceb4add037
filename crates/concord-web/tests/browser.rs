//! The demo page, served by a real server, in headless Chromium, checked by a native client:
//! with the server stopped the page keeps working and reloads (its service worker keeps its
//! files, IndexedDB its data) and shows how many changes wait for the server; the edits
//! reach the server once it is back, the page showing the sync progress; a second tab on
//! the same store works through the first. `cargo xtask browser-test` builds the page
//! (`target/web`) and runs this with `--ignored`. The JS API's own tests are in `browser/api.rs`.

#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use concord_client::{Domain, ModelId};
use concord_server::{RunningServer, Server, ServerConfig, mint_token};

/// Chromium driven through `driver.mjs`.
#[path = "browser/driver.rs"]
mod driver;
use driver::Browser;

/// Tests through the JS API, in pages that load the bundle.
#[path = "browser/api.rs"]
mod api;

/// Several tabs on one store (`concord_tabs.js`).
#[path = "browser/tabs.rs"]
mod tabs;

const SECRET: &[u8] = b"the browser test's JWT secret";

/// A development server on `dir` listening on `addr` (port 0: any), serving the page.
async fn serve(
    addr: std::net::SocketAddr,
    dir: &std::path::Path,
    web_root: &std::path::Path,
) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    config.bind = addr;
    config.web_root = Some(web_root.to_path_buf());
    Ok(Server::spawn(config).await?)
}

/// `target/web`, built by `cargo xtask web` (or `CONCORD_WEB_ROOT`).
fn web_root() -> anyhow::Result<PathBuf> {
    let web_root = std::env::var_os("CONCORD_WEB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/web"));
    anyhow::ensure!(
        web_root.join("concord_web_bg.wasm").exists(),
        "build the page first: cargo xtask web"
    );
    Ok(web_root)
}

fn items(browser: &mut Browser, tab: &str) -> anyhow::Result<Vec<String>> {
    Ok(serde_json::from_str(&browser.run(&format!("items {tab}"))?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn offline_edits_survive_a_reload_and_reach_a_native_client() -> anyhow::Result<()> {
    let web_root = web_root()?;
    let dir = tempfile::tempdir()?;
    let server = serve("127.0.0.1:0".parse()?, dir.path(), &web_root).await?;
    let addr = server.addr();
    let token = mint_token(SECRET, "alice", None, Duration::from_secs(3600))?;
    let page = format!("http://{addr}/?user=alice&token={token}&model=todos");

    let mut browser = tokio::task::block_in_place(Browser::start)?;
    let mut run = |command: String| tokio::task::block_in_place(|| browser.run(&command));
    run(format!("open a {page}"))?;
    run("ready a".into())?;
    run("controlled a".into())?;
    run("add a milk".into())?;
    run("add a bread".into())?;
    run("synced a".into())?;

    // The server goes away; the page keeps working, and keeps its work across a reload.
    server.stop().await?;
    run("waitStatus a reconnecting".into())?;
    run("add a eggs (offline)".into())?;
    // A model created offline: after the reload it is only in the store, so it syncs in the
    // background once the server is back, with the page showing the progress.
    tokio::task::block_in_place(|| {
        browser.evaluate(
            "a",
            r#"const created = window.concordDomain.models().create("todos", { items: [] });
            const late = new Promise((_, no) => setTimeout(() => no(new Error("create hung")), 20000));
            await Promise.race([created, late]);"#,
        )
    })?;
    let mut run = |command: String| tokio::task::block_in_place(|| browser.run(&command));
    run("reload a".into())?;
    run("ready a".into())?;
    let seen = tokio::task::block_in_place(|| items(&mut browser, "a"))?;
    assert_eq!(seen, ["milk", "bread", "eggs (offline)"], "after the reload");
    let mut run = |command: String| tokio::task::block_in_place(|| browser.run(&command));
    run("add a butter (offline)".into())?;
    // The page says how many changes wait for the server.
    let offline = tokio::task::block_in_place(|| {
        browser.evaluate("a", r#"return document.getElementById("pending").textContent;"#)
    })?;
    let waiting = offline.as_str().unwrap_or_default();
    assert!(
        waiting.ends_with("local changes not on the server yet")
            && waiting.split(' ').next().and_then(|n| n.parse::<u32>().ok()) >= Some(1),
        "{offline}"
    );
    let mut run = |command: String| tokio::task::block_in_place(|| browser.run(&command));

    // A second tab of the same user works on the same store, through the first.
    run(format!("open b {page}"))?;
    run("ready b".into())?;
    run("add b jam (second tab)".into())?;
    let seen = tokio::task::block_in_place(|| {
        browser.evaluate(
            "a",
            r#"const end = Date.now() + 30000;
            while (!(document.body.dataset.items || "").includes("jam") && Date.now() < end) {
                await new Promise((r) => setTimeout(r, 50));
            }
            return JSON.parse(document.body.dataset.items);"#,
        )
    })?;
    assert_eq!(
        seen,
        serde_json::json!([
            "milk",
            "bread",
            "eggs (offline)",
            "butter (offline)",
            "jam (second tab)"
        ]),
        "the first tab shows the second's edit"
    );
    // And the second tab shows the first's, told by the events it subscribed to.
    let mut run = |command: String| tokio::task::block_in_place(|| browser.run(&command));
    run("add a tea (first tab)".into())?;
    let seen = tokio::task::block_in_place(|| {
        browser.evaluate(
            "b",
            r#"const end = Date.now() + 30000;
            while (!(document.body.dataset.items || "").includes("tea") && Date.now() < end) {
                await new Promise((r) => setTimeout(r, 50));
            }
            return [document.body.dataset.role, JSON.parse(document.body.dataset.items)];"#,
        )
    })?;
    assert_eq!(
        seen,
        serde_json::json!([
            "follower",
            [
                "milk",
                "bread",
                "eggs (offline)",
                "butter (offline)",
                "jam (second tab)",
                "tea (first tab)"
            ]
        ]),
        "the second tab shows the first's edit"
    );
    let mut run = |command: String| tokio::task::block_in_place(|| browser.run(&command));

    // The server is back: the page syncs, and a native client sees every change.
    let server = serve(addr, dir.path(), &web_root).await?;
    run("synced a".into())?;
    let synced = tokio::task::block_in_place(|| {
        browser.evaluate(
            "a",
            r#"const text = (id) => document.getElementById(id).textContent;
            const end = Date.now() + 30000;
            while (text("progress") !== "synced 1 of 1 model" && Date.now() < end) {
                await new Promise((r) => setTimeout(r, 50));
            }
            return [text("pending"), text("progress")];"#,
        )
    })?;
    assert_eq!(synced, serde_json::json!(["every change is on the server", "synced 1 of 1 model"]));
    // The second tab says so too: the owner's connection events reach it.
    let status = tokio::task::block_in_place(|| {
        browser.evaluate(
            "b",
            r#"const text = (id) => document.getElementById(id).textContent;
            const shown = () => [text("status"), text("pending")];
            const end = Date.now() + 30000;
            while (shown().join() !== "alice: connected,every change is on the server"
                && Date.now() < end) {
                await new Promise((r) => setTimeout(r, 50));
            }
            return shown();"#,
        )
    })?;
    assert_eq!(
        status,
        serde_json::json!(["alice: connected", "every change is on the server"]),
        "the second tab's status"
    );
    let native = Domain::builder(format!("ws://{addr}/demo/todos")).build();
    native.connect_with_jwt(mint_token(SECRET, "bob", None, Duration::from_secs(3600))?).await?;
    let todos = native.models().open(&ModelId::new("todos")?).await?;
    let value = todos.value().await?;
    let texts: Vec<&str> = value["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "milk",
            "bread",
            "eggs (offline)",
            "butter (offline)",
            "jam (second tab)",
            "tea (first tab)"
        ]
    );
    server.stop().await?;
    Ok(())
}
