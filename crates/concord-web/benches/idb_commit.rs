//! Durable local edits in the browser: how long an edit takes to be in IndexedDB
//! (`model.stored(seq)` resolved, the readwrite transaction `complete` with
//! `durability: "strict"`), through the whole JS API, in headless Chromium.
//!
//! - **latency**: one edit at a time, each awaited until stored: the median and p90 time
//!   from the call to `stored`, and edits per second;
//! - **bursts**: `n` edits made without waiting for one another, then awaited until stored —
//!   the client commits what accumulated together (group commit) — edits per second;
//! - **tabs**: two tabs on one store through `concord_tabs.js`: the time from an edit's call
//!   to its resolution (stored) in the owner tab and in a follower tab, one at a time.
//!
//! Needs what `cargo xtask browser-test` installs (Chromium, node, the driver's
//! playwright-core) and the built bundle (`cargo xtask web`, or `CONCORD_WEB_ROOT`). The
//! page comes from a local Concord server; the domain never connects (the store only).
//!
//! ```sh
//! cargo bench -p concord-web --bench idb_commit      # ROUNDS=… to change the number of edits
//! ```

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

/// Chromium driven through `driver.mjs`, as in the browser tests.
#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/browser/driver.rs"]
mod driver;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;

    use anyhow::Context;
    use concord_server::{Server, ServerConfig};

    use crate::driver::Browser;

    /// Edits one at a time, each until stored; then bursts of edits, the last until stored.
    const BODY: &str = r#"
        // Counts the store's readwrite transactions: its commits.
        let commits = 0;
        const transaction = IDBDatabase.prototype.transaction;
        IDBDatabase.prototype.transaction = function (names, mode, options) {
            if (mode === "readwrite") commits++;
            return transaction.call(this, names, mode, options);
        };
        const domain = new concord.Domain("ws://127.0.0.1:9/bench/idb",
            { offline: { storage: new concord.IdbStorageAdapter() } });
        await domain.initializeOffline("bench");
        // Offline, a model is created here (openAutoCreate would ask the server).
        if (!(await domain.models().storedModels()).some((m) => m.id === "bench")) {
            await domain.models().createWithId("bench", "bench", { text: "" });
        }
        const model = await domain.models().open("bench");
        const text = await model.root().get("text");
        // Warm-up: the first transactions open the database and fill caches.
        for (let i = 0; i < 20; i++) await model.stored(await text.insert(0, "w"));
        const latencies = [];
        for (let i = 0; i < ROUNDS; i++) {
            const start = performance.now();
            await model.stored(await text.insert(i % 50, "x"));
            latencies.push(performance.now() - start);
        }
        const bursts = [];
        for (const size of [1, 10, 100, 1000]) {
            const times = [], issued = [];
            const commitsBefore = commits;
            for (let r = 0; r < 5; r++) {
                const start = performance.now();
                // Made without waiting for one another, as keystrokes are.
                const edits = [];
                for (let i = 0; i < size; i++) edits.push(text.insert(i % 50, "y"));
                const seqs = await Promise.all(edits);
                issued.push(performance.now() - start);
                await model.stored(Math.max(...seqs));
                times.push(performance.now() - start);
            }
            times.sort((a, b) => a - b);
            issued.sort((a, b) => a - b);
            bursts.push({ size, medianMs: times[2], issuedMs: issued[2], commits: (commits - commitsBefore) / 5 });
        }
        await domain.close();
        latencies.sort((a, b) => a - b);
        return { latencies, bursts, browser: navigator.userAgent };"#;

    /// Opens the tabs' domain (no connection: the store only) and the model.
    const TABS: &str = r#"
        const { openTabs } = await import("/concord_tabs.js");
        window.domain = await openTabs(concord, "ws://127.0.0.1:9/bench/tabs", { user: "tabs" });
        if (!(await domain.models().storedModels()).some((m) => m.id === "tabs")) {
            await domain.models().createWithId("tabs", "bench", { text: "" });
        }
        window.text = await (await domain.models().open("tabs")).root().get("text");
        return "open";"#;

    /// Edits one at a time through the tab's handles, each until it resolves (stored).
    const TAB_EDITS: &str = r#"
        for (let i = 0; i < 20; i++) await text.insert(0, "w");
        const latencies = [];
        for (let i = 0; i < ROUNDS; i++) {
            const start = performance.now();
            await text.insert(i % 50, "x");
            latencies.push(performance.now() - start);
        }
        latencies.sort((a, b) => a - b);
        return latencies;"#;

    pub(crate) fn main() -> anyhow::Result<()> {
        let rounds: usize =
            std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(300);
        let bundle = std::env::var_os("CONCORD_WEB_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/web"));
        anyhow::ensure!(
            bundle.join("concord_web_bg.wasm").exists(),
            "build the bundle first: cargo xtask web"
        );
        let (root, store) = (tempfile::tempdir()?, tempfile::tempdir()?);
        for file in ["concord_web.js", "concord_web_bg.wasm", "concord_tabs.js"] {
            std::fs::copy(bundle.join(file), root.path().join(file))?;
        }
        std::fs::write(root.path().join("api.html"), "<!doctype html><title>bench</title>")?;
        let runtime = tokio::runtime::Runtime::new()?;
        let mut config = ServerConfig::development(store.path(), b"the IndexedDB benchmark");
        config.bind = "127.0.0.1:0".parse()?;
        config.web_root = Some(root.path().to_path_buf());
        let server = runtime.block_on(Server::spawn(config))?;
        let page = format!("http://{}/api.html", server.addr());

        let mut browser = Browser::start()?;
        eprintln!("loading the bundle in {page}");
        browser.run(&format!("api bench {page}"))?;
        eprintln!("{rounds} edits one at a time, then bursts");
        let result = browser.evaluate("bench", &BODY.replace("ROUNDS", &rounds.to_string()))?;
        eprintln!("two tabs on one store");
        browser.run(&format!("api owner {page}"))?;
        browser.evaluate("owner", TABS)?;
        browser.run(&format!("api follower {page}"))?;
        browser.evaluate("follower", TABS)?;
        let edits = TAB_EDITS.replace("ROUNDS", &rounds.to_string());
        let owner = browser.evaluate("owner", &edits)?;
        let follower = browser.evaluate("follower", &edits)?;
        drop(browser);
        runtime.block_on(server.stop())?;

        let latencies: Vec<f64> = result["latencies"]
            .as_array()
            .context("latencies")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        let total: f64 = latencies.iter().sum();
        println!("{}", result["browser"]);
        println!(
            "one edit at a time, {} edits: median {:.2} ms, p90 {:.2} ms, max {:.2} ms, {:.0} edits/s",
            latencies.len(),
            at(0.5),
            at(0.9),
            at(1.0),
            latencies.len() as f64 / (total / 1000.0)
        );
        println!(
            "| edits per burst | median time to stored | of which making the edits | IndexedDB commits per burst | edits/s | commits/s |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for burst in result["bursts"].as_array().context("bursts")? {
            let number = |field: &str| burst[field].as_f64().unwrap_or(0.0);
            let (size, ms, commits) = (number("size"), number("medianMs"), number("commits"));
            println!(
                "| {size} | {ms:.2} ms | {:.2} ms | {commits:.1} | {:.0} | {:.0} |",
                number("issuedMs"),
                size / (ms / 1000.0),
                commits / (ms / 1000.0)
            );
        }
        println!("| edit made in | median | p90 | edits/s, one at a time |");
        println!("|---|---:|---:|---:|");
        for (tab, latencies) in [("owner tab", owner), ("follower tab", follower)] {
            let mut ms: Vec<f64> = latencies
                .as_array()
                .context("tab latencies")?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect();
            ms.sort_by(f64::total_cmp);
            let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
            let total: f64 = ms.iter().sum();
            println!(
                "| {tab} | {:.2} ms | {:.2} ms | {:.0} |",
                at(0.5),
                at(0.9),
                ms.len() as f64 / (total / 1000.0)
            );
        }
        Ok(())
    }
}
