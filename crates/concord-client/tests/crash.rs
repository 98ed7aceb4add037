//! A client process killed with SIGKILL while offline loses none of its stored changes: a
//! new process on the same store pushes them all to the server.
//!
//! The test re-runs its own binary as the client process (`offline_writer`, which does
//! nothing unless `CONCORD_CRASH_CHILD` is set), so the process that dies is a real one.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use concord_client::ConnectionState;
use serde_json::json;
use support::*;

/// The child: offline, appends numbered lines to the model's string, printing each seq
/// once it is stored, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writer() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("CONCORD_CRASH_CHILD") else { return Ok(()) };
    let (url, store) = spec.split_once('|').unwrap();
    let domain = domain(url, std::path::Path::new(store));
    domain.initialize_offline("writer").await?;
    let model = domain.models().open(&id("log")).await?;
    let text = model.root().get("text").await?.unwrap().as_string()?;
    for n in 0.. {
        let change = text.insert(text.len().await?, &format!("line {n}\n")).await?;
        model.stored(change).await?;
        println!("stored {n}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stored_before_a_sigkill_reach_the_server() -> anyhow::Result<()> {
    if std::env::var("CONCORD_CRASH_CHILD").is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let store = dir.path().join("writer");
    // The writer downloads the model once, online, then the process ends.
    {
        let writer = domain(&url(&server), &store);
        writer.connect_with_jwt(token("writer")).await?;
        create_confirmed(&writer, &[id("log")], json!({ "text": "" })).await?;
        writer.models().subscribe_offline(&[id("log")]).await?;
        eventually("the log is in the store", || async {
            let stored = writer.models().stored_models().await?;
            Ok(stored.iter().any(|m| m.id == id("log") && m.available))
        })
        .await?;
        writer.close().await?;
    }
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--exact", "offline_writer", "--nocapture", "--test-threads", "1"])
            .env("CONCORD_CRASH_CHILD", format!("{}|{}", url(&server), store.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("stored ") {
                    last = n.trim().parse::<u64>().ok();
                    // Kill it mid-stream, after some writes.
                    if last >= Some(30) {
                        break;
                    }
                }
            }
            last
        });
        let last = tokio::task::spawn_blocking(move || reader.join().unwrap()).await?;
        // SIGKILL: no destructor, no flush.
        child.kill()?;
        child.wait()?;
        assert!(last >= Some(30), "round {round}: the writer stored only up to {last:?}");
    }

    // A new process on the same store connects: everything stored reaches the server.
    let writer = domain(&url(&server), &store);
    writer.connect_with_jwt(token("writer")).await?;
    writer.wait_for(ConnectionState::Connected).await?;
    let reader = connected(&server, dir.path(), "reader").await?;
    let lines = || async {
        let model = reader.models().open(&id("log")).await?;
        let text = model.value().await?["text"].as_str().unwrap_or_default().to_owned();
        anyhow::Ok(text.lines().count())
    };
    // Each round wrote lines 0..=30 at least: 3 × 31 lines were stored before the kills.
    eventually("the server has every stored line", || async { Ok(lines().await? >= 93) }).await?;
    let model = reader.models().open(&id("log")).await?;
    let text = model.value().await?["text"].as_str().unwrap_or_default().to_owned();
    assert_eq!(text.lines().filter(|l| *l == "line 30").count(), 3, "{text}");
    server.stop().await?;
    Ok(())
}
