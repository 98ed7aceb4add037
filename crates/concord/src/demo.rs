//! `concord demo`: the whole story in one command. A server runs in this process on a free
//! port with a temporary data directory; two clients, each with its own redb store,
//! collaborate live; Bob goes offline, both keep editing (Bob also creates and deletes a
//! model), Bob's process state is dropped and rebuilt from his store, he reconnects and
//! syncs with a progress bar, and the converged result is checked and printed.
//!
//! It exits non-zero if anything did not converge.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use concord_client::{
    CollectionId, ConnectionState, Domain, DomainEvent, ModelId, RealTimeModel, RedbAdapter,
};
use concord_server::{Server, ServerConfig, mint_token};
use serde_json::json;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's data (server and client stores) in this directory instead of a
    /// temporary one
    #[arg(long, value_name = "DIR")]
    keep: Option<std::path::PathBuf>,
    /// Background models Bob syncs after reconnecting (each with an offline change)
    #[arg(long, default_value_t = 20)]
    models: usize,
    /// Instead: a throwaway PostgreSQL and three cluster nodes on it, two clients on
    /// different nodes editing one note, then its node stopped (needs PostgreSQL installed)
    #[arg(long)]
    cluster: bool,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let dir = args.keep.clone().unwrap_or_else(|| temp.path().to_path_buf());
    if args.cluster {
        return runtime.block_on(crate::demo_cluster::demo(&dir));
    }
    runtime.block_on(demo(&dir, args.models))
}

pub(crate) fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

pub(crate) fn step(n: u32, title: &str) {
    println!("\n{n}. {title}");
}

pub(crate) const SECRET: &[u8] = b"concord demo secret: not for production";

fn domain(url: &str, dir: &Path) -> Domain {
    Domain::builder(url)
        .storage(RedbAdapter::new(dir))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
}

pub(crate) fn token(user: &str) -> anyhow::Result<String> {
    Ok(mint_token(SECRET, user, None, Duration::from_secs(3600))?)
}

pub(crate) async fn text_of(model: &RealTimeModel) -> anyhow::Result<String> {
    let value = model.value().await?;
    Ok(value["text"].as_str().unwrap_or_default().to_owned())
}

async fn demo(dir: &Path, background: usize) -> anyhow::Result<()> {
    say("Concord demo: two people, one shared note, one of them offline for a while.");
    let server = Server::spawn(ServerConfig::development(dir.join("server"), SECRET)).await?;
    let url = server.url("demo", "notes");

    step(1, "A server starts, and Alice and Bob connect, each with a store on disk.");
    say(format!("   server: {url} (data in {})", dir.join("server").display()));
    let alice = domain(&url, &dir.join("alice"));
    alice.connect_with_jwt(token("alice")?).await?;
    let bob = domain(&url, &dir.join("bob"));
    bob.connect_with_jwt(token("bob")?).await?;
    say("   alice: connected   bob: connected");

    step(2, "Alice creates a note; both edit it live.");
    let notes = CollectionId::new("notes")?;
    let note = ModelId::new("shared-note")?;
    alice
        .models()
        .create_with_id(&note, &notes, json!({ "text": "Shopping:", "done": false }))
        .await?;
    let a_note = alice.models().open(&note).await?;
    let a_text = a_note.root().get("text").await?.context("no text")?.as_string()?;
    let change = a_text.insert(9, " milk").await?;
    a_note.acknowledged(change).await?;
    let b_note = bob.models().open(&note).await?;
    let b_text = b_note.root().get("text").await?.context("no text")?.as_string()?;
    let change = b_text.insert(b_text.len().await?, ", bread").await?;
    b_note.acknowledged(change).await?;
    wait_until("Alice sees Bob's edit", || async {
        Ok(text_of(&a_note).await? == "Shopping: milk, bread")
    })
    .await?;
    say(format!("   alice sees: {:?}", text_of(&a_note).await?));
    say(format!("   bob sees:   {:?}", text_of(&b_note).await?));

    step(3, "Bob subscribes to a note he will delete, and to others he will edit offline.");
    let doomed = ModelId::new("old-note")?;
    let mut alice_events = alice.events();
    alice.models().create_with_id(&doomed, &notes, json!({ "text": "obsolete" })).await?;
    let mut others = Vec::new();
    for i in 0..background {
        let id = ModelId::new(format!("note-{i:03}"))?;
        alice.models().create_with_id(&id, &notes, json!({ "text": format!("note {i}") })).await?;
        others.push(id);
    }
    // Created here at once; subscribing needs them at the server.
    let mut unconfirmed = others.len() + 1;
    while unconfirmed > 0 {
        let event = tokio::time::timeout(Duration::from_secs(30), alice_events.next())
            .await
            .context("the server did not confirm alice's notes")?
            .context("the domain stopped")?;
        if let DomainEvent::Created { .. } = event {
            unconfirmed -= 1;
        }
    }
    let mut subscribed = vec![doomed.clone()];
    subscribed.extend(others.iter().cloned());
    bob.models().subscribe_offline(&subscribed).await?;
    wait_until("Bob's store holds every subscribed note", || async {
        let stored = bob.models().stored_models().await?;
        Ok(subscribed.iter().all(|id| stored.iter().any(|m| m.id == *id && m.available)))
    })
    .await?;
    say(format!("   bob's store holds {} notes", bob.models().stored_models().await?.len()));

    step(4, "Bob goes offline. Both keep working.");
    bob.disconnect().await?;
    say(format!("   bob: {:?}", bob.state()));
    let change = b_text.insert(b_text.len().await?, ", eggs (bob, offline)").await?;
    b_note.stored(change).await?;
    for id in &others {
        let model = bob.models().open(id).await?;
        let text = model.root().get("text").await?.context("no text")?.as_string()?;
        let change = text.insert(0, "✓ ").await?;
        model.stored(change).await?;
    }
    let created = bob.models().create(&notes, json!({ "text": "made on the train" })).await?;
    bob.models().remove(&doomed).await?;
    say(format!(
        "   bob (offline) edits the note and {} others, creates {created}, deletes {doomed}",
        others.len()
    ));
    let change = a_text.insert(0, "TODO ").await?;
    a_note.acknowledged(change).await?;
    say(format!("   alice edits too: {:?}", text_of(&a_note).await?));

    step(5, "Bob's app quits: everything in memory is dropped. It restarts from his store.");
    bob.close().await?;
    drop((b_text, b_note, bob));
    let bob = domain(&url, &dir.join("bob"));
    bob.initialize_offline("bob").await?;
    let stored = bob.models().stored_models().await?;
    let pending = stored
        .iter()
        .filter(|m| m.has_pending_changes || m.created_locally || m.deleted_locally)
        .count();
    say(format!(
        "   bob's store: {} models, {pending} with changes the server has not seen",
        stored.len()
    ));
    let b_note = bob.models().open(&note).await?;
    say(format!("   bob sees (offline): {:?}", text_of(&b_note).await?));

    step(6, "Bob reconnects; his changes sync, a few models at a time.");
    let mut events = bob.events();
    bob.connect_with_jwt(token("bob")?).await?;
    let mut created_seen = false;
    let mut deleted_seen = false;
    let mut synced = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(created_seen && deleted_seen && synced) {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("syncing took more than a minute")?
            .context("the domain stopped")?;
        match event {
            DomainEvent::SyncProgress { done, failed, total } => {
                progress(done, total);
                if failed > 0 {
                    bail!("{failed} models could not be synced");
                }
                synced = done >= total;
            }
            DomainEvent::Created { model } if model == created => created_seen = true,
            DomainEvent::Deleted { model } if model == doomed => deleted_seen = true,
            DomainEvent::CreationRefused { model, error } => {
                bail!("creating {model} was refused: {error:?}")
            }
            DomainEvent::DeletionRefused { model, error } => {
                bail!("deleting {model} was refused: {error:?}")
            }
            DomainEvent::ChangesRejected { model, error } => {
                bail!("changes to {model} were refused: {error:?}")
            }
            _ => {}
        }
    }
    println!();
    ensure!(bob.state() == ConnectionState::Connected, "bob is not connected");
    say(format!("   the server created {created} and deleted {doomed}"));

    step(7, "The result.");
    let expected = "TODO Shopping: milk, bread, eggs (bob, offline)";
    wait_until("both see the same note", || async {
        Ok(text_of(&a_note).await? == expected && text_of(&b_note).await? == expected)
    })
    .await?;
    say(format!("   alice: {:?}", text_of(&a_note).await?));
    say(format!("   bob:   {:?}", text_of(&b_note).await?));
    for id in &others {
        let model = alice.models().open(id).await?;
        let text = text_of(&model).await?;
        wait_until("alice sees bob's offline edits", || async {
            Ok(text_of(&model).await?.starts_with("✓ "))
        })
        .await
        .with_context(|| format!("{id} is {text:?}"))?;
    }
    let made = alice.models().open(&created).await?;
    ensure!(text_of(&made).await? == "made on the train", "alice does not see bob's new note");
    say(format!(
        "   alice sees bob's new note and his {} offline edits; {doomed} is gone",
        others.len()
    ));
    say("\nConverged.");

    server.stop().await.context("the server failed")?;
    Ok(())
}

fn progress(done: usize, total: usize) {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH).min(WIDTH);
    print!("\r   syncing [{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(WIDTH - filled));
    let _ = std::io::stdout().flush();
}

pub(crate) async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await? {
        if tokio::time::Instant::now() > deadline {
            bail!("did not converge: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
