//! What `concord serve` limits that only shows from outside its process: the memory it holds
//! for a client that does not read, running out of file descriptors, and the open-file limit
//! it raises at start. Each reads the server's `/proc/<pid>` (Linux).

#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{BIN, ServeProcess, connect, create_model, open_model, text_document, token};
use concord_ot::{Document, IdGenerator, ReplicaId, Value};
use concord_protocol::{ClientRequest, KnownModel, ModelId, ServerPush};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A script that runs `concord` after the shell commands `setup` (limits, for example).
fn wrapper(dir: &Path, setup: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("concord-with-limits");
    std::fs::write(&path, format!("#!/bin/sh\n{setup}\nexec {BIN} \"$@\"\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A line of `/proc/<pid>/status`, such as `VmHWM` (in KiB).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).context("no such field")?;
    Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
}

/// The process's soft and hard limits on open files, from `/proc/<pid>/limits`.
fn open_file_limits(pid: &str) -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no limit")?;
    let mut values = line["Max open files".len()..].split_whitespace();
    let mut next = || -> anyhow::Result<u64> {
        let value = values.next().context("no value")?;
        Ok(if value == "unlimited" { u64::MAX } else { value.parse()? })
    };
    Ok((next()?, next()?))
}

/// The CPU time the process has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn ticks_per_second() -> anyhow::Result<u64> {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

/// `{"text": text}` with ids from `replica`.
fn document_with(replica: u64, text: &str) -> Document {
    let mut ids = IdGenerator::new(ReplicaId(replica), 0);
    let value = Value::from_json(&serde_json::json!({ "text": text }), &mut ids).unwrap();
    Document::new(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_dropped_before_the_server_holds_more_than_its_bound()
-> anyhow::Result<()> {
    const BOUND: u64 = 2 << 20;
    const MODELS: usize = 4;
    const ROUNDS: usize = 60;
    let dir = tempfile::tempdir()?;
    let server = common::serve(dir.path(), &["--max-queued-bytes", &BOUND.to_string()])?;
    let pid = server.pid();
    let url = server.url("acme", "big");
    let alice_token = token(dir.path(), "alice")?;
    let mut alice = connect(&url, &alice_token).await?;
    let big: Vec<ModelId> =
        (0..MODELS).map(|i| ModelId::new(format!("big-{i}")).unwrap()).collect();
    for model in &big {
        create_model(&mut alice, model, document_with(1, &"x".repeat(256 << 10))).await?;
    }
    let doc = ModelId::new("doc")?;
    create_model(&mut alice, &doc, text_document(1)).await?;
    let opened = open_model(&mut alice, &doc).await?;
    let mut bob = connect(&url, &token(dir.path(), "bob")?).await?;
    open_model(&mut bob, &doc).await?;
    // An honest subscriber first: the server has sent each large model once.
    let all: Vec<KnownModel> =
        big.iter().map(|model| KnownModel { model: model.clone(), version: None }).collect();
    let subscribe = ClientRequest::SubscribeOffline {
        subscribe: all.clone(),
        unsubscribe: vec![],
        replace: true,
    };
    bob.request(subscribe.clone()).await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for _ in 0..MODELS {
        bob.push(|push| matches!(push, ServerPush::OfflineUpdate { .. }).then_some(())).await?;
    }
    let before = status_kib(pid, "VmHWM")? * 1024;

    // Mallory asks for the four models 60 times over (60 MiB of snapshots, in 2 KiB of
    // requests) and reads nothing.
    let mut mallory = connect(&url, &token(dir.path(), "mallory")?).await?;
    for _ in 0..ROUNDS {
        mallory.send_request(subscribe.clone()).await?;
    }
    server.wait_for_log("bytes queued")?;
    let closed = mallory.closed().await?;
    assert!(closed.code.is_none() || closed.code == Some(1008), "{closed:?}");
    let peak = status_kib(pid, "VmHWM")? * 1024;
    let grown = peak.saturating_sub(before);
    println!("the server's peak memory grew by {} KiB", grown >> 10);
    // The bound, plus room for what is in flight (a socket's buffer, a frame being encoded).
    assert!(grown < BOUND + (16 << 20), "the server's peak memory grew by {} MiB", grown >> 20);

    // Nobody else noticed.
    let text = opened.snapshot.data.element_at(&[concord_ot::PathSegment::Key("text".into())]);
    let kind = concord_ot::OperationKind::StringSplice {
        index: 0,
        delete_count: 0,
        insert: "still here".into(),
    };
    let operation = concord_ot::DiscreteOperation::new(text.context("no text")?, kind).into();
    alice.submit(&doc, ReplicaId(1), 1, opened.snapshot.version, operation).await?;
    let acked =
        alice.push(|push| matches!(push, ServerPush::Ack { seq: 1, .. }).then_some(())).await;
    assert!(acked.is_ok(), "alice's submission was not acknowledged: {acked:?}");
    let heard =
        bob.push(|push| matches!(push, ServerPush::RemoteOperation { .. }).then_some(())).await;
    assert!(heard.is_ok(), "bob did not hear alice's operation: {heard:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_neither_locks_clients_out_nor_spins() -> anyhow::Result<()>
{
    const LIMIT: u64 = 64;
    const HALF_OPEN: usize = 150;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let script = wrapper(dir.path(), &format!("ulimit -n {LIMIT}"))?;
    let server = ServeProcess::start(&script, &data, &["--header-read-timeout-secs", "1"])?;
    let pid = server.pid();
    assert_eq!(open_file_limits(&pid.to_string())?, (LIMIT, LIMIT));
    server.wait_for_log("open file limit")?;
    let url = server.url("acme", "fds");
    let token = token(&data, "alice")?;

    // More sockets than the server has descriptors, each sending half a request.
    let mut half_open = Vec::new();
    for _ in 0..HALF_OPEN {
        let mut tcp = TcpStream::connect(server.addr()).await?;
        tcp.write_all(b"GET /acme/fds HTTP/1.1\r\nHost: concord\r\n").await?;
        half_open.push(tcp);
    }
    server.wait_for_log("cannot accept connections")?;
    let (cpu_before, started) = (cpu_ticks(pid)?, Instant::now());

    // An honest client gets in once timed-out request heads free descriptors, although it
    // waits in the listen queue behind all of them.
    let mut alice = connect(&url, &token).await?;
    let model = ModelId::new("doc")?;
    create_model(&mut alice, &model, text_document(1)).await?;
    let wall = started.elapsed();
    let cpu =
        Duration::from_secs_f64((cpu_ticks(pid)? - cpu_before) as f64 / ticks_per_second()? as f64);
    // Not a benchmark: a server retrying accept without pause would burn a whole core.
    assert!(cpu < wall / 4, "the server used {cpu:?} of CPU in {wall:?} while out of descriptors");
    println!("out of descriptors for {wall:?}, the server used {cpu:?} of CPU");

    // Everything closed, it serves on.
    drop(half_open);
    let mut again = connect(&url, &token).await?;
    open_model(&mut again, &model).await?;
    alice.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_file_limit_is_raised_to_the_hard_limit_at_start() -> anyhow::Result<()> {
    let (_, own_hard) = open_file_limits("self")?;
    let hard = own_hard.min(4096);
    let soft = hard / 2;
    if soft < 64 {
        bail!("this machine's hard open-file limit ({own_hard}) is too low for the test");
    }
    let dir = tempfile::tempdir()?;
    let script = wrapper(dir.path(), &format!("ulimit -Sn {soft}\nulimit -Hn {hard}"))?;
    let server = ServeProcess::start(&script, &dir.path().join("data"), &[])?;
    assert_eq!(open_file_limits(&server.pid().to_string())?, (hard, hard));
    server.wait_for_log("raised the open file limit")?;
    Ok(())
}
