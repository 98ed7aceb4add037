//! Several `concord serve` nodes on one real PostgreSQL (`docs/cluster.md`): a node that
//! is paused past its lease writes nothing when it wakes and steps the model down, another
//! node takes the model over; the owner killed (SIGKILL) under load, another node takes
//! over within the lease time and every acknowledged operation is there, once; a node
//! shut down gracefully releases its leases; clients on different nodes edit one model
//! through its owner (forwarding); a rolling restart of every node loses nothing; naming
//! models that do not exist leases nothing.

mod common;
#[path = "../../concord-server/tests/support/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{ServeProcess, connect, create_model, serve, text_document, token};
use concord_ot::{DiscreteOperation, ElementId, OperationKind, PathSegment, ReplicaId};
use concord_protocol::{
    Auth, ClientRequest, CollectionId, CreationNonce, ErrorCode, KnownModel, ModelId,
    OfflineUpdate, OpenedModel, PermissionGrants, Permissions, ServerMessage, ServerPush,
    ServerResponse,
};
use concord_testkit::wire::WireClient;

/// Short leases keep the test short; a node takes over after at most this long.
const LEASE_MILLIS: &str = "1000";

fn node(dir: &std::path::Path, store: &str) -> anyhow::Result<ServeProcess> {
    serve(dir, &["--store", store, "--cluster", "--lease-millis", LEASE_MILLIS])
}

/// Opens `model`, or the error the node answered with.
async fn try_open(
    client: &mut WireClient,
    model: &ModelId,
) -> anyhow::Result<Result<OpenedModel, String>> {
    let request = ClientRequest::OpenModel { model: model.clone(), auto_create: false };
    Ok(match client.request(request).await? {
        Ok(ServerResponse::ModelOpened(opened)) => Ok(opened),
        Ok(other) => bail!("opening {model}: {other:?}"),
        Err(error) => Err(error.message),
    })
}

/// Opens `model` on `url`, connecting again until the node serves it (itself, or through
/// the owner: while a dead or paused owner's lease runs, forwarding to it fails and the
/// connection closes); returns the client, the model and how long it took.
async fn open_when_served(
    url: &str,
    token: &str,
    model: &ModelId,
) -> anyhow::Result<(WireClient, OpenedModel, Duration)> {
    let started = Instant::now();
    loop {
        let mut client = connect(url, token).await?;
        let why = match try_open(&mut client, model).await {
            Ok(Ok(opened)) => return Ok((client, opened, started.elapsed())),
            Ok(Err(why)) => why,
            Err(e) => e.to_string(),
        };
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{url} never served {model}: {why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text_of(opened: &OpenedModel) -> anyhow::Result<(ElementId, String)> {
    let data = &opened.snapshot.data;
    let text = data.element_at(&[PathSegment::Key("text".into())]).context("no `text`")?;
    Ok((text, data.text(text).context("`text` is not a string")?))
}

/// Submits an operation inserting `marker`; its acknowledged version, or why not.
async fn insert(
    client: &mut WireClient,
    opened: &OpenedModel,
    replica: ReplicaId,
    seq: u64,
    base: u64,
    marker: &str,
) -> anyhow::Result<Result<u64, String>> {
    let (text, _) = text_of(opened)?;
    let kind = OperationKind::StringSplice { index: 0, delete_count: 0, insert: marker.into() };
    let model = opened.model.clone();
    if let Err(e) =
        client.submit(&model, replica, seq, base, DiscreteOperation::new(text, kind).into()).await
    {
        return Ok(Err(format!("sending failed: {e}")));
    }
    let answer = client
        .push(|push| match push {
            ServerPush::Ack { model: m, seq: s, version, .. } if *m == model && *s == seq => {
                Some(Ok(*version))
            }
            ServerPush::SubmitRejected { model: m, seq: s, error } if *m == model && *s == seq => {
                Some(Err(error.message.clone()))
            }
            _ => None,
        })
        .await;
    Ok(answer.unwrap_or_else(|e| Err(format!("the connection ended: {e}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_writes_nothing_and_a_killed_owner_is_taken_over_with_nothing_lost()
-> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("cluster");
    let mut a = node(dir.path(), &store)?;
    let mut b = node(dir.path(), &store)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let (url_a, url_b) = (a.url("acme", "team"), b.url("acme", "team"));

    // a creates the model and sequences it.
    let mut on_a = connect(&url_a, &token).await?;
    create_model(&mut on_a, &model, text_document(1)).await?;
    let (mut on_a, opened_a, _) = open_when_served(&url_a, &token, &model).await?;
    let v1 = insert(&mut on_a, &opened_a, ReplicaId(11), 1, opened_a.snapshot.version, "<a1>")
        .await?
        .map_err(anyhow::Error::msg)?;
    // b serves it too, forwarding to a.
    let mut forwarded = connect(&url_b, &token).await?;
    let through_b = try_open(&mut forwarded, &model).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(through_b.snapshot.version, v1, "b forwards to a");

    // a is paused past its lease: b gives its upstream session up (the forwarded client is
    // told, while a is still paused), takes the model over and commits on it.
    a.signal("STOP")?;
    let closing = forwarded.push(|push| match push {
        ServerPush::SessionClosing { code, .. } => Some(*code),
        _ => None,
    });
    let code = tokio::time::timeout(Duration::from_secs(20), closing)
        .await
        .context("the forwarded client was left with a paused owner")??;
    assert_eq!(code, ErrorCode::UNAVAILABLE);
    let (mut on_b, opened_b, took) = open_when_served(&url_b, &token, &model).await?;
    println!("b took the model over {took:?} after a was paused");
    let (_, text) = text_of(&opened_b)?;
    assert_eq!(text, "<a1>", "b loaded what a acknowledged");
    let v2 = insert(&mut on_b, &opened_b, ReplicaId(21), 1, opened_b.snapshot.version, "<b1>")
        .await?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(v2, v1 + 1);
    // a wakes up, still serving the model as far as it knew; what it is sent now is never
    // acknowledged, and it steps down.
    a.signal("CONT")?;
    let late = insert(&mut on_a, &opened_a, ReplicaId(11), 2, v1, "<a2>").await?;
    assert!(late.is_err(), "a paused node acknowledged {late:?}");
    a.wait_for_log("lease")?;
    let stored = cluster.sql_in("cluster", "SELECT string_agg(version::text, ',' ORDER BY version) FROM operations WHERE model = 'doc'");
    assert_eq!(stored, format!("{v1},{v2}"), "nothing of a's after its pause");

    // b is killed with submissions in flight: a takes over within the lease time, with
    // every acknowledged operation, once.
    let mut acked = vec!["<a1>".to_owned(), "<b1>".to_owned()];
    let mut base = v2;
    for seq in 2..=20 {
        let marker = format!("<b{seq}>");
        base = insert(&mut on_b, &opened_b, ReplicaId(21), seq, base, &marker)
            .await?
            .map_err(anyhow::Error::msg)?;
        acked.push(marker);
    }
    let _ = on_b
        .submit(&model, ReplicaId(21), 21, base, {
            let (text, _) = text_of(&opened_b)?;
            DiscreteOperation::new(
                text,
                OperationKind::StringSplice { index: 0, delete_count: 0, insert: "<b21>".into() },
            )
            .into()
        })
        .await;
    b.kill()?;
    let killed = Instant::now();
    let (_on_a, opened, _) = open_when_served(&url_a, &token, &model).await?;
    println!("a took the model over {:?} after b was killed", killed.elapsed());
    let (_, text) = text_of(&opened)?;
    for marker in &acked {
        assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {text}");
    }
    assert_eq!(text.matches('<').count() as u64, opened.snapshot.version, "{text}");

    // A graceful shutdown hands the model over without waiting for the lease: a releases
    // it once everything is durable, and the restarted b serves it with all of it.
    b.restart()?;
    let version = opened.snapshot.version;
    a.stop()?;
    let lease =
        cluster.sql_in("cluster", "SELECT expires_at FROM concord_leases WHERE model = 'doc'");
    assert_eq!(lease, "-infinity", "a released its lease");
    let (_on_b, opened, _) = open_when_served(&b.url("acme", "team"), &token, &model).await?;
    assert_eq!(opened.snapshot.version, version);
    Ok(())
}

/// The nodes' PostgreSQL connections are ended again and again while a client edits: a
/// node renews on fresh connections and keeps its leases, or loses them and another node
/// takes the model over; the client resends what was not acknowledged to whichever node
/// serves the model, and everything acknowledged is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_nodes_postgres_connections_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("connections");
    let a = node(dir.path(), &store)?;
    let b = node(dir.path(), &store)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let urls = [a.url("acme", "team"), b.url("acme", "team")];
    let mut creator = connect(&urls[0], &token).await?;
    create_model(&mut creator, &model, text_document(1)).await?;
    creator.close().await?;

    let (mut client, mut opened, _) = open_when_served(&urls[0], &token, &model).await?;
    let mut acked = Vec::new();
    let (mut ended, mut terminated) = (0_u64, 0_usize);
    let mut seq = 1;
    while seq <= 30 {
        if seq % 6 == 0 && ended < seq / 6 {
            ended += 1;
            terminated += cluster.terminate_connections("connections");
        }
        let marker = format!("<{seq}>");
        match insert(&mut client, &opened, ReplicaId(7), seq, opened.snapshot.version, &marker)
            .await?
        {
            Ok(_) => {
                acked.push(marker);
                seq += 1;
            }
            Err(why) => {
                // Resend the same submission to whichever node serves the model now: if it
                // was committed, its answer is the original acknowledgement.
                println!("submission {seq}: {why}");
                (client, opened) = open_anywhere(&urls, &token, &model).await?;
            }
        }
    }
    assert!(terminated as u64 >= ended, "{terminated} connections ended in {ended} rounds");
    let (_, text) = text_of(&open_anywhere(&urls, &token, &model).await?.1)?;
    for marker in &acked {
        assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {text}");
    }
    assert_eq!(text.matches('<').count(), acked.len(), "{text}");
    Ok(())
}

/// Opens `model` on whichever of `urls` serves it (any node does, forwarding to the owner;
/// while the owner's lease is being lost, a node may fail the open).
async fn open_anywhere(
    urls: &[String],
    token: &str,
    model: &ModelId,
) -> anyhow::Result<(WireClient, OpenedModel)> {
    open_while_restarting(urls, token, model).await
}

/// A client naming model ids costs no lease rows: a node leases only models that exist or
/// that the request may create. Opening ids that do not exist is answered as on a single
/// server, with `concord_leases` unchanged; a client who may not read a model another node
/// serves learns nothing of that node; one who may is served through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_models_that_do_not_exist_leases_nothing_and_owners_are_named_only_to_readers()
-> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("naming");
    let a = node(dir.path(), &store)?;
    let b = node(dir.path(), &store)?;
    let (writer, mallory) = (token(dir.path(), "writer")?, token(dir.path(), "mallory")?);
    let (url_a, url_b) = (a.url("acme", "team"), b.url("acme", "team"));

    // writer's model on a, readable by nobody else.
    let secret = ModelId::new("secret")?;
    let mut on_a = connect(&url_a, &writer).await?;
    let permissions = PermissionGrants {
        override_collection: true,
        world: Permissions::NONE,
        users: Default::default(),
    };
    let request = ClientRequest::CreateModel {
        model: secret.clone(),
        collection: CollectionId::new("notes")?,
        data: text_document(1),
        nonce: CreationNonce([9; 16]),
        permissions: Some(permissions),
    };
    match on_a.request(request).await? {
        Ok(ServerResponse::ModelCreated { .. }) => {}
        other => bail!("creating {secret}: {other:?}"),
    }
    try_open(&mut on_a, &secret).await?.map_err(anyhow::Error::msg)?;
    let leases = || cluster.sql_in("naming", "SELECT count(*) FROM concord_leases");
    let before = leases();
    assert_eq!(before, "1", "the created model's lease");

    // mallory names 200 ids that do not exist, on both nodes, in several ways.
    let mut on_b = connect(&url_b, &mallory).await?;
    let mut also_a = connect(&url_a, &mallory).await?;
    for n in 0..100 {
        for client in [&mut on_b, &mut also_a] {
            let model = ModelId::new(format!("nothing-{n}"))?;
            let refused = try_open(client, &model).await?.expect_err("no such model");
            assert!(refused.contains("no model") && !refused.contains("node"), "{refused}");
            let request = ClientRequest::GetPermissions { model: model.clone() };
            let error = client.request(request).await?.expect_err("no such model");
            assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND, "{error:?}");
        }
    }
    assert_eq!(leases(), before, "naming models that do not exist leased them");

    // mallory may not read `secret`: through b (which forwards to a) the answer is the
    // one a single server gives for a model one cannot read, naming no node.
    let refused = try_open(&mut on_b, &secret).await?.expect_err("mallory may not read it");
    assert!(refused.contains("no permission"), "{refused}");
    for name in [a.addr().to_string(), "served by".into()] {
        assert!(!refused.contains(&name), "{refused} names the owner");
    }
    // writer may: b serves it, through a, and leases nothing for it.
    let mut writer_on_b = connect(&url_b, &writer).await?;
    try_open(&mut writer_on_b, &secret).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(leases(), before);

    // Creating is still leased, on whichever node is asked.
    let created = ModelId::new("fresh")?;
    let mut creator = connect(&url_b, &mallory).await?;
    create_model(&mut creator, &created, text_document(3)).await?;
    try_open(&mut creator, &created).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(leases(), "2");
    Ok(())
}

/// Every node of three is restarted gracefully, one at a time, while clients edit one
/// model: each stopping node hands the model over, the clients reconnect to a node that
/// serves it and resend what was not acknowledged, and every acknowledged operation is
/// there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("rolling");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(dir.path(), &store)?);
    }
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let urls: Vec<String> = nodes.iter().map(|n| n.url("acme", "team")).collect();
    let mut creator = connect(&urls[0], &token).await?;
    create_model(&mut creator, &model, text_document(1)).await?;
    creator.close().await?;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..2_u64 {
        let (urls, token, model, done) = (urls.clone(), token.clone(), model.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let replica = ReplicaId(100 + writer);
            let (mut client, mut opened) = open_while_restarting(&urls, &token, &model).await?;
            let (mut acked, mut resent, mut seq) = (Vec::new(), 0_u32, 1);
            // At least 20 operations each, and on until every node was restarted.
            while seq <= 20 || !done.load(std::sync::atomic::Ordering::Relaxed) {
                let marker = format!("<{writer}.{seq}>");
                let base = opened.snapshot.version;
                match insert(&mut client, &opened, replica, seq, base, &marker).await? {
                    Ok(_) => {
                        acked.push(marker);
                        seq += 1;
                    }
                    Err(_) => {
                        // The same submission again, to whichever node serves the model.
                        resent += 1;
                        (client, opened) = open_while_restarting(&urls, &token, &model).await?;
                    }
                }
            }
            anyhow::Ok((acked, resent))
        }));
    }
    for index in 0..nodes.len() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut stopping = nodes.remove(index);
        let stopping = tokio::task::spawn_blocking(move || -> anyhow::Result<ServeProcess> {
            stopping.stop()?;
            stopping.restart()?;
            Ok(stopping)
        })
        .await??;
        nodes.insert(index, stopping);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        let (theirs, resent) = writer.await??;
        println!("a writer had {} operations acknowledged, resent {resent}", theirs.len());
        acked.extend(theirs);
    }
    let (_, opened) = open_while_restarting(&urls, &token, &model).await?;
    let (_, text) = text_of(&opened)?;
    for marker in &acked {
        assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {text}");
    }
    assert_eq!(text.matches('<').count(), acked.len(), "{text}");
    assert_eq!(opened.snapshot.version, acked.len() as u64, "one version per operation");
    Ok(())
}

/// Opens `model` on whichever of `urls` serves it, while nodes may be stopping or
/// starting (a node that is down, or does not serve it, is skipped).
async fn open_while_restarting(
    urls: &[String],
    token: &str,
    model: &ModelId,
) -> anyhow::Result<(WireClient, OpenedModel)> {
    let started = Instant::now();
    let mut last = String::new();
    for url in urls.iter().cycle() {
        if started.elapsed() > Duration::from_secs(40) {
            bail!("no node served {model}: {last}");
        }
        match connect(url, token).await {
            Ok(mut client) => match try_open(&mut client, model).await {
                Ok(Ok(opened)) => return Ok((client, opened)),
                Ok(Err(why)) => last = why,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("cycling through the nodes")
}

/// Any node serves any client: three clients, each on a different node of three, edit one
/// model at once. The nodes that do not own it forward their client's requests to the one
/// that does; every operation is acknowledged once, every client hears every other
/// client's operations, and the model holds each acknowledged operation exactly once. The
/// owner checks permissions on the real user: one who may not read a model is refused
/// through a forwarding node as on the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_nodes_edit_one_model_through_its_owner_and_converge() -> anyhow::Result<()>
{
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("forwarding");
    let mut nodes =
        [node(dir.path(), &store)?, node(dir.path(), &store)?, node(dir.path(), &store)?];
    let (token, mallory) = (token(dir.path(), "writer")?, token(dir.path(), "mallory")?);
    let model = ModelId::new("doc")?;
    let urls: Vec<String> = nodes.iter().map(|n| n.url("acme", "team")).collect();
    let mut creator = connect(&urls[0], &token).await?;
    create_model(&mut creator, &model, text_document(1)).await?;

    // One client per node, all with the model open before anyone edits.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for url in &urls {
        let (mut client, session) = WireClient::connect_as(url, Auth::Jwt(token.clone())).await?;
        let opened = try_open(&mut client, &model).await?.map_err(anyhow::Error::msg)?;
        clients.push((client, opened));
        sessions.push(session.session);
    }
    let serving = cluster.sql_in(
        "forwarding",
        "SELECT count(*) FROM concord_leases WHERE model = 'doc' AND expires_at > now()",
    );
    assert_eq!(serving, "1", "one node sequences the model");

    const EACH: u64 = 15;
    let mut editors = Vec::new();
    for (index, (mut client, opened)) in clients.into_iter().enumerate() {
        editors.push(tokio::spawn(async move {
            let replica = ReplicaId(200 + index as u64);
            let mut base = opened.snapshot.version;
            let mut acked = Vec::new();
            for seq in 1..=EACH {
                let marker = format!("<{index}.{seq}>");
                base = insert(&mut client, &opened, replica, seq, base, &marker)
                    .await?
                    .map_err(anyhow::Error::msg)?;
                acked.push(marker);
            }
            anyhow::Ok((client, acked))
        }));
    }
    let mut done = Vec::new();
    for editor in editors {
        done.push(editor.await??);
    }
    let total = 3 * EACH;
    for (index, (client, _)) in done.iter_mut().enumerate() {
        // Every other client's operations reach this one (through its node if forwarded).
        // Each operation names its author by the session id that client was given by its
        // own node, forwarded or not.
        let mut heard = 0;
        while heard < total - EACH {
            let push = client.push(|push| match push {
                ServerPush::RemoteOperation { model: m, operation } if *m == model => {
                    Some(operation.author.clone())
                }
                _ => None,
            });
            let author = tokio::time::timeout(Duration::from_secs(20), push)
                .await
                .with_context(|| format!("client {index} heard only {heard} operations"))??;
            let by = sessions.iter().position(|s| *s == author);
            assert!(by.is_some_and(|by| by != index), "client {index} heard {author:?}");
            heard += 1;
        }
    }
    let acked: Vec<String> = done.iter().flat_map(|(_, acked)| acked.clone()).collect();
    for url in &urls {
        let mut reader = connect(url, &token).await?;
        let opened = try_open(&mut reader, &model).await?.map_err(anyhow::Error::msg)?;
        let (_, text) = text_of(&opened)?;
        for marker in &acked {
            assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {text}");
        }
        assert_eq!(text.matches('<').count() as u64, total, "{text}");
        assert_eq!(opened.snapshot.version, total, "one version per operation");
    }

    // mallory may not read a model only writer may: refused through every node alike.
    let secret = ModelId::new("secret")?;
    let request = ClientRequest::CreateModel {
        model: secret.clone(),
        collection: CollectionId::new("notes")?,
        data: text_document(4),
        nonce: CreationNonce([4; 16]),
        permissions: Some(PermissionGrants {
            override_collection: true,
            world: Permissions::NONE,
            users: Default::default(),
        }),
    };
    match creator.request(request).await? {
        Ok(ServerResponse::ModelCreated { .. }) => {}
        other => bail!("creating {secret}: {other:?}"),
    }
    try_open(&mut creator, &secret).await?.map_err(anyhow::Error::msg)?;
    for url in &urls {
        let mut client = connect(url, &mallory).await?;
        let refused = try_open(&mut client, &secret).await?.expect_err("mallory may not read it");
        assert!(refused.contains("no permission"), "{refused}");
    }

    // The owner dies: each forwarded client is told its session closed (`unavailable`),
    // and opening the model again on its own node (another node takes it over) finds
    // every acknowledged operation.
    let owner = cluster.sql_in(
        "forwarding",
        "SELECT n.url FROM concord_leases l JOIN concord_nodes n ON n.id = l.node
         WHERE l.model = 'doc'",
    );
    let owner = (nodes.iter())
        .position(|n| owner.ends_with(&n.addr().to_string()))
        .with_context(|| format!("no node at {owner}"))?;
    nodes[owner].kill()?;
    for (index, (client, _)) in done.iter_mut().enumerate().filter(|(i, _)| *i != owner) {
        let closing = client.push(|push| match push {
            ServerPush::SessionClosing { code, .. } => Some(*code),
            _ => None,
        });
        let code = tokio::time::timeout(Duration::from_secs(20), closing)
            .await
            .with_context(|| format!("client {index} was not told"))??;
        assert_eq!(code, ErrorCode::UNAVAILABLE);
        let (_, opened, _) = open_when_served(&urls[index], &token, &model).await?;
        assert_eq!(opened.snapshot.version, total, "client {index} after the takeover");
    }
    Ok(())
}

/// A forwarded client that only pings its own node (its pings are answered there) keeps
/// its upstream session: the forwarding node pings the owner for it, so the owner does not
/// end the session as silent, and the client still edits through it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_forwarded_client_keeps_its_upstream_session() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("quiet");
    let quick = ["--store", &store, "--cluster", "--lease-millis", LEASE_MILLIS];
    let quick = [&quick[..], &["--silence-timeout-secs", "2"]].concat();
    let a = serve(dir.path(), &quick)?;
    let b = serve(dir.path(), &quick)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let mut on_a = connect(&a.url("acme", "team"), &token).await?;
    create_model(&mut on_a, &model, text_document(1)).await?;
    try_open(&mut on_a, &model).await?.map_err(anyhow::Error::msg)?;
    let mut on_b = connect(&b.url("acme", "team"), &token).await?;
    let opened = try_open(&mut on_b, &model).await?.map_err(anyhow::Error::msg)?;
    let owner = cluster.sql_in(
        "quiet",
        "SELECT n.url FROM concord_leases l JOIN concord_nodes n ON n.id = l.node",
    );
    assert!(owner.contains(&a.addr().to_string()), "a serves the model: {owner}");
    // Three silence timeouts of only pings to each client's own node.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(6) {
        for client in [&mut on_a, &mut on_b] {
            client.request(ClientRequest::Ping).await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let version = insert(&mut on_b, &opened, ReplicaId(5), 1, opened.snapshot.version, "<q>")
        .await?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(version, opened.snapshot.version + 1);
    Ok(())
}

/// A client given both nodes' URLs keeps editing when the node it is connected to, the
/// model's owner, is killed: it reconnects to the other, which takes the model over, and
/// resyncs. Every change the client saw acknowledged is on the server once, and every
/// change it made is acknowledged in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_two_nodes_keeps_editing_when_its_node_is_killed() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("client_urls");
    let mut a = node(dir.path(), &store)?;
    let b = node(dir.path(), &store)?;
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let (url_a, url_b) = (a.url("acme", "team"), b.url("acme", "team"));
    let mut creator = connect(&url_a, &token).await?;
    create_model(&mut creator, &model, text_document(1)).await?;
    creator.close().await?;

    let domain = concord_client::Domain::builder(url_a.clone())
        .fallback_urls([url_b.clone()])
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build();
    domain.connect_with_jwt(token.clone()).await?;
    let doc = domain.models().open(&model).await?;
    let text = doc.root().get("text").await?.context("no `text`")?.as_string()?;
    let acknowledged = |change| {
        let doc = doc.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), doc.acknowledged(change))
                .await
                .context("not acknowledged within a minute")?
                .map_err(anyhow::Error::from)
        }
    };
    let mut acked = Vec::new();
    for i in 0..10 {
        let marker = format!("<{i}>");
        acknowledged(text.insert(0, &marker).await?).await?;
        acked.push(marker);
    }
    // Changes in flight when a dies, and more made while no node serves the model.
    let mut unacked = Vec::new();
    for i in 10..15 {
        let marker = format!("<{i}>");
        unacked.push((text.insert(0, &marker).await?, marker));
    }
    a.kill()?;
    for i in 15..30 {
        let marker = format!("<{i}>");
        unacked.push((text.insert(0, &marker).await?, marker));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (change, marker) in unacked {
        acknowledged(change).await?;
        acked.push(marker);
    }
    assert_eq!(domain.url(), url_a, "the first URL names the domain");
    // b serves the model now, with every change once.
    let (_on_b, opened, _) = open_when_served(&url_b, &token, &model).await?;
    let (_, stored) = text_of(&opened)?;
    for marker in &acked {
        assert_eq!(stored.matches(marker.as_str()).count(), 1, "{marker} in {stored}");
    }
    assert_eq!(stored.matches('<').count(), 30, "{stored}");
    assert_eq!(text.value().await?, stored, "the client agrees with the server");
    Ok(())
}

/// An offline subscription made on a node that does not serve one of its models reaches
/// that model's owner through the forwarding node: one `SubscribeOffline` naming a model
/// served elsewhere and one served here is answered once, brings both models, and then
/// every operation committed on either; after unsubscribing, the owner's operations stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_subscription_on_another_node_hears_the_owners_operations() -> anyhow::Result<()>
{
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("subscriptions");
    let nodes = [node(dir.path(), &store)?, node(dir.path(), &store)?];
    let token = token(dir.path(), "writer")?;
    let (url_a, url_b) = (nodes[0].url("acme", "team"), nodes[1].url("acme", "team"));
    let (on_a, on_b) = (ModelId::new("on-a")?, ModelId::new("on-b")?);
    // Each node serves one model, open by an editor connected to it.
    let mut editor_a = connect(&url_a, &token).await?;
    create_model(&mut editor_a, &on_a, text_document(1)).await?;
    let opened_a = try_open(&mut editor_a, &on_a).await?.map_err(anyhow::Error::msg)?;
    let mut editor_b = connect(&url_b, &token).await?;
    create_model(&mut editor_b, &on_b, text_document(2)).await?;
    let opened_b = try_open(&mut editor_b, &on_b).await?.map_err(anyhow::Error::msg)?;

    let mut subscriber = connect(&url_a, &token).await?;
    let subscribe = ClientRequest::SubscribeOffline {
        subscribe: vec![
            KnownModel { model: on_a.clone(), version: None },
            KnownModel { model: on_b.clone(), version: None },
        ],
        unsubscribe: vec![],
        replace: true,
    };
    let answer = subscriber.request(subscribe).await?;
    assert!(matches!(answer, Ok(ServerResponse::Done)), "{answer:?}");
    let mut snapshots = Vec::new();
    while snapshots.len() < 2 {
        snapshots.push(
            subscriber
                .push(|push| match push {
                    ServerPush::OfflineUpdate {
                        model,
                        update: OfflineUpdate::Snapshot { snapshot, .. },
                    } => Some((model.clone(), snapshot.version)),
                    _ => None,
                })
                .await?,
        );
    }
    snapshots.sort();
    assert_eq!(snapshots, [(on_a.clone(), 0), (on_b.clone(), 0)]);
    let owner_of_b = cluster.sql_in(
        "subscriptions",
        "SELECT count(*) FROM concord_leases WHERE model = 'on-b' AND expires_at > now()",
    );
    assert_eq!(owner_of_b, "1", "the subscription did not lease the model elsewhere");

    // Operations on both models reach the subscriber, each once and in order.
    let mut base = (opened_a.snapshot.version, opened_b.snapshot.version);
    for seq in 1..=3 {
        base.0 = insert(&mut editor_a, &opened_a, ReplicaId(11), seq, base.0, "<a>")
            .await?
            .map_err(anyhow::Error::msg)?;
        base.1 = insert(&mut editor_b, &opened_b, ReplicaId(12), seq, base.1, "<b>")
            .await?
            .map_err(anyhow::Error::msg)?;
    }
    let mut heard: Vec<(ModelId, u64)> = Vec::new();
    while heard.len() < 6 {
        let operations = subscriber
            .push(|push| match push {
                ServerPush::OfflineUpdate {
                    model,
                    update: OfflineUpdate::Operations { operations, .. },
                } => Some((model.clone(), operations.clone())),
                _ => None,
            })
            .await?;
        heard.extend(operations.1.iter().map(|op| (operations.0.clone(), op.version)));
    }
    let versions = |of: &ModelId| -> Vec<u64> {
        heard.iter().filter(|(m, _)| m == of).map(|(_, v)| *v).collect()
    };
    assert_eq!(versions(&on_a), [1, 2, 3]);
    assert_eq!(versions(&on_b), [1, 2, 3]);

    // Unsubscribed from the model served elsewhere: its operations no longer come, those
    // of the one served here still do.
    let unsubscribe = ClientRequest::SubscribeOffline {
        subscribe: vec![],
        unsubscribe: vec![on_b.clone()],
        replace: false,
    };
    assert!(matches!(subscriber.request(unsubscribe).await?, Ok(ServerResponse::Done)));
    // The unsubscription travels on to b after a answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    insert(&mut editor_b, &opened_b, ReplicaId(12), 4, base.1, "<b>")
        .await?
        .map_err(anyhow::Error::msg)?;
    insert(&mut editor_a, &opened_a, ReplicaId(11), 4, base.0, "<a>")
        .await?
        .map_err(anyhow::Error::msg)?;
    let next = subscriber
        .push(|push| match push {
            ServerPush::OfflineUpdate { model, update: OfflineUpdate::Operations { .. } } => {
                Some(model.clone())
            }
            _ => None,
        })
        .await?;
    assert_eq!(next, on_a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    subscriber.request(ClientRequest::Ping).await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let late = (subscriber.queued().iter())
        .filter(|message| {
            matches!(message,
                ServerMessage::Push(ServerPush::OfflineUpdate { model, .. }) if *model == on_b)
        })
        .count();
    assert_eq!(late, 0, "an operation of an unsubscribed model was pushed");
    Ok(())
}

/// A node that cannot serve a model it was asked for (another node holds its lease, and
/// this connection is not forwarded) refuses the open and forgets it: asking again gets
/// the same answer, never "already open", so a client retrying through a node that
/// forwards, or after a takeover, is not stuck with a model its session thinks is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_open_leaves_nothing_open_on_the_session() -> anyhow::Result<()> {
    let Some(cluster) = postgres::shared() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let store = cluster.url("refused_open");
    let nodes = [node(dir.path(), &store)?, node(dir.path(), &store)?];
    let token = token(dir.path(), "writer")?;
    let model = ModelId::new("doc")?;
    let mut on_a = connect(&nodes[0].url("acme", "team"), &token).await?;
    create_model(&mut on_a, &model, text_document(1)).await?;
    try_open(&mut on_a, &model).await?.map_err(anyhow::Error::msg)?;

    // A connection to b that b does not forward: b answers for itself.
    let url = format!("{}?forwarded", nodes[1].url("acme", "team"));
    let (mut client, _) = WireClient::connect_as(&url, Auth::Jwt(token.clone())).await?;
    for attempt in 0..3 {
        let refused = try_open(&mut client, &model).await?.expect_err("a serves the model");
        assert!(refused.contains("served by node"), "attempt {attempt}: {refused}");
        let resync =
            ClientRequest::Resync { model: model.clone(), known_version: 0, in_flight: None };
        let refused = client.request(resync).await?.expect_err("a serves the model");
        assert_eq!(refused.code, ErrorCode::UNAVAILABLE, "attempt {attempt}: {refused:?}");
    }
    Ok(())
}
