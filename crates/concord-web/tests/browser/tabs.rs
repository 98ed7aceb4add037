//! Several tabs of one user on one store (`concord_tabs.js`) in headless Chromium: tabs edit
//! one model while the server is down, each follower's subscription hears the others'
//! changes before and after the owning tab is closed mid-edit, a remaining tab reloads, and
//! once the server is back a native client sees every edit exactly once; a seeded random
//! run that closes, crashes and reloads tabs while they edit, checking that nothing
//! reported stored is lost and nothing is applied twice; followers create and remove models
//! while owners close or crash, each taking effect once; what cannot cross tabs is refused
//! in every tab; two users in one browser keep separate stores.
//!
//! Each tab records a value in `localStorage` (shared by the tabs, kept when a tab closes)
//! when its push resolves: that is the list of what was reported stored.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use concord_client::{Domain, ModelId};
use concord_server::mint_token;
use serde_json::{Value, json};

use super::{Browser, SECRET, serve, web_root};

/// A web root with the bundle, `concord_tabs.js` and an empty page to load them in.
fn tabs_root() -> anyhow::Result<tempfile::TempDir> {
    let (bundle, root) = (web_root()?, tempfile::tempdir()?);
    for file in ["concord_web.js", "concord_web_bg.wasm", "concord_tabs.js"] {
        std::fs::copy(bundle.join(file), root.path().join(file))?;
    }
    std::fs::write(root.path().join("tabs.html"), "<!doctype html><title>tabs</title>")?;
    Ok(root)
}

/// Makes `window.domain` (through `openTabs`), `window.model` (the model "shared"),
/// `window.changed` (the model's `changed` events in this tab, from its own subscription) and
/// `window.push(value)`, which records the value in `localStorage` once it is stored, and
/// records it as `early` if the model's watermarks did not yet say so at that moment.
fn setup(ws: &str, token: &str) -> String {
    let body = r#"
    const concord = await import("/concord_web.js");
    await concord.default();
    const { openTabs } = await import("/concord_tabs.js");
    window.until = async (check, what, ms = 60000) => {
      const end = Date.now() + ms;
      while (!(await check())) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    window.role = "waiting";
    window.domain = await openTabs(concord, $ws, { user: "alice", token: $token, onRole: (r) => (window.role = r) });
    window.model = await window.domain.models().open("shared");
    window.changed = [];
    window.model.onEvent((e) => { if (e.type === "changed") window.changed.push(e); });
    window.inFlight = 0;
    window.push = async (value) => {
      window.inFlight++;
      try {
        const items = await window.model.root().get("items");
        const seq = await items.push(value);
        // Reported stored: the store has it, so the watermarks say so.
        const stored = (await window.model.watermarks()).stored;
        if (!(stored >= seq)) localStorage.setItem(`early ${value}`, `${seq} > ${stored}`);
        localStorage.setItem(`stored ${value}`, "1");
      } finally {
        window.inFlight--;
      }
    };
    return window.role;"#;
    body.replace("$ws", &json!(ws).to_string()).replace("$token", &json!(token).to_string())
}

/// What the tabs reported stored, from `localStorage`.
const REPORTED: &str = r#"return Object.keys(localStorage).filter((k) => k.startsWith("stored ")).map((k) => k.slice(7));"#;

/// Waits until this tab's own subscription has had `n` `changed` events on the root, and
/// gives their types. (The test changes the root only where it checks these.)
fn root_changes(n: usize) -> String {
    format!(
        r#"const root = model.root().id();
        const of = () => window.changed.filter((e) => e.element === root);
        await until(() => of().length >= {n}, "{n} changed events of the root");
        return of().map((e) => e.type);"#
    )
}

/// Edits whose promise resolved while the model's watermarks said they were not stored yet.
const EARLY: &str =
    r#"return Object.entries(localStorage).filter(([k]) => k.startsWith("early "));"#;

/// Each value's number of occurrences.
fn counts(values: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in values {
        *counts.entry(value.as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Everything reported stored is there once; nothing is there twice.
fn check_exactly_once(items: &[Value], reported: &[Value], context: &str) -> anyhow::Result<()> {
    let seen = counts(items);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    anyhow::ensure!(twice.is_empty(), "{context}: applied twice: {twice:?}");
    let lost: Vec<_> =
        reported.iter().filter_map(Value::as_str).filter(|v| !seen.contains_key(*v)).collect();
    anyhow::ensure!(lost.is_empty(), "{context}: reported stored but lost: {lost:?}");
    Ok(())
}

fn open_tab(browser: &mut Browser, tab: &str, page: &str, setup: &str) -> anyhow::Result<String> {
    browser.run(&format!("open {tab} {page}"))?;
    Ok(browser.evaluate(tab, setup)?.as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn three_tabs_edit_offline_lose_their_owner_and_a_native_client_sees_each_edit_once()
-> anyhow::Result<()> {
    // The page comes from one server; the tabs' domain lives on another, which goes down.
    let (files, pages_store, store) = (tabs_root()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let pages = serve("127.0.0.1:0".parse()?, pages_store.path(), files.path()).await?;
    let server = serve("127.0.0.1:0".parse()?, store.path(), files.path()).await?;
    let addr = server.addr();
    let (page, ws) =
        (format!("http://{}/tabs.html", pages.addr()), format!("ws://{addr}/demo/tabs"));
    let token = mint_token(SECRET, "alice", None, Duration::from_secs(3600))?;
    let setup = setup(&ws, &token);

    let mut browser = tokio::task::block_in_place(Browser::start)?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        browser.run(&format!("open t1 {page}"))?;
        // The model exists before the tabs open it.
        browser.evaluate(
            "t1",
            &format!(
                r#"const concord = await import("/concord_web.js");
                await concord.default();
                const domain = new concord.Domain({ws}, {{ offline: {{ storage: new concord.IdbStorageAdapter() }} }});
                await domain.initializeOffline("alice");
                await domain.connectWithJwt({token});
                const model = await domain.models().openAutoCreate("shared", "notes", {{ items: [] }});
                await model.acknowledged(model.watermarks().last);
                await domain.close();"#,
                ws = json!(ws),
                token = json!(token)
            ),
        )?;
        browser.run("reload t1")?;
        assert_eq!(browser.evaluate("t1", &setup)?, json!("owner"));
        assert_eq!(open_tab(&mut browser, "t2", &page, &setup)?, "follower");
        assert_eq!(open_tab(&mut browser, "t3", &page, &setup)?, "follower");
        browser.evaluate(
            "t1",
            r#"await until(async () => (await domain.state()) === "connected", "connected");"#,
        )?;
        // A tab cannot close the domain the others use.
        let refused = browser.evaluate(
            "t2",
            r#"try { await domain.close(); return "closed"; } catch (e) { return e.code; }"#,
        )?;
        assert_eq!(refused, json!("invalid_argument"));
        Ok(())
    })?;

    // The server goes down; the three tabs edit; the owner goes mid-edit.
    server.stop().await?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        browser.evaluate(
            "t1",
            r#"await until(async () => (await domain.state()) !== "connected", "offline");"#,
        )?;
        for tab in ["t1", "t2", "t3"] {
            browser.evaluate(
                tab,
                &format!(
                    r#"window.edits = (async () => {{ for (let i = 0; i < 20; i++) await push(`{tab}-${{i}}`); }})();
                    window.edits.catch((e) => console.error("edits", e));"#
                ),
            )?;
        }
        // Each follower sees the others' stored edits at once (no server).
        browser.evaluate(
            "t2",
            r#"await until(async () => (await model.value()).items.some((v) => v.startsWith("t3-")), "t3's edit in t2");"#,
        )?;
        // And is told of them by its own subscription: the owner's and the other follower's
        // changes of the root (which nothing else changes) reach t2 as `changed` events.
        browser.evaluate("t1", r#"await model.root().set("from t1", 1);"#)?;
        browser.evaluate("t3", r#"await model.root().set("from t3", 3);"#)?;
        let events = browser.evaluate("t2", &root_changes(2))?;
        assert_eq!(events, json!(["changed", "changed"]), "t2's root events");
        browser.evaluate(
            "t1",
            r#"await until(() => localStorage.getItem("stored t1-5"), "t1's edits");"#,
        )?;
        browser.run("close t1")?;
        // A follower took over; every remaining tab finishes its edits: none was lost.
        for tab in ["t2", "t3"] {
            browser.evaluate(
                tab,
                r#"const late = new Promise((_, no) => setTimeout(() => no(new Error("the edits hung")), 60000));
                await Promise.race([window.edits, late]);"#,
            )?;
        }
        let roles: Vec<Value> = ["t2", "t3"]
            .iter()
            .map(|t| browser.evaluate(t, "return window.role;"))
            .collect::<Result<_, _>>()?;
        assert!(roles.contains(&json!("owner")), "no tab took over: {roles:?}");
        // The follower left subscribed again with the new owner: its change of the root
        // reaches the other tab as an event.
        let (owner, follower) =
            if roles[0] == json!("owner") { ("t2", "t3") } else { ("t3", "t2") };
        browser.evaluate(owner, r#"await model.root().set("after the handover", 1);"#)?;
        let events = browser.evaluate(follower, &root_changes(3))?;
        assert_eq!(events, json!(["changed", "changed", "changed"]), "{follower}'s root events");
        // A remaining tab reloads and edits again.
        browser.run("reload t3")?;
        browser.evaluate("t3", &setup)?;
        browser.evaluate("t3", r#"for (let i = 0; i < 5; i++) await push(`t3-reloaded-${i}`);"#)?;
        let items = browser.evaluate("t2", "return (await model.value()).items;")?;
        let reported = browser.evaluate("t2", REPORTED)?;
        check_exactly_once(
            items.as_array().context("items")?,
            reported.as_array().context("reported")?,
            "in the tabs, offline",
        )?;
        assert_eq!(browser.evaluate("t2", EARLY)?, json!([]), "reported stored before it was");
        Ok(())
    })?;

    // The server is back: the owner syncs; a native client sees each edit exactly once.
    let server = serve(addr, store.path(), files.path()).await?;
    let owner = tokio::task::block_in_place(|| {
        for tab in ["t2", "t3"] {
            if browser.evaluate(tab, "return window.role;")? == json!("owner") {
                return Ok(tab);
            }
        }
        anyhow::bail!("no tab owns the store")
    })?;
    let reported = tokio::task::block_in_place(|| {
        browser.evaluate(
            owner,
            r#"await until(async () => (await domain.state()) === "connected", "connected again");
            await until(async () => { const w = await model.watermarks(); return w.acknowledged === w.last; }, "acknowledged");"#,
        )?;
        browser.evaluate(owner, REPORTED)
    })?;
    let native = Domain::builder(ws.clone()).build();
    native.connect_with_jwt(mint_token(SECRET, "alice", None, Duration::from_secs(3600))?).await?;
    let shared = native.models().open(&ModelId::new("shared")?).await?;
    let value = shared.value().await?;
    let items = value["items"].as_array().context("items")?;
    let reported = reported.as_array().context("reported")?;
    check_exactly_once(items, reported, "at the server")?;
    // Both followers finished all 20 edits and the reload's 5: all were reported stored.
    assert!(reported.len() >= 45, "only {} edits reported stored", reported.len());
    native.close().await?;
    drop(browser);
    server.stop().await?;
    pages.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn two_users_in_one_browser_keep_separate_stores() -> anyhow::Result<()> {
    let (files, store) = (tabs_root()?, tempfile::tempdir()?);
    let server = serve("127.0.0.1:0".parse()?, store.path(), files.path()).await?;
    let addr = server.addr();
    let page = format!("http://{addr}/tabs.html");
    let ws = json!(format!("ws://{addr}/demo/users"));
    let mut browser = tokio::task::block_in_place(Browser::start)?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for user in ["alice", "bob"] {
            browser.run(&format!("open {user} {page}"))?;
            // Offline (no token): each user's own store, each tab its own store's owner.
            let role = browser.evaluate(
                user,
                &format!(
                    r#"const concord = await import("/concord_web.js");
                    await concord.default();
                    const {{ openTabs }} = await import("/concord_tabs.js");
                    let role;
                    window.domain = await openTabs(concord, {ws}, {{ user: "{user}", onRole: (r) => (role = r) }});
                    await domain.models().createWithId("notes", "notes", {{ owner: "{user}" }});
                    return role;"#
                ),
            )?;
            assert_eq!(role, json!("owner"), "{user}");
        }
        for user in ["alice", "bob"] {
            let seen = browser.evaluate(
                user,
                r#"const models = await domain.models().storedModels();
                return [models.length, (await (await domain.models().open("notes")).value()).owner];"#,
            )?;
            assert_eq!(seen, json!([1, user]), "{user} sees only its own store");
        }
        Ok(())
    })?;
    drop(browser);
    server.stop().await?;
    Ok(())
}

/// splitmix64: a small seeded generator, so that a failing run can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn tabs_closed_and_reloaded_at_random_lose_no_stored_edit() -> anyhow::Result<()> {
    let seed =
        std::env::var("CONCORD_TABS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let rounds: usize =
        std::env::var("CONCORD_TABS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let result = random_rounds(seed, rounds).await;
    result.with_context(|| format!("seed {seed} (replay with CONCORD_TABS_SEED={seed})"))
}

async fn random_rounds(seed: u64, rounds: usize) -> anyhow::Result<()> {
    let (files, store) = (tabs_root()?, tempfile::tempdir()?);
    let server = serve("127.0.0.1:0".parse()?, store.path(), files.path()).await?;
    let addr = server.addr();
    let (page, ws) = (format!("http://{addr}/tabs.html"), format!("ws://{addr}/demo/random"));
    let mut browser = tokio::task::block_in_place(Browser::start)?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        // The model in the store, created offline by the first owner; the tabs never connect
        // (no token): everything goes through the store.
        let setup = setup(&ws, "");
        browser.run(&format!("open t0 {page}"))?;
        browser.evaluate(
            "t0",
            &format!(
                r#"const concord = await import("/concord_web.js");
                await concord.default();
                const domain = new concord.Domain({ws}, {{ offline: {{ storage: new concord.IdbStorageAdapter() }} }});
                await domain.initializeOffline("alice");
                await domain.models().createWithId("shared", "notes", {{ items: [] }});
                await domain.close();"#,
                ws = json!(ws)
            ),
        )?;
        browser.evaluate("t0", &setup)?;
        let mut random = Random(seed);
        let mut tabs: Vec<String> = vec!["t0".into()];
        let mut next_tab = 1;
        let mut next_value = 0;
        let (mut closed, mut crashed, mut reloaded) = (0, 0, 0);
        for round in 0..rounds {
            let what = random.below(10);
            if tabs.len() < 3 || (what == 0 && tabs.len() < 4) {
                let tab = format!("t{next_tab}");
                next_tab += 1;
                open_tab(&mut browser, &tab, &page, &setup)
                    .with_context(|| format!("round {round}: opening {tab}"))?;
                tabs.push(tab);
            }
            // A few edits in flight in random tabs, then a tab goes or reloads mid-edit.
            for _ in 0..1 + random.below(4) {
                let tab = &tabs[random.below(tabs.len() as u64) as usize];
                browser.evaluate(tab, &format!("push(\"v{next_value}\").catch(() => {{}});"))?;
                next_value += 1;
            }
            let victim = random.below(tabs.len() as u64) as usize;
            match what {
                0..=2 => {
                    browser.run(&format!("close {}", tabs[victim]))?;
                    tabs.remove(victim);
                    closed += 1;
                }
                3 => {
                    browser.run(&format!("crash {}", tabs[victim]))?;
                    tabs.remove(victim);
                    crashed += 1;
                }
                4..=7 => {
                    browser.run(&format!("reload {}", tabs[victim]))?;
                    browser
                        .evaluate(&tabs[victim], &setup)
                        .with_context(|| format!("round {round}: reloading {}", tabs[victim]))?;
                    reloaded += 1;
                }
                _ => {}
            }
        }
        // The tabs left finish their edits; then every tab reloads and reads the store.
        for tab in &tabs {
            browser.evaluate(tab, r#"await until(() => window.inFlight === 0, "edits done");"#)?;
        }
        for tab in &tabs {
            browser.run(&format!("reload {tab}"))?;
        }
        let last = tabs.last().context("no tab")?.clone();
        for tab in &tabs {
            browser.evaluate(tab, &setup)?;
        }
        let items = browser.evaluate(&last, "return (await model.value()).items;")?;
        let reported = browser.evaluate(&last, REPORTED)?;
        let (items, reported) =
            (items.as_array().context("items")?, reported.as_array().context("reported")?);
        eprintln!(
            "{rounds} rounds ({closed} tabs closed, {crashed} crashed, {reloaded} reloaded): \
             {next_value} edits, {} reported stored, {} in the store",
            reported.len(),
            items.len()
        );
        check_exactly_once(items, reported, "after the random rounds")?;
        let early = browser.evaluate(&last, EARLY)?;
        anyhow::ensure!(early == json!([]), "reported stored before it was: {early}");
        anyhow::ensure!(!reported.is_empty(), "no edit was reported stored");
        Ok(())
    })?;
    drop(browser);
    server.stop().await?;
    Ok(())
}

/// Makes `window.domain` (through `openTabs`, no connection), `window.make(tag)`, which
/// creates a model `{ tag }` and records its id in `localStorage` once created,
/// `window.makeWithId(id)`, the same with the id given (and `id` as the tag), and
/// `window.unmake(id)`, which removes a model and records it once removed; a failure of
/// any is recorded too. `window.inFlight` counts their calls not answered yet.
fn models_setup(ws: &str) -> String {
    let body = r#"
    const concord = await import("/concord_web.js");
    await concord.default();
    const { openTabs } = await import("/concord_tabs.js");
    window.until = async (check, what, ms = 60000) => {
      const end = Date.now() + ms;
      while (!(await check())) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    window.role = "waiting";
    window.domain = await openTabs(concord, $ws, { user: "alice", onRole: (r) => (window.role = r) });
    window.inFlight = 0;
    const track = async (what, work) => {
      window.inFlight++;
      try {
        localStorage.setItem(what, JSON.stringify(await work()));
      } catch (e) {
        localStorage.setItem(`failed ${what}`, `${e?.code}: ${e?.message ?? e}`);
      } finally {
        window.inFlight--;
      }
    };
    window.make = (tag) => track(`created ${tag}`, () => domain.models().create("notes", { tag }));
    window.makeWithId = (id) => track(`createdWithId ${id}`,
      async () => (await domain.models().createWithId(id, "notes", { tag: id })) ?? id);
    window.unmake = (id) => track(`removed ${id}`, async () => (await domain.models().remove(id)) ?? id);
    return window.role;"#;
    body.replace("$ws", &json!(ws).to_string())
}

/// What `models_setup`'s calls recorded: `[[key, value], …]` of `created`,
/// `createdWithId`, `removed` and `failed` entries.
const RECORDED: &str = r#"return Object.entries(localStorage).filter(([k]) => /^(created|createdWithId|removed|failed) /.test(k));"#;

/// Every model in the store as the tab sees it: `[id, deletedLocally, tag]` (the tag read
/// by opening the model, for those not deleted).
const STORED_MODELS: &str = r#"const seen = [];
    for (const m of await domain.models().storedModels()) {
      const tag = m.deletedLocally ? null : (await (await domain.models().open(m.id)).value()).tag;
      seen.push([m.id, m.deletedLocally, tag]);
    }
    return seen;"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn followers_create_and_remove_models_exactly_once_while_owners_go() -> anyhow::Result<()> {
    let (files, store) = (tabs_root()?, tempfile::tempdir()?);
    let server = serve("127.0.0.1:0".parse()?, store.path(), files.path()).await?;
    let addr = server.addr();
    let (page, ws) = (format!("http://{addr}/tabs.html"), format!("ws://{addr}/demo/models"));
    let mut browser = tokio::task::block_in_place(Browser::start)?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let setup = models_setup(&ws);
        let mut tabs: Vec<String> = Vec::new();
        let mut next_tab = 0;
        let (mut next_tag, mut removing, mut in_flight) = (0, Vec::<String>::new(), 0);
        for round in 0..8 {
            while tabs.len() < 3 {
                let tab = format!("t{next_tab}");
                next_tab += 1;
                open_tab(&mut browser, &tab, &page, &setup)?;
                tabs.push(tab);
            }
            let mut owner = None;
            for (i, tab) in tabs.iter().enumerate() {
                if browser.evaluate(tab, "return window.role;")? == json!("owner") {
                    owner = Some(i);
                }
            }
            let owner = owner.with_context(|| format!("round {round}: no tab owns the store"))?;
            let follower = tabs[(owner + 1 + round % 2) % tabs.len()].clone();
            // Models created in earlier rounds, to remove now.
            let created: Vec<String> = browser
                .evaluate(&follower, RECORDED)?
                .as_array()
                .context("recorded")?
                .iter()
                .filter(|e| e[0].as_str().is_some_and(|k| k.starts_with("created ")))
                .filter_map(|e| serde_json::from_str::<String>(e[1].as_str()?).ok())
                .filter(|id| !removing.contains(id))
                .take(3)
                .collect();
            // A follower's creations and removals in flight; then the owner goes.
            let mut calls = String::new();
            for _ in 0..6 {
                calls.push_str(&format!("make(\"c{next_tag}\");"));
                next_tag += 1;
            }
            calls.push_str(&format!("makeWithId(\"w{round}\");"));
            for id in &created {
                calls.push_str(&format!("unmake({});", json!(id)));
            }
            removing.extend(created);
            browser.evaluate(&follower, &calls)?;
            let gone = tabs.remove(owner);
            browser.run(&format!("{} {gone}", if round % 2 == 0 { "close" } else { "crash" }))?;
            in_flight +=
                browser.evaluate(&follower, "return window.inFlight;")?.as_u64().unwrap_or(0);
            browser.evaluate(
                &follower,
                r#"await until(() => window.inFlight === 0, "the calls answered");"#,
            )?;
        }
        let last = tabs.last().context("no tab")?.clone();
        let recorded = browser.evaluate(&last, RECORDED)?;
        let stored = browser.evaluate(&last, STORED_MODELS)?;
        let (recorded, stored) =
            (recorded.as_array().context("recorded")?, stored.as_array().context("stored")?);
        let failed: Vec<_> = recorded
            .iter()
            .filter(|e| e[0].as_str().is_some_and(|k| k.starts_with("failed ")))
            .collect();
        anyhow::ensure!(failed.is_empty(), "calls failed: {failed:?}");
        // Each creation made one model, with the id reported; each removal took effect.
        let mut live = BTreeMap::new();
        for model in stored {
            if model[1] == json!(false) {
                let tag = model[2].as_str().context("a model without its tag")?.to_owned();
                let previous = live.insert(tag.clone(), model[0].clone());
                anyhow::ensure!(previous.is_none(), "{tag} created twice: {stored:?}");
            }
        }
        let mut expected = BTreeMap::new();
        for entry in recorded {
            let (key, value) = (entry[0].as_str().unwrap_or_default(), entry[1].as_str());
            let id: Value = serde_json::from_str(value.context("a recorded value")?)?;
            if let Some(tag) = key.strip_prefix("created ") {
                expected.insert(tag.to_owned(), id);
            } else if let Some(id) = key.strip_prefix("createdWithId ") {
                expected.insert(id.to_owned(), json!(id));
            }
        }
        let removed: Vec<Value> = recorded
            .iter()
            .filter(|e| e[0].as_str().is_some_and(|k| k.starts_with("removed ")))
            .map(|e| serde_json::from_str(e[1].as_str().unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        expected.retain(|_, id| !removed.contains(id));
        assert_eq!(live, expected, "the models alive are those created and not removed, once");
        for id in &removed {
            let model = stored.iter().find(|m| &m[0] == id);
            assert!(model.is_none_or(|m| m[1] == json!(true)), "{id} was not removed");
        }
        eprintln!(
            "8 owners gone: {next_tag} creations and 8 with an id, {} removals, {in_flight} calls \
             in flight as their owner went",
            removed.len()
        );
        anyhow::ensure!(removed.len() == removing.len(), "not every removal was reported");
        Ok(())
    })?;
    drop(browser);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn histories_and_own_references_are_refused_in_every_tab_query_results_cross()
-> anyhow::Result<()> {
    let (files, store) = (tabs_root()?, tempfile::tempdir()?);
    let server = serve("127.0.0.1:0".parse()?, store.path(), files.path()).await?;
    let addr = server.addr();
    let (page, ws) = (format!("http://{addr}/tabs.html"), format!("ws://{addr}/demo/refused"));
    let token = mint_token(SECRET, "alice", None, Duration::from_secs(3600))?;
    let mut browser = tokio::task::block_in_place(Browser::start)?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let setup = models_setup(&ws).replace(
            "{ user: \"alice\",",
            &format!("{{ user: \"alice\", token: {},", json!(token)),
        );
        assert_eq!(open_tab(&mut browser, "t1", &page, &setup)?, "owner");
        assert_eq!(open_tab(&mut browser, "t2", &page, &setup)?, "follower");
        browser.evaluate(
            "t1",
            r#"await until(async () => (await domain.state()) === "connected", "connected");
            await domain.models().createWithId("doc", "notes", { title: "hello", items: [] });"#,
        )?;
        for tab in ["t1", "t2"] {
            let seen = browser.evaluate(
                tab,
                r#"const model = await domain.models().open("doc");
                const [title, root] = [await model.root().get("title"), model.root()];
                const codes = [];
                for (const attempt of [
                  () => domain.models().history("doc"),
                  () => model.elementReference("chosen"),
                  () => title.indexReference("cursor"),
                  () => title.rangeReference("selection"),
                  () => root.propertyReference("highlight"),
                  () => domain.activities().join("viewing", "doc", {}),
                ]) {
                  try { await attempt(); codes.push("no error"); }
                  catch (e) { codes.push([e instanceof Error, e.name, e.code]); }
                }
                const found = await domain.models().queryWith("SELECT title FROM notes", "store");
                return { codes, rows: found.rows.map((r) => [r.model, r.values]),
                  references: await model.references() };"#,
            )?;
            let refused = json!([true, "ConcordError", "not_available_in_tab"]);
            assert_eq!(seen["codes"], Value::Array(vec![refused; 6]), "{tab}");
            // Plain results cross tabs: a query's rows, other sessions' references.
            assert_eq!(seen["rows"], json!([["doc", ["hello"]]]), "{tab}");
            assert_eq!(seen["references"], json!([]), "{tab}");
        }
        Ok(())
    })?;
    drop(browser);
    server.stop().await?;
    Ok(())
}
