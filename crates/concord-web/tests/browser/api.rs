//! The JS API in headless Chromium against a real server: two users working on one model
//! (references in UTF-16 code units around emoji, collaborators, presence), a model's
//! history played to every version and back, and users' identities looked up and searched.

use std::time::Duration;

use anyhow::Context;
use concord_server::{mint_identity_token, mint_token};
use serde_json::{Value, json};

use super::{Browser, SECRET, serve, web_root};

/// `body` with each `$name` replaced by its value as a JS literal (JSON).
fn script(body: &str, vars: &[(&str, Value)]) -> String {
    vars.iter().fold(body.to_owned(), |body, (name, value)| {
        body.replace(&format!("${name}"), &value.to_string())
    })
}

/// A web root with the bundle and an empty page (`api.html`) to load it in.
fn api_root() -> anyhow::Result<tempfile::TempDir> {
    let (bundle, root) = (web_root()?, tempfile::tempdir()?);
    for file in ["concord_web.js", "concord_web_bg.wasm"] {
        std::fs::copy(bundle.join(file), root.path().join(file))?;
    }
    std::fs::write(root.path().join("api.html"), "<!doctype html><title>api</title>")?;
    Ok(root)
}

/// A real server serving `api_root()`, with the URLs of its page and its WebSocket.
struct ApiServer {
    server: concord_server::RunningServer,
    page: String,
    ws: String,
    _web_root: tempfile::TempDir,
    _store: tempfile::TempDir,
}

impl ApiServer {
    async fn start() -> anyhow::Result<ApiServer> {
        let (web_root, store) = (api_root()?, tempfile::tempdir()?);
        let server = serve("127.0.0.1:0".parse()?, store.path(), web_root.path()).await?;
        let addr = server.addr();
        Ok(ApiServer {
            server,
            page: format!("http://{addr}/api.html"),
            ws: format!("ws://{addr}/demo/api"),
            _web_root: web_root,
            _store: store,
        })
    }
}

fn token(user: &str) -> anyhow::Result<Value> {
    Ok(json!(mint_token(SECRET, user, None, Duration::from_secs(3600))?))
}

/// A browser with one API page per user in `tabs`, each with `window.domain` connected as
/// that user to `ws`.
fn browser_with(page: &str, ws: &str, tabs: &[&str]) -> anyhow::Result<Browser> {
    let mut browser = Browser::start()?;
    for user in tabs {
        browser.run(&format!("api {user} {page}"))?;
        let connect = "window.domain = new concord.Domain($ws, {});
            return (await domain.connectWithJwt($token)).session;";
        let vars = [("ws", json!(ws)), ("token", token(user)?)];
        browser.evaluate(user, &script(connect, &vars))?;
    }
    Ok(browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn two_users_see_each_others_cursor_at_the_right_utf16_position() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let (page, ws) = (api.page.clone(), api.ws.clone());
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut browser = browser_with(&page, &ws, &["alice", "bob"])?;

        let alice = browser.evaluate(
            "alice",
            r#"window.model = await domain.models().openAutoCreate("cursors", "notes",
                { text: "😀 héllo 👋 world" });
            window.text = await model.root().get("text");
            window.textEvents = [];
            text.onEvent((e) => textEvents.push(e));
            window.cursor = text.indexReference("cursor");
            await cursor.share();
            return { session: await model.sessionId() };"#,
        )?;
        let alice_session = alice["session"].clone();

        // Bob opens the model and follows Alice's presence.
        let bob = browser.evaluate(
            "bob",
            r#"window.events = [];
            window.presenceEvents = [];
            window.model = await domain.models().open("cursors");
            model.onEvent((e) => events.push(e));
            domain.presence().onEvent((p) => presenceEvents.push(p));
            await domain.presence().follow(["alice"]);
            window.text = await model.root().get("text");
            return { session: await model.sessionId() };"#,
        )?;
        let bob_session = bob["session"].clone();

        // Alice puts her cursor before "world", after emoji (two UTF-16 units each); Bob sees
        // it where she put it.
        let alice = browser.evaluate(
            "alice",
            r#"const at = (await text.value()).indexOf("world");
            await cursor.set(at);
            return { at, own: await cursor.value() };"#,
        )?;
        assert_eq!(alice["at"], json!(12), "JS counts the emoji as two units each");
        assert_eq!(alice["own"], json!([12]));
        let bob = browser.evaluate(
            "bob",
            &script(
                r#"await until(async () => (await text.reference($alice, "cursor"))?.length === 1,
                    "alice's cursor");
                return { seen: await text.reference($alice, "cursor") };"#,
                &[("alice", alice_session.clone())],
            ),
        )?;
        assert_eq!(bob["seen"], json!([12]));

        // Bob types before the cursor, emoji too, in several changes; the cursor stays on
        // "world" in his view (element reference, references(), events) and in hers.
        let typed = browser.evaluate(
            "bob",
            &script(
                r#"await text.splice(0, 0, "🎉");
                await text.splice(2, 0, "x👍");
                const last = await text.splice(7, 1, "É");
                await model.acknowledged(last);
                const now = await text.value();
                const want = now.indexOf("world");
                await until(async () => (await text.reference($alice, "cursor"))?.[0] === want,
                    "the cursor to follow the text");
                const listed = (await model.references()).filter((r) => r.key === "cursor");
                return { now, want, listed,
                    events: events.filter((e) => e.type === "remoteReference") };"#,
                &[("alice", alice_session.clone())],
            ),
        )?;
        let now = typed["now"].as_str().context("text")?.to_owned();
        assert!(now.starts_with("🎉x👍😀Éhéllo"), "{now}");
        let want = now.encode_utf16().count() - "world".len();
        assert_eq!(typed["want"], json!(want));
        assert_eq!(
            typed["listed"],
            json!([{ "session": alice_session, "element": typed["listed"][0]["element"],
                "key": "cursor", "value": [want] }])
        );
        let sets: Vec<&Value> = typed["events"]
            .as_array()
            .context("events")?
            .iter()
            .filter(|e| e["change"] == "set")
            .collect();
        let first = sets.first().context("no remote reference set event")?;
        assert_eq!(first["value"], json!([12]), "the event speaks UTF-16 too");
        assert_eq!(first["user"], json!("alice"));

        // Alice's own cursor moved with Bob's typing; both list each other; presence state
        // set by Alice reaches Bob's subscriber.
        let moved = browser.evaluate(
            "alice",
            &script(
                r#"await until(async () => (await text.value()) === $now, "bob's typing");
                await until(async () => (await model.collaborators()).length === 1, "bob");
                await domain.presence().setStates({ status: { typing: true, at: 3 }, mood: "😀" });
                return { own: await cursor.value(), collaborators: await model.collaborators(),
                    remote: textEvents.filter((e) => !e.local) };"#,
                &[("now", json!(now))],
            ),
        )?;
        assert_eq!(moved["own"], json!([want]));
        // The string's own events name Bob's session and user.
        let remote = moved["remote"].as_array().context("text events")?;
        assert!(!remote.is_empty(), "alice heard bob's splices on the string");
        for event in remote {
            assert_eq!(
                (&event["author"], &event["user"]),
                (&bob_session, &json!("bob")),
                "{event}"
            );
        }
        let listed = &moved["collaborators"];
        assert_eq!(listed[0]["session"], json!(bob_session));
        assert_eq!(listed[0]["user"], json!("bob"));
        assert!(listed[0]["since"].as_i64().is_some_and(|t| t > 0), "since: {listed}");
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
        let bob = browser.evaluate(
            "bob",
            r#"await until(async () => presenceEvents.some((p) => p.state.status?.typing),
                "alice's presence state");
            return { collaborators: await model.collaborators(),
                presence: presenceEvents.at(-1) };"#,
        )?;
        let listed = &bob["collaborators"];
        assert_eq!(listed[0]["session"], json!(alice_session));
        assert_eq!(listed[0]["user"], json!("alice"));
        assert!(listed[0]["since"].as_i64().is_some_and(|t| t > 0), "since: {listed}");
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
        assert_eq!(
            bob["presence"],
            json!({ "user": "alice", "available": true,
                "state": { "status": { "typing": true, "at": 3 }, "mood": "😀" } })
        );
        Ok(())
    });
    api.server.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn history_plays_to_every_version_and_back() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let (page, ws) = (api.page.clone(), api.ws.clone());
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut browser = browser_with(&page, &ws, &["alice"])?;
        // Each step acknowledged before the next, so each is its own version.
        let played = browser.evaluate(
            "alice",
            r#"const model = await domain.models().openAutoCreate("diary", "notes",
                { text: "", count: 0, tags: [] });
            const root = model.root();
            const text = await root.get("text");
            const steps = [
                () => text.splice(0, 0, "Dear 📔"),
                async () => (await root.get("count")).add(2),
                async () => (await root.get("tags")).push("a"),
                () => text.splice(5, 2, "diary 😀"),
                () => root.set("title", "day one"),
                async () => (await root.get("tags")).insert(0, { x: 1 }),
                () => root.remove("count"),
            ];
            const recorded = [[await model.version(), await model.value()]];
            for (const step of steps) {
                await model.acknowledged(await step());
                recorded.push([await model.version(), await model.value()]);
            }
            const history = await domain.models().history("diary");
            const newest = [history.version(), history.value()];
            const forth = [];
            for (const [version] of recorded) {
                await history.playTo(version);
                forth.push([history.version(), history.value()]);
            }
            const back = [];
            for (const [version] of [...recorded].reverse()) {
                await history.playTo(version);
                back.push([history.version(), history.value()]);
            }
            await history.forward(1);
            const stepped = [history.version(), history.value()];
            await history.backward(1);
            const steppedBack = [history.version(), history.value()];
            return { recorded, newest, forth, back, stepped, steppedBack,
                min: history.minVersion(), max: history.maxVersion(),
                collection: history.collection(), createdAt: history.createdAt() };"#,
        )?;
        let recorded = played["recorded"].as_array().context("recorded")?.clone();
        assert_eq!(recorded.len(), 8);
        let versions: Vec<u64> = recorded.iter().filter_map(|r| r[0].as_u64()).collect();
        assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "one version a step: {versions:?}");
        assert_eq!(
            recorded[7][1],
            json!({ "text": "Dear diary 😀", "tags": [{ "x": 1 }, "a"],
            "title": "day one" })
        );
        assert_eq!(played["newest"], recorded[7]);
        assert_eq!(played["max"], json!(versions[7]));
        assert_eq!(played["collection"], json!("notes"));
        assert!(played["createdAt"].as_f64() > Some(0.0), "{}", played["createdAt"]);
        assert!(played["min"].as_u64() <= Some(versions[0]));
        assert_eq!(played["forth"], json!(recorded));
        let mut reversed = recorded.clone();
        reversed.reverse();
        assert_eq!(played["back"], json!(reversed));
        assert_eq!(played["stepped"], recorded[1]);
        assert_eq!(played["steppedBack"], recorded[0]);
        Ok(())
    });
    api.server.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn the_whole_api_edits_subscribes_and_fails_with_codes() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let (page, ws) = (api.page.clone(), api.ws.clone());
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut browser = browser_with(&page, &ws, &["alice"])?;
        let body = r#"const model = await domain.models().openAutoCreate("shapes", "notes",
                { list: [1, 2, 3], obj: { a: 1 }, text: "a😀b", n: 1, flag: false });
            const root = model.root();
            const [list, obj, text] = [await root.get("list"), await root.get("obj"),
                await root.get("text")];
            const elementEvents = [];
            const stopList = list.onEvent((e) => elementEvents.push(e));
            const stopModel = model.onEvent(() => {});
            await list.move(0, 2);
            await list.replace(0, "two");
            await list.set(1, { three: 3 });
            const afterArray = await list.value();
            const keys = await obj.keys();
            const has = [await obj.has("a"), await obj.has("b")];
            await obj.setValue({ b: 2, c: [true] });
            await text.insert(3, "🎉");
            const seq = await model.batch([
                { element: list.id(), op: "insert", index: 0, value: "zero" },
                { element: list.id(), op: "removeAt", index: 3 },
                { element: text.id(), op: "splice", index: 1, deleteCount: 2, text: "-" },
                { element: root.id(), op: "set", key: "n", value: 5 },
                { element: (await root.get("flag")).id(), op: "setValue", value: true },
            ]);
            await model.stored(seq);
            const marks = model.watermarks();
            await model.acknowledged(seq);
            await until(async () => elementEvents.length >= 5, "the list's events");
            stopList();
            await list.push("after unsubscribe");
            await new Promise((r) => setTimeout(r, 300));
            const afterStop = elementEvents.length;
            stopModel();
            stopModel();
            const codes = [];
            for (const attempt of [
                () => list.move(99, 0),
                () => obj.splice(0, 0, "x"),
                () => model.batch([{ element: "9:9", op: "add", delta: 1 }]),
                () => model.batch([{ element: list.id(), op: "fly" }]),
                () => domain.models().open("nope"),
                () => list.insert(-1, 0),
            ]) {
                try { await attempt(); codes.push("no error"); }
                catch (e) { codes.push([e instanceof Error, e.name, e.code]); }
            }
            const value = await model.value();
            const length = await text.length();
            await list.remove(0);
            const afterRemove = await list.value();
            const wholeSeq = await model.setValue({ fresh: [1], text: "new" });
            await model.stored(wholeSeq);
            const afterSetValue = await model.value();
            // A closed or disposed handle is unusable; the model stays open through `model`.
            const unusable = (handle) => { try { handle.id(); return "usable"; }
              catch (e) { return e instanceof Error ? "unusable" : "not an Error"; } };
            const other = await domain.models().open("shapes");
            other.close();
            let scoped;
            {
              using handle = await domain.models().open("shapes");
              scoped = handle;
            }
            const handles = [unusable(other), unusable(scoped), (await model.value()).fresh];
            // The server has the whole-value set before another domain opens the model there.
            await model.acknowledged(wholeSeq);
            // The builder's timing options; a value that is not a duration is refused.
            const tuned = new concord.Domain(domain.url(), { heartbeatMs: 250, requestTimeoutMs: 5000,
              reconnectBackoff: { firstMs: 50, maxMs: 400 } });
            await tuned.connectWithJwt($token);
            const tunedValue = await (await tuned.models().open("shapes")).value();
            await tuned.close();
            const badOptions = [];
            for (const options of [{ heartbeatMs: -1 }, { requestTimeoutMs: "soon" },
                { reconnectBackoff: { firstMs: 10 } }, { reconnectBackoff: { firstMs: 10, maxMs: Infinity } }]) {
              try { new concord.Domain(domain.url(), options); badOptions.push("no error"); }
              catch (e) { badOptions.push(e.code); }
            }
            await domain.close();
            let closed = "no error";
            try { await model.value(); } catch (e) { closed = e.code; }
            return { afterArray, keys, has, value, length, seq, marks, elementEvents, afterStop,
                codes, closed, afterRemove, wholeSeq, afterSetValue, handles, tunedValue, badOptions };"#;
        let seen = browser.evaluate("alice", &script(body, &[("token", token("alice")?)]))?;
        assert_eq!(seen["afterArray"], json!(["two", { "three": 3 }, 1]));
        assert_eq!(seen["keys"], json!(["a"]));
        assert_eq!(seen["has"], json!([true, false]));
        assert_eq!(
            seen["value"],
            json!({ "list": ["zero", "two", { "three": 3 }, "after unsubscribe"],
                "obj": { "b": 2, "c": [true] }, "text": "a-🎉b", "n": 5, "flag": true })
        );
        assert_eq!(seen["length"], json!(5), "UTF-16 units of a-🎉b");
        assert!(seen["marks"]["stored"].as_u64() >= seen["seq"].as_u64(), "{seen}");
        let local = |e: Value| {
            let mut e = e;
            e["local"] = json!(true);
            e["author"] = Value::Null;
            e["user"] = Value::Null;
            e
        };
        assert_eq!(
            seen["elementEvents"],
            json!([
                local(json!({ "type": "arrayMove", "from": 0, "to": 2 })),
                local(json!({ "type": "arrayReplace", "index": 0 })),
                local(json!({ "type": "arrayReplace", "index": 1 })),
                local(json!({ "type": "arrayInsert", "index": 0 })),
                local(json!({ "type": "arrayRemove", "index": 3 })),
            ])
        );
        assert_eq!(seen["afterStop"], json!(5), "no event after unsubscribing");
        let error = |code: &str| json!([true, "ConcordError", code]);
        assert_eq!(
            seen["codes"],
            json!([
                error("invalid_change"),
                error("wrong_kind"),
                error("no_such_element"),
                error("invalid_argument"),
                error("model_not_found"),
                error("invalid_argument"),
            ])
        );
        assert_eq!(seen["closed"], json!("closed"));
        assert_eq!(seen["afterRemove"], json!(["two", { "three": 3 }, "after unsubscribe"]));
        assert!(seen["wholeSeq"].as_u64() > seen["seq"].as_u64(), "{seen}");
        assert_eq!(seen["afterSetValue"], json!({ "fresh": [1], "text": "new" }));
        assert_eq!(seen["handles"], json!(["unusable", "unusable", [1]]));
        assert_eq!(seen["tunedValue"], json!({ "fresh": [1], "text": "new" }));
        assert_eq!(seen["badOptions"], Value::Array(vec![json!("invalid_argument"); 4]));
        Ok(())
    });
    api.server.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn queries_answered_by_the_server_then_by_the_store_offline() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let (page, ws) = (api.page.clone(), api.ws.clone());
    let mut browser = tokio::task::block_in_place(|| -> anyhow::Result<Browser> {
        let mut browser = Browser::start()?;
        browser.run(&format!("api alice {page}"))?;
        let online = browser.evaluate(
            "alice",
            &script(
                r#"window.domain = new concord.Domain($ws,
                    { offline: { storage: new concord.IdbStorageAdapter() } });
                await domain.initializeOffline("alice");
                await domain.connectWithJwt($token);
                const models = domain.models();
                for (const [id, title, priority] of
                    [["q1", "low", 1], ["q2", "high", 3], ["q3", "mid", 2], ["q4", null, 2]]) {
                    const data = title === null ? { priority } : { title, priority };
                    const model = await models.openAutoCreate(id, "tasks", data);
                    await model.acknowledged(model.watermarks().last);
                }
                const sql = "SELECT title, priority FROM tasks WHERE priority >= 2 ORDER BY priority DESC, title";
                const server = await models.query(sql);
                const store = await models.queryWith(sql, "store");
                const all = await models.queryWith("SELECT * FROM tasks WHERE title = 'low'", "server");
                const paged = await models.query("SELECT * FROM tasks ORDER BY priority LIMIT 1 OFFSET 1");
                const missing = server.rows.map((r) => r.values.map((v) => v === undefined));
                return { server, store, all, paged, missing };"#,
                &[("ws", json!(ws)), ("token", token("alice")?)],
            ),
        )?;
        let rows = |result: &Value| -> Vec<Value> {
            result["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| json!([r["model"], r["select"], r["values"], r["version"]]))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(online["server"]["origin"], json!("server"));
        assert_eq!(online["store"]["origin"], json!("store"));
        // A missing path is `undefined` (left out of the JSON here), a present one its value.
        let expected = |version: Value| {
            vec![
                json!(["q2", "paths", ["high", 3], version]),
                json!(["q4", "paths", [null, 2], version]),
                json!(["q3", "paths", ["mid", 2], version]),
            ]
        };
        // Created and never edited: version 0.
        let version = json!(0);
        assert_eq!(online["missing"], json!([[false, false], [true, false], [false, false]]));
        assert_eq!(rows(&online["server"]), expected(version.clone()), "{online}");
        assert_eq!(rows(&online["store"]), rows(&online["server"]), "the store agrees");
        assert_eq!(online["server"]["total"], json!(3));
        assert_eq!(online["all"]["rows"][0]["select"], json!("all"));
        assert_eq!(online["all"]["rows"][0]["data"], json!({ "title": "low", "priority": 1 }));
        assert_eq!(online["all"]["rows"][0]["collection"], json!("tasks"));
        assert!(online["all"]["rows"][0]["createdAt"].as_f64() > Some(0.0), "{online}");
        assert_eq!(online["paged"]["total"], json!(4));
        assert_eq!(online["paged"]["rows"].as_array().map(Vec::len), Some(1));
        Ok(browser)
    })?;

    // Offline: the store answers, with a change made offline; asking the server fails.
    api.server.stop().await?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let offline = browser.evaluate(
            "alice",
            r#"await domain.waitFor("reconnecting");
            const models = domain.models();
            const model = await models.open("q1");
            await model.stored(await model.root().set("priority", 5));
            const auto = await models.query("SELECT title FROM tasks WHERE priority > 2 ORDER BY priority DESC");
            const codes = [];
            for (const attempt of [
                () => models.queryWith("SELECT * FROM tasks", "server"),
                () => models.query("SELECT * FROM tasks\nWHERE x = = 2"),
                () => models.query("SELECT * FROM a JOIN b ON a.x = b.y"),
                () => models.queryWith("SELECT * FROM tasks", "anywhere"),
            ]) {
                try { await attempt(); codes.push("no error"); }
                catch (e) { codes.push([e.name, e.code, e.position ?? null]); }
            }
            return { auto, codes };"#,
        )?;
        assert_eq!(offline["auto"]["origin"], json!("store"));
        let titles: Vec<&Value> = offline["auto"]["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .map(|r| &r["values"][0])
            .collect();
        assert_eq!(titles, [&json!("low"), &json!("high")], "{offline}");
        let codes = offline["codes"].as_array().context("codes")?;
        assert_eq!(codes[0], json!(["ConcordError", "offline", null]));
        assert_eq!(codes[1][1], json!("invalid_query"), "{offline}");
        assert_eq!(codes[1][2], json!({ "line": 2, "column": 11 }), "{offline}");
        assert_eq!(codes[2][1], json!("invalid_query"), "{offline}");
        assert_eq!(codes[3], json!(["ConcordError", "invalid_argument", null]));
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and the built page: cargo xtask browser-test"]
async fn identities_are_looked_up_and_searched_through_the_js_api() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let (page, ws) = (api.page.clone(), api.ws.clone());
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut browser = Browser::start()?;
        // Each user connects with a token naming them and their email.
        for (user, name) in
            [("alice", "Alice Liddell"), ("albert", "albert Einstein"), ("bob", "Bob")]
        {
            browser.run(&format!("api {user} {page}"))?;
            let email = format!("{user}@example.org");
            let token = mint_identity_token(
                SECRET,
                user,
                Some(name),
                Some(&email),
                Duration::from_secs(3600),
            )?;
            let connect = "window.domain = new concord.Domain($ws, {});
                return (await domain.connectWithJwt($token)).session;";
            browser
                .evaluate(user, &script(connect, &[("ws", json!(ws)), ("token", json!(token))]))?;
        }
        let bob = browser.evaluate(
            "bob",
            r#"const identity = domain.identity();
            return {
                alice: await identity.user("alice"),
                himself: await identity.user("bob"),
                nobody: await identity.user("nobody"),
                several: await identity.users(["bob", "nobody", "alice"]),
                search: await identity.search("AL"),
                limited: await identity.search("al", 1),
            };"#,
        )?;
        // Names for everyone, an email only for its own user.
        assert_eq!(
            bob["alice"],
            json!({ "user": "alice", "displayName": "Alice Liddell", "email": null })
        );
        assert_eq!(
            bob["himself"],
            json!({ "user": "bob", "displayName": "Bob", "email": "bob@example.org" })
        );
        assert_eq!(bob["nobody"], Value::Null);
        let ids = |list: &Value| -> Vec<String> {
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["user"].as_str().map(str::to_owned))
                .collect()
        };
        assert_eq!(ids(&bob["several"]), ["alice", "bob"]);
        assert_eq!(ids(&bob["search"]), ["albert", "alice"], "by name prefix, ignoring case");
        assert!(bob["search"].as_array().into_iter().flatten().all(|i| i["email"].is_null()));
        assert_eq!(bob["limited"].as_array().map(Vec::len), Some(1));
        let alice =
            browser.evaluate("alice", r#"return await domain.identity().user("alice");"#)?;
        assert_eq!(alice["email"], json!("alice@example.org"), "her own email");

        // Offline, bob's IndexedDB store answers with what he saw.
        let offline = browser.evaluate(
            "bob",
            r#"await domain.disconnect();
            const identity = domain.identity();
            return { alice: await identity.user("alice"), search: await identity.search("ali"),
                never: await identity.user("nobody") };"#,
        )?;
        assert_eq!(offline["alice"], bob["alice"]);
        assert_eq!(ids(&offline["search"]), ["alice"]);
        assert_eq!(offline["never"], Value::Null);
        Ok(())
    });
    api.server.stop().await?;
    result
}
