//! The server's hosts, driven directly: what one hostile or careless session can and cannot
//! do to others — use another user's replica, learn which models exist, make the server
//! hold more than its limits — and what a model's creator keeps.

use std::collections::BTreeMap;
use std::sync::Arc;

use concord_ot::{DiscreteOperation, Document, IdGenerator, Operation, OperationKind, PathSegment};
use concord_ot::{ReferenceValue, ReplicaId, Value};
use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, ClientResponse, CollectionId, Commit,
    CreationNonce, ErrorCode, HistoryOperation, InFlight, KnownModel, ModelId, NewModel,
    OfflineUpdate, PermissionGrants, Permissions, ReferenceChange, ReferenceKey, RequestId,
    ServerMessage, ServerPush, ServerResponse, SessionId, SyncSubmission, Timestamp, User, UserId,
};
use concord_sync::Decision;
use concord_sync::host::{
    ConnId, HostConfig, Loaded, ModelHost, ModelRequest, Outgoing, Read, ReadFailure, ReadResult,
    SessionHost, SessionLimits, SessionOutput, SessionRef, StoredModel, Write,
};

/// Hosts wired together, every job made durable at once, every read answered.
struct Server {
    config: Arc<HostConfig>,
    models: BTreeMap<ModelId, ModelHost>,
    sessions: BTreeMap<ConnId, SessionHost>,
    owners: BTreeMap<ReplicaId, UserId>,
    writes: Vec<Write>,
    /// Every range of stored operations a model host asked for, `(after, through)`.
    operation_reads: Vec<(u64, u64)>,
    /// While set, the store fails every read so.
    failing_reads: Option<ReadFailure>,
    next_conn: ConnId,
    now: i64,
}

impl Server {
    fn new() -> Server {
        Server::with_config(HostConfig::default())
    }

    fn with_config(config: HostConfig) -> Server {
        Server {
            config: Arc::new(config),
            models: BTreeMap::new(),
            sessions: BTreeMap::new(),
            owners: BTreeMap::new(),
            writes: Vec::new(),
            operation_reads: Vec::new(),
            failing_reads: None,
            next_conn: 0,
            now: 0,
        }
    }

    fn connect(&mut self, user: &str, limits: SessionLimits) -> ConnId {
        self.next_conn += 1;
        let conn = self.next_conn;
        let user = User { id: UserId(user.into()), display_name: None, anonymous: false };
        let session = SessionRef { conn, session: SessionId(format!("s{conn}")), user };
        self.sessions.insert(conn, SessionHost::new(session, limits));
        conn
    }

    /// Sends `message` on `conn`; returns everything the server said, to anyone.
    fn send(&mut self, conn: ConnId, message: ClientMessage) -> Vec<(ConnId, ServerMessage)> {
        self.now += 1;
        let mut said = Vec::new();
        self.sessions.get_mut(&conn).unwrap().handle(message);
        while let Some(output) = self.sessions.get_mut(&conn).unwrap().poll_output() {
            match output {
                SessionOutput::Reply(message) => said.push((conn, message)),
                SessionOutput::ToModel { model, request } => {
                    let from = self.sessions[&conn].session().clone();
                    said.extend(self.request_model(&from, model, request));
                }
                // Presence and activities have their own unit tests (`host/presence.rs`,
                // `host/activity.rs`); none is asked here.
                // Queries are answered over a store (`host/query.rs`; the server's and the
                // simulation's store tests); none is asked here.
                SessionOutput::ToPresence { .. }
                | SessionOutput::ToActivity { .. }
                | SessionOutput::ToIdentity { .. }
                | SessionOutput::Query(_) => {
                    unreachable!("no presence, activity, identity or query request is sent")
                }
            }
        }
        said
    }

    fn request(&mut self, conn: ConnId, request: ClientRequest) -> Vec<(ConnId, ServerMessage)> {
        self.send(conn, ClientMessage::Request { id: RequestId(self.now as u64 + 100), request })
    }

    fn request_model(
        &mut self,
        from: &SessionRef,
        model: ModelId,
        request: ModelRequest,
    ) -> Vec<(ConnId, ServerMessage)> {
        let config = self.config.clone();
        let loaded = stored(&self.writes, &model);
        let host = self
            .models
            .entry(model.clone())
            .or_insert_with(|| ModelHost::new(model, loaded, config).unwrap());
        host.handle(Timestamp(self.now), from, request);
        while let Some(read) = host.pending_read().cloned() {
            let result = match (read, self.failing_reads.clone()) {
                (Read::Collection(_), Some(e)) => ReadResult::Collection(Err(e)),
                (Read::Operations { .. }, Some(e)) => ReadResult::Operations(Err(e)),
                (Read::ReplicaOwner { .. }, Some(e)) => ReadResult::ReplicaOwner(Err(e)),
                (Read::Collection(_), None) => ReadResult::Collection(Ok(None)),
                (Read::Operations { after, through }, None) => ReadResult::Operations(Ok({
                    self.operation_reads.push((after, through));
                    self.writes
                        .iter()
                        .filter_map(|w| match w {
                            Write::Commit(record) if record.model == *host.model() => {
                                Some(record.operation.clone())
                            }
                            _ => None,
                        })
                        .filter(|op| op.version > after && op.version <= through)
                        .map(|operation| HistoryOperation { operation, user: None })
                        .collect()
                })),
                (Read::ReplicaOwner { replica, claimant }, None) => {
                    ReadResult::ReplicaOwner(Ok(self
                        .owners
                        .entry(replica)
                        .or_insert(claimant)
                        .clone()))
                }
            };
            host.handle_read(result);
        }
        let job = host.take_job();
        self.writes.extend(job.writes);
        let mut notices = Vec::new();
        while let Some(notice) = host.poll_notice() {
            notices.push(notice);
        }
        for notice in notices {
            let conn = &notice.conn();
            if let Some(session) = self.sessions.get_mut(conn) {
                session.handle_notice(notice);
            }
        }
        let mut said = Vec::new();
        for delivery in job.deliveries {
            let Outgoing::Message(message) = delivery.outgoing else { panic!("no replays here") };
            said.extend(delivery.to.into_iter().map(|conn| (conn, message.clone())));
        }
        said
    }
}

/// A model as the writes so far store it (every operation replayed on its first snapshot),
/// as a server's store loads it after a restart.
fn stored(writes: &[Write], id: &ModelId) -> Loaded {
    let mut found = None;
    for write in writes {
        match write {
            Write::CreateModel { model, record, snapshot } if model == id => {
                let stored = StoredModel {
                    record: record.clone(),
                    collection: None,
                    snapshot: snapshot.clone(),
                    operations: Vec::new(),
                    last_decisions: BTreeMap::new(),
                    authors: BTreeMap::new(),
                };
                found = Some(stored);
            }
            Write::Commit(record) if record.model == *id => {
                let stored = found.as_mut().expect("created first");
                stored.operations.push(record.operation.clone());
                let commit = Commit {
                    version: record.operation.version,
                    timestamp: record.operation.timestamp,
                };
                stored
                    .last_decisions
                    .insert(record.replica, (record.seq, Decision::Committed(commit)));
            }
            Write::Refusal(record) if record.model == *id => {
                let stored = found.as_mut().expect("created first");
                let decision = Decision::Refused(record.code);
                stored.last_decisions.insert(record.replica, (record.seq, decision));
            }
            _ => {}
        }
    }
    match found {
        Some(stored) => Loaded::Model(Box::new(stored)),
        None => Loaded::Absent { deleted: false },
    }
}

fn model(id: &str) -> ModelId {
    ModelId::new(id).unwrap()
}

fn document() -> Document {
    let mut ids = IdGenerator::new(ReplicaId(0), 1);
    let json = serde_json::json!({ "text": "" });
    Document::new(Value::from_json(&json, &mut ids).unwrap()).unwrap()
}

fn insert(document: &Document, text: &str) -> Operation {
    let id = document.element_at(&[PathSegment::Key("text".into())]).unwrap();
    let kind = OperationKind::StringSplice { index: 0, delete_count: 0, insert: text.into() };
    DiscreteOperation::new(id, kind).into()
}

fn create(server: &mut Server, conn: ConnId, id: &str, grants: Option<PermissionGrants>) {
    let said = server.request(
        conn,
        ClientRequest::CreateModel {
            model: model(id),
            collection: CollectionId::new("notes").unwrap(),
            data: document(),
            nonce: CreationNonce([1; 16]),
            permissions: grants,
        },
    );
    assert!(
        matches!(
            said.as_slice(),
            [(_, ServerMessage::Response { response: ServerResponse::ModelCreated { .. }, .. })]
        ),
        "{said:?}"
    );
}

fn open(server: &mut Server, conn: ConnId, id: &str) {
    let said =
        server.request(conn, ClientRequest::OpenModel { model: model(id), auto_create: false });
    assert!(
        said.iter().any(|(c, m)| *c == conn
            && matches!(
                m,
                ServerMessage::Response { response: ServerResponse::ModelOpened(_), .. }
            )),
        "{said:?}"
    );
}

/// A submission of one local change, seq `seq`.
fn submit(replica: u64, seq: u64, base_version: u64, text: &str) -> ClientMessage {
    submit_batch(replica, seq..=seq, base_version, insert(&document(), text))
}

/// A submission of the local changes `seqs`, together `operation`.
fn submit_batch(
    replica: u64,
    seqs: std::ops::RangeInclusive<u64>,
    base_version: u64,
    operation: Operation,
) -> ClientMessage {
    ClientMessage::Notice(ClientNotice::Submit {
        model: model("doc"),
        replica: ReplicaId(replica),
        first_seq: *seqs.start(),
        seq: *seqs.end(),
        base_version,
        operation,
    })
}

/// What `conn` heard, without the request ids.
fn heard(said: &[(ConnId, ServerMessage)], conn: ConnId) -> Vec<ServerMessage> {
    said.iter().filter(|(c, _)| *c == conn).map(|(_, m)| m.clone()).collect()
}

fn error_of(said: &[(ConnId, ServerMessage)], conn: ConnId) -> (ErrorCode, String) {
    match heard(said, conn).as_slice() {
        [ServerMessage::Error { error, .. }] => (error.code, error.message.clone()),
        [ServerMessage::Push(ServerPush::ReferenceRefused { error, .. })] => {
            (error.code, error.message.clone())
        }
        other => panic!("expected one error, got {other:?}"),
    }
}

/// The reference whose change `conn` was told was refused.
fn refused_reference(said: &[(ConnId, ServerMessage)], conn: ConnId) -> (ReferenceKey, ErrorCode) {
    match heard(said, conn).as_slice() {
        [ServerMessage::Push(ServerPush::ReferenceRefused { reference, error, .. })] => {
            (reference.clone(), error.code)
        }
        other => panic!("expected one refusal, got {other:?}"),
    }
}

#[test]
fn a_replica_belongs_to_the_user_who_used_it_first() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let mallory = server.connect("mallory", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    open(&mut server, mallory, "doc");
    // Alice's first submission binds her replica (durably, before its commit).
    let said = server.send(alice, submit(7, 1, 0, "a"));
    assert!(matches!(
        heard(&said, alice)[..],
        [ServerMessage::Push(ServerPush::Ack { seq: 1, version: 1, .. })]
    ));
    let bound = server.writes.iter().position(
        |w| matches!(w, Write::BindReplica { replica: ReplicaId(7), user } if user.0 == "alice"),
    );
    let committed = server.writes.iter().position(|w| matches!(w, Write::Commit(_)));
    assert!(bound.is_some() && bound < committed, "{:?}", server.writes);

    // Mallory read the replica id off the document and submits under it, with alice's next
    // seq and with one far ahead: refused, and nothing is committed.
    for seq in [2, 1_000] {
        let said = server.send(mallory, submit(7, seq, 1, "m"));
        match heard(&said, mallory).as_slice() {
            [ServerMessage::Push(ServerPush::SubmitRejected { error, .. })] => {
                assert_eq!(error.code, ErrorCode::PERMISSION_DENIED)
            }
            other => panic!("{other:?}"),
        }
        assert!(heard(&said, alice).is_empty(), "alice hears of nothing");
    }
    // Alice's own next submission is committed, not taken for a duplicate.
    let said = server.send(alice, submit(7, 2, 1, "b"));
    assert!(matches!(
        heard(&said, alice)[..],
        [ServerMessage::Push(ServerPush::Ack { seq: 2, version: 2, .. })]
    ));
    assert_eq!(server.models[&model("doc")].live().unwrap().0, 2);

    // A resync naming alice's replica tells mallory nothing about alice's submissions.
    let said = server.request(
        mallory,
        ClientRequest::Resync {
            model: model("doc"),
            known_version: 0,
            in_flight: Some(InFlight { replica: ReplicaId(7), seq: 2 }),
        },
    );
    let started = heard(&said, mallory).into_iter().find_map(|m| match m {
        ServerMessage::Response {
            response: ServerResponse::ResyncStarted { in_flight_committed, .. },
            ..
        } => Some(in_flight_committed),
        _ => None,
    });
    assert_eq!(started, Some(None));
}

#[test]
fn a_model_one_may_not_read_answers_like_one_that_does_not_exist() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    let private = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    create(&mut server, alice, "secret", Some(private));
    open(&mut server, alice, "secret");
    let requests = |id: &str| {
        vec![
            ClientRequest::OpenModel { model: model(id), auto_create: false },
            ClientRequest::Resync { model: model(id), known_version: 0, in_flight: None },
            ClientRequest::DeleteModel { model: model(id), creation: None },
            ClientRequest::GetPermissions { model: model(id) },
            ClientRequest::SetPermissions { model: model(id), grants: PermissionGrants::default() },
        ]
    };
    for (secret, missing) in requests("secret").into_iter().zip(requests("absent")) {
        let (code, message) = error_of(&server.request(bob, secret.clone()), bob);
        let (missing_code, missing_message) = error_of(&server.request(bob, missing), bob);
        assert_eq!(code, ErrorCode::MODEL_NOT_FOUND, "{secret:?}");
        assert_eq!((code, message.replace("secret", "absent")), (missing_code, missing_message));
    }
    // Opening with auto-create asks for the data whether the model is missing or hidden.
    for id in ["secret", "absent"] {
        let open = ClientRequest::OpenModel { model: model(id), auto_create: true };
        let said = server.request(bob, open);
        assert!(matches!(heard(&said, bob)[..], [ServerMessage::Request { .. }]), "{id}: {said:?}");
    }
    // A ResyncComplete without a resync reveals no collaborators.
    let said =
        server.request(bob, ClientRequest::ResyncComplete { model: model("secret"), open: true });
    assert_eq!(error_of(&said, bob).0, ErrorCode::MODEL_NOT_FOUND);
    // Subscribing gets the same update as for a model that does not exist.
    let subscribe = |id: &str| ClientRequest::SubscribeOffline {
        subscribe: vec![KnownModel { model: model(id), version: None }],
        unsubscribe: vec![],
        replace: false,
    };
    for id in ["secret", "absent"] {
        let said = server.request(bob, subscribe(id));
        let update = heard(&said, bob).into_iter().find_map(|m| match m {
            ServerMessage::Push(ServerPush::OfflineUpdate { update, .. }) => Some(update),
            _ => None,
        });
        assert_eq!(update, Some(OfflineUpdate::Deleted), "{id}");
    }
    // Creating over a taken id says only that it is taken.
    let taken = |id: &str| ClientRequest::CreateModel {
        model: model(id),
        collection: CollectionId::new("notes").unwrap(),
        data: document(),
        nonce: CreationNonce([9; 16]),
        permissions: None,
    };
    let said = server.request(bob, taken("secret"));
    let ServerMessage::Error { error, .. } = &heard(&said, bob)[0] else { panic!("{said:?}") };
    assert_eq!(error.code, ErrorCode::MODEL_ALREADY_EXISTS);
    assert!(error.details.is_empty(), "{error:?}");
    // Alice's session was not told anything about bob.
    assert!(heard(&said, alice).is_empty());
}

#[test]
fn a_deletion_naming_a_creation_deletes_only_the_model_that_creation_made() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let mut grants = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    let read_write = Permissions { read: true, write: true, remove: false, manage: false };
    grants.users.insert(UserId("bob".into()), read_write);
    create(&mut server, alice, "doc", Some(grants));
    let delete = |id: &str, nonce| ClientRequest::DeleteModel {
        model: model(id),
        creation: Some(CreationNonce([nonce; 16])),
    };
    // Another creation of "doc" (its creator may delete it, but it was never this model):
    // answered as a model that does not exist, and the model stays.
    let (code, message) = error_of(&server.request(alice, delete("doc", 2)), alice);
    let (absent_code, absent_message) =
        error_of(&server.request(alice, delete("absent", 2)), alice);
    assert_eq!(code, ErrorCode::MODEL_NOT_FOUND);
    assert_eq!((code, message.replace("doc", "absent")), (absent_code, absent_message));
    // The right creation named by other users: one who may read but not remove the model is
    // refused for that, one who may not read it hears what an absent model answers.
    let bob = server.connect("bob", SessionLimits::default());
    let (code, _) = error_of(&server.request(bob, delete("doc", 1)), bob);
    assert_eq!(code, ErrorCode::PERMISSION_DENIED);
    let carol = server.connect("carol", SessionLimits::default());
    let (code, message) = error_of(&server.request(carol, delete("doc", 1)), carol);
    let (absent_code, absent_message) =
        error_of(&server.request(carol, delete("absent", 1)), carol);
    assert_eq!((code, message.replace("doc", "absent")), (absent_code, absent_message));
    open(&mut server, alice, "doc");
    // The creation that made it deletes it.
    let said = server.request(alice, delete("doc", 1));
    let done = |m: &ServerMessage| {
        matches!(m, ServerMessage::Response { response: ServerResponse::Done, .. })
    };
    assert!(heard(&said, alice).iter().any(done), "{said:?}");
    let reopen = ClientRequest::OpenModel { model: model("doc"), auto_create: false };
    assert_eq!(error_of(&server.request(alice, reopen), alice).0, ErrorCode::MODEL_NOT_FOUND);
}

#[test]
fn a_read_the_store_fails_is_answered_unavailable_or_internal_as_the_store_says() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    let rejected = |said: &[(ConnId, ServerMessage)]| match heard(said, alice).as_slice() {
        [ServerMessage::Push(ServerPush::SubmitRejected { seq: 1, error, .. })] => {
            (error.code, error.message.clone())
        }
        other => panic!("expected the submission rejected, got {other:?}"),
    };
    // The submission needs its replica's owner, which the store cannot read: refused, as
    // the store says, and not decided (no refusal recorded, nothing committed).
    for (unavailable, code) in [(true, ErrorCode::UNAVAILABLE), (false, ErrorCode::INTERNAL)] {
        let message = "the database is restarting".to_owned();
        server.failing_reads = Some(ReadFailure { unavailable, message });
        let (got, message) = rejected(&server.send(alice, submit(7, 1, 0, "x")));
        assert_eq!(got, code);
        assert!(message.contains("the database is restarting"), "{message}");
    }
    assert!(!server.writes.iter().any(|w| matches!(w, Write::Commit(_) | Write::Refusal(_))));
    // Once the store reads again, the same submission is committed.
    server.failing_reads = None;
    let said = server.send(alice, submit(7, 1, 0, "x"));
    assert!(matches!(heard(&said, alice)[..], [ServerMessage::Push(ServerPush::Ack { .. })]));
}

#[test]
fn one_session_cannot_make_the_server_hold_unbounded_references_or_catch_ups() {
    let mut server = Server::new();
    let limits =
        SessionLimits { max_references: 3, max_reference_bytes: 64, ..SessionLimits::default() };
    let alice = server.connect("alice", limits);
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    let share = |key: &str, value: Option<ReferenceValue>| {
        ClientMessage::Notice(ClientNotice::Reference {
            model: model("doc"),
            change: ReferenceChange::Share {
                reference: ReferenceKey { element: None, key: key.into() },
                value,
            },
        })
    };
    for n in 0..3 {
        assert!(server.send(alice, share(&format!("k{n}"), None)).is_empty());
    }
    // A fourth reference, and a key too large, are refused with typed errors.
    let (code, _) = error_of(&server.send(alice, share("k3", None)), alice);
    assert_eq!(code, ErrorCode::OVERLOADED);
    let (code, _) = error_of(&server.send(alice, share(&"x".repeat(100), None)), alice);
    assert_eq!(code, ErrorCode::INVALID_REFERENCE);
    let large = ReferenceValue::Index(vec![0; 100]);
    let (code, _) = error_of(&server.send(alice, share("k0", Some(large))), alice);
    assert_eq!(code, ErrorCode::INVALID_REFERENCE);
    // Unsharing one makes room again.
    let unshare = ClientMessage::Notice(ClientNotice::Reference {
        model: model("doc"),
        change: ReferenceChange::Unshare {
            reference: ReferenceKey { element: None, key: "k0".into() },
        },
    });
    assert!(server.send(alice, unshare).is_empty());
    assert!(server.send(alice, share("k3", None)).is_empty());

    // A subscription naming one model thousands of times catches it up once.
    let bob = server.connect("bob", SessionLimits::default());
    let subscribe = ClientRequest::SubscribeOffline {
        subscribe: vec![KnownModel { model: model("doc"), version: None }; 5_000],
        unsubscribe: vec![],
        replace: false,
    };
    let said = server.request(bob, subscribe);
    let snapshots = heard(&said, bob)
        .iter()
        .filter(|m| matches!(m, ServerMessage::Push(ServerPush::OfflineUpdate { .. })))
        .count();
    assert_eq!(snapshots, 1);
}

#[test]
fn a_creator_keeps_every_permission() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    let mut grants = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    grants.users.insert(UserId("bob".into()), Permissions::ALL);
    create(&mut server, alice, "doc", Some(grants));
    // Bob, granted manage, takes everything away from alice...
    let mut lockout = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    lockout.users.insert(UserId("alice".into()), Permissions::NONE);
    lockout.users.insert(UserId("bob".into()), Permissions::ALL);
    let said =
        server.request(bob, ClientRequest::SetPermissions { model: model("doc"), grants: lockout });
    assert!(matches!(
        heard(&said, bob)[..],
        [ServerMessage::Response { response: ServerResponse::Done, .. }]
    ));
    // ... and alice still opens, writes and manages her model.
    open(&mut server, alice, "doc");
    let said = server.send(alice, submit(3, 1, 0, "mine"));
    assert!(matches!(heard(&said, alice)[..], [ServerMessage::Push(ServerPush::Ack { .. })]));
    let said = server.request(alice, ClientRequest::GetPermissions { model: model("doc") });
    assert!(matches!(
        heard(&said, alice)[..],
        [ServerMessage::Response { response: ServerResponse::Permissions { .. }, .. }]
    ));
}

impl Server {
    /// The server restarts: everything in memory is gone, the store (the writes) stays.
    fn restart(&mut self) {
        self.models.clear();
        self.sessions.clear();
    }
}

/// The one submission answer `conn` heard: `Ok(version)` for an ack, `Err(code)` for a
/// rejection, both of `seq`.
fn answer(said: &[(ConnId, ServerMessage)], conn: ConnId, seq: u64) -> Result<u64, ErrorCode> {
    let answers: Vec<_> = heard(said, conn)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Push(ServerPush::Ack { seq: s, version, .. }) => Some((s, Ok(version))),
            ServerMessage::Push(ServerPush::SubmitRejected { seq: s, error, .. }) => {
                Some((s, Err(error.code)))
            }
            _ => None,
        })
        .collect();
    match answers.as_slice() {
        [(s, answer)] if *s == seq => *answer,
        other => panic!("expected one answer to seq {seq}, got {other:?} in {said:?}"),
    }
}

fn text_of(server: &Server, id: &str) -> String {
    let (_, document) = server.models[&model(id)].live().unwrap();
    let text = document.element_at(&[PathSegment::Key("text".into())]).unwrap();
    document.text(text).unwrap()
}

fn splice(index: usize, delete_count: usize, text: &str) -> Operation {
    let id = document().element_at(&[PathSegment::Key("text".into())]).unwrap();
    let kind = OperationKind::StringSplice { index, delete_count, insert: text.into() };
    DiscreteOperation::new(id, kind).into()
}

#[test]
fn a_submission_must_start_right_after_the_replicas_last_decided_seq() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    assert_eq!(answer(&server.send(alice, submit(7, 1, 0, "a")), alice, 1), Ok(1));
    let writes = server.writes.len();
    // A gap (seq 2 never came), and a seq far ahead: refused, and nothing is recorded.
    for seq in [3, 1_000] {
        let said = server.send(alice, submit(7, seq, 1, "x"));
        assert_eq!(answer(&said, alice, seq), Err(ErrorCode::SEQ_OUT_OF_ORDER));
    }
    // A batch claiming seqs backwards, or none, covers nothing.
    let said = server.send(
        alice,
        submit_batch(7, std::ops::RangeInclusive::new(6, 5), 1, insert(&document(), "x")),
    );
    assert_eq!(answer(&said, alice, 5), Err(ErrorCode::SEQ_OUT_OF_ORDER));
    assert_eq!(server.writes.len(), writes, "{:?}", &server.writes[writes..]);
    assert_eq!(text_of(&server, "doc"), "a");
    // A batch of seqs 2 to 4 follows seq 1: committed.
    let said = server.send(alice, submit_batch(7, 2..=4, 1, insert(&document(), "b")));
    assert_eq!(answer(&said, alice, 4), Ok(2));
    // Seq 3 is older than the last decided one; 4 again gets its original ack.
    assert_eq!(
        answer(&server.send(alice, submit(7, 3, 2, "x")), alice, 3),
        Err(ErrorCode::SEQ_OUT_OF_ORDER)
    );
    let said = server.send(alice, submit_batch(7, 2..=4, 1, insert(&document(), "b")));
    assert_eq!(answer(&said, alice, 4), Ok(2));
    assert_eq!(text_of(&server, "doc"), "ba", "applied once");
    // A replica new to the model starts at seq 1.
    let said = server.send(alice, submit_batch(8, 2..=2, 2, insert(&document(), "c")));
    assert_eq!(answer(&said, alice, 2), Err(ErrorCode::SEQ_OUT_OF_ORDER));
    let said = server.send(alice, submit_batch(8, 1..=2, 2, insert(&document(), "c")));
    assert_eq!(answer(&said, alice, 2), Ok(3));
}

#[test]
fn a_refusal_is_recorded_repeated_and_survives_a_restart() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    let mut grants = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    grants.users.insert(UserId("bob".into()), Permissions { read: true, ..Permissions::NONE });
    create(&mut server, alice, "doc", Some(grants.clone()));
    open(&mut server, alice, "doc");
    open(&mut server, bob, "doc");
    assert_eq!(answer(&server.send(alice, submit(7, 1, 0, "a")), alice, 1), Ok(1));
    // An operation that does not apply is refused for good: recorded before it is said.
    let invalid = splice(99, 0, "x");
    let said = server.send(alice, submit_batch(7, 2..=2, 1, invalid.clone()));
    assert_eq!(answer(&said, alice, 2), Err(ErrorCode::INVALID_OPERATION));
    let refusal = server.writes.iter().find_map(|w| match w {
        Write::Refusal(r) => Some((r.replica, r.seq, r.code)),
        _ => None,
    });
    assert_eq!(refusal, Some((ReplicaId(7), 2, ErrorCode::INVALID_OPERATION)));
    // Bob may not write: decided for good as well.
    let said = server.send(bob, submit(9, 1, 1, "b"));
    assert_eq!(answer(&said, bob, 1), Err(ErrorCode::PERMISSION_DENIED));
    // A resubmission gets the original refusal again, and nothing new is recorded.
    let writes = server.writes.len();
    let said = server.send(alice, submit_batch(7, 2..=2, 1, invalid.clone()));
    assert_eq!(answer(&said, alice, 2), Err(ErrorCode::INVALID_OPERATION));
    assert_eq!(server.writes.len(), writes);
    // A resync does not take the refused submission for committed.
    let resync = ClientRequest::Resync {
        model: model("doc"),
        known_version: 1,
        in_flight: Some(InFlight { replica: ReplicaId(7), seq: 2 }),
    };
    let said = server.request(alice, resync);
    let started = heard(&said, alice).into_iter().find_map(|m| match m {
        ServerMessage::Response {
            response: ServerResponse::ResyncStarted { in_flight_committed, .. },
            ..
        } => Some(in_flight_committed),
        _ => None,
    });
    assert_eq!(started, Some(None));

    // The server restarts from its store; alice and bob reconnect.
    server.restart();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    open(&mut server, alice, "doc");
    open(&mut server, bob, "doc");
    let said = server.send(alice, submit_batch(7, 2..=2, 1, invalid));
    assert_eq!(answer(&said, alice, 2), Err(ErrorCode::INVALID_OPERATION), "still refused");
    // The next submission follows the refused one: not a gap.
    assert_eq!(answer(&server.send(alice, submit(7, 3, 1, "c")), alice, 3), Ok(2));
    grants.users.insert(UserId("bob".into()), Permissions::ALL);
    let set = ClientRequest::SetPermissions { model: model("doc"), grants };
    server.request(alice, set);
    assert_eq!(answer(&server.send(bob, submit(9, 2, 2, "d")), bob, 2), Ok(3));
    assert_eq!(text_of(&server, "doc"), "dca");
}

#[test]
fn a_model_never_grows_past_its_size_limit_and_shrinks_at_it() {
    let empty = concord_sync::model_bytes(&document());
    let config = HostConfig { max_model_bytes: empty + 100, ..HostConfig::default() };
    let mut server = Server::with_config(config);
    let alice = server.connect("alice", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    let x60 = "x".repeat(60);
    assert_eq!(answer(&server.send(alice, submit(7, 1, 0, &x60)), alice, 1), Ok(1));
    // 60 more bytes would pass the limit: refused, recorded, and the model is intact.
    let said = server.send(alice, submit(7, 2, 1, &"y".repeat(60)));
    assert_eq!(answer(&said, alice, 2), Err(ErrorCode::MODEL_TOO_LARGE));
    assert_eq!(text_of(&server, "doc"), x60);
    assert_eq!(server.models[&model("doc")].live().unwrap().0, 1);
    assert!(server.writes.iter().any(|w| matches!(
        w,
        Write::Refusal(r) if r.seq == 2 && r.code == ErrorCode::MODEL_TOO_LARGE
    )));
    // Up to the limit exactly is fine; then a deletion passes, and a small insertion after it.
    let fill = "z".repeat(100 - 60);
    let said = server.send(alice, submit(7, 3, 1, &fill));
    assert_eq!(answer(&said, alice, 3), Ok(2));
    let (_, document) = server.models[&model("doc")].live().unwrap();
    assert_eq!(concord_sync::model_bytes(document), empty + 100, "at the limit");
    let said = server.send(alice, submit_batch(7, 4..=4, 2, splice(0, 30, "")));
    assert_eq!(answer(&said, alice, 4), Ok(3));
    assert_eq!(answer(&server.send(alice, submit(7, 5, 3, "w")), alice, 5), Ok(4));
    // Reloaded from the store, the model is measured again and the limit still holds.
    server.restart();
    let alice = server.connect("alice", SessionLimits::default());
    open(&mut server, alice, "doc");
    let said = server.send(alice, submit(7, 6, 4, &"v".repeat(60)));
    assert_eq!(answer(&said, alice, 6), Err(ErrorCode::MODEL_TOO_LARGE));
    assert_eq!(answer(&server.send(alice, submit(7, 7, 4, "u")), alice, 7), Ok(5));
    // A creation with more data than the limit is refused.
    let mut ids = IdGenerator::new(ReplicaId(0), 1);
    let json = serde_json::json!({ "text": "t".repeat(200) });
    let data = Document::new(Value::from_json(&json, &mut ids).unwrap()).unwrap();
    let said = server.request(
        alice,
        ClientRequest::CreateModel {
            model: model("big"),
            collection: CollectionId::new("notes").unwrap(),
            data,
            nonce: CreationNonce([2; 16]),
            permissions: None,
        },
    );
    assert_eq!(error_of(&said, alice).0, ErrorCode::MODEL_TOO_LARGE);
    assert!(server.models[&model("big")].live().is_none());
}

/// Found by the host fuzz target: closing a model while the server waits for its
/// auto-create data left the open request without a reply.
#[test]
fn an_open_closed_while_its_data_is_asked_for_still_gets_one_reply() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let open = ClientRequest::OpenModel { model: model("new"), auto_create: true };
    let said = server.send(alice, ClientMessage::Request { id: RequestId(1), request: open });
    let [ServerMessage::Request { id: asked, .. }] = heard(&said, alice)[..] else {
        panic!("expected the request for the model's data, got {said:?}");
    };
    let close = ClientRequest::CloseModel { model: model("new") };
    let mut said = server.send(alice, ClientMessage::Request { id: RequestId(2), request: close });
    // The data arrives too late: the open is over.
    let data = ClientResponse::AutoCreate {
        collection: CollectionId::new("notes").unwrap(),
        data: document(),
        permissions: None,
    };
    said.extend(server.send(alice, ClientMessage::Response { to: asked, response: data }));
    let replies_to = |request: RequestId| {
        let replies = heard(&said, alice).into_iter().filter(|m| match m {
            ServerMessage::Response { to, .. } | ServerMessage::Error { to: Some(to), .. } => {
                *to == request
            }
            _ => false,
        });
        replies.collect::<Vec<_>>()
    };
    let open_replies = replies_to(RequestId(1));
    assert!(
        matches!(&open_replies[..], [ServerMessage::Error { error, .. }] if error.code == ErrorCode::MODEL_NOT_OPEN),
        "{said:?}"
    );
    assert_eq!(replies_to(RequestId(2)).len(), 1, "{said:?}");
    assert!(server.models.get(&model("new")).is_none_or(|host| host.live().is_none()));
}

fn text_id() -> concord_ot::ElementId {
    document().element_at(&[PathSegment::Key("text".into())]).unwrap()
}

fn cursor_change(version: u64, index: usize) -> ClientMessage {
    ClientMessage::Notice(ClientNotice::Reference {
        model: model("doc"),
        change: ReferenceChange::Set {
            reference: ReferenceKey { element: Some(text_id()), key: "cursor".into() },
            value: ReferenceValue::Index(vec![index]),
            version,
        },
    })
}

/// The reference changes `conn` heard.
fn relayed(said: &[(ConnId, ServerMessage)], conn: ConnId) -> Vec<ReferenceChange> {
    heard(said, conn)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Push(ServerPush::RemoteReference { change, .. }) => Some(change),
            _ => None,
        })
        .collect()
}

/// The references a session opening the model now is told of.
fn opened_references(server: &mut Server, user: &str) -> Vec<Option<ReferenceValue>> {
    let conn = server.connect(user, SessionLimits::default());
    let said =
        server.request(conn, ClientRequest::OpenModel { model: model("doc"), auto_create: false });
    heard(&said, conn)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::Response { response: ServerResponse::ModelOpened(opened), .. } => {
                Some(opened.references.into_iter().map(|r| r.value).collect())
            }
            _ => None,
        })
        .expect("opened")
}

#[test]
fn references_move_forward_to_the_models_version_and_clear_with_their_element() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    open(&mut server, bob, "doc");
    assert_eq!(answer(&server.send(alice, submit(1, 1, 0, "hello")), alice, 1), Ok(1));

    // Bob's cursor at the end of "hello", set at version 1, is relayed at version 1.
    let said = server.send(bob, cursor_change(1, 5));
    let at_end = ReferenceValue::Index(vec![5]);
    let expected = ReferenceChange::Set {
        reference: ReferenceKey { element: Some(text_id()), key: "cursor".into() },
        value: at_end.clone(),
        version: 1,
    };
    assert_eq!(relayed(&said, alice), vec![expected]);

    // Alice types in front of it: the stored cursor moves with the text.
    let ab = submit_batch(1, 2..=2, 1, splice(0, 0, "ab"));
    assert_eq!(answer(&server.send(alice, ab), alice, 2), Ok(2));
    assert_eq!(opened_references(&mut server, "carol"), vec![Some(ReferenceValue::Index(vec![7]))]);

    // A cursor set at version 1 (before "ab") arrives late: moved forward, relayed at 2.
    let said = server.send(bob, cursor_change(1, 3));
    match relayed(&said, alice).as_slice() {
        [ReferenceChange::Set { value, version: 2, .. }] => {
            assert_eq!(*value, ReferenceValue::Index(vec![5]));
        }
        other => panic!("expected one set at version 2, got {other:?}"),
    }

    // Removing the string clears the reference, for late joiners too.
    let root = document().root_id();
    let remove =
        DiscreteOperation::new(root, OperationKind::ObjectRemoveProperty { key: "text".into() });
    assert_eq!(
        answer(&server.send(alice, submit_batch(1, 3..=3, 2, remove.into())), alice, 3),
        Ok(3)
    );
    assert_eq!(opened_references(&mut server, "dave"), vec![None]);
    // Set at a version when it still existed, it reads as cleared.
    let said = server.send(bob, cursor_change(2, 1));
    assert!(matches!(relayed(&said, alice).as_slice(), [ReferenceChange::Clear { .. }]));
}

#[test]
fn an_invalid_reference_is_refused_and_changes_nothing() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    open(&mut server, bob, "doc");
    assert_eq!(answer(&server.send(alice, submit(1, 1, 0, "hi")), alice, 1), Ok(1));
    assert!(relayed(&server.send(bob, cursor_change(1, 2)), alice).len() == 1);

    let on = |element, value| {
        ClientMessage::Notice(ClientNotice::Reference {
            model: model("doc"),
            change: ReferenceChange::Set {
                reference: ReferenceKey { element, key: "cursor".into() },
                value,
                version: 1,
            },
        })
    };
    let missing = concord_ot::ElementId { replica: ReplicaId(42), counter: 42 };
    let invalid = [
        // Past the end of the string.
        cursor_change(1, 3),
        // A version the model has not reached.
        cursor_change(9, 0),
        // An element that does not exist.
        on(Some(missing), ReferenceValue::Index(vec![0])),
        // A property reference on a string, an index reference on the model.
        on(Some(text_id()), ReferenceValue::Property(vec!["x".into()])),
        on(None, ReferenceValue::Index(vec![0])),
        // An element reference to an element that does not exist.
        on(None, ReferenceValue::Element(vec![missing])),
    ];
    for message in invalid {
        let said = server.send(bob, message.clone());
        let (code, _) = error_of(&said, bob);
        assert_eq!(code, ErrorCode::INVALID_REFERENCE, "{message:?}");
        assert!(relayed(&said, alice).is_empty(), "{message:?}");
    }
    assert_eq!(opened_references(&mut server, "carol"), vec![Some(ReferenceValue::Index(vec![2]))]);
}

/// A `Sync` request for "doc": creating it with `nonce` if given, with the submission of
/// `text` as seq 1 of `replica` if given.
fn sync(nonce: Option<u8>, submission: Option<(u64, &str)>) -> ClientRequest {
    ClientRequest::Sync {
        model: model("doc"),
        create: nonce.map(|n| {
            Box::new(NewModel {
                collection: CollectionId::new("notes").unwrap(),
                data: document(),
                nonce: CreationNonce([n; 16]),
                permissions: None,
            })
        }),
        known_version: 0,
        in_flight: None,
        submission: submission.map(|(replica, text)| {
            Box::new(SyncSubmission {
                replica: ReplicaId(replica),
                first_seq: 1,
                seq: 1,
                base_version: 0,
                operation: insert(&document(), text),
            })
        }),
    }
}

fn attached(server: &Server, conn: ConnId) -> usize {
    server.sessions[&conn].attached().count()
}

#[test]
fn one_sync_request_creates_resyncs_submits_and_closes() {
    let mut server = Server::new();
    let (alice, bob) = (
        server.connect("alice", SessionLimits::default()),
        server.connect("bob", SessionLimits::default()),
    );
    let said = server.request(alice, sync(Some(1), Some((1, "hi"))));
    let first = heard(&said, alice);
    assert!(
        matches!(
            first.as_slice(),
            [
                ServerMessage::Response {
                    response: ServerResponse::ResyncStarted { current_version: 0, .. },
                    ..
                },
                ServerMessage::Push(ServerPush::ResyncPage { last: true, .. }),
                ServerMessage::Push(ServerPush::Ack { seq: 1, version: 1, .. }),
            ]
        ),
        "{first:?}"
    );
    assert_eq!(text_of(&server, "doc"), "hi");
    assert_eq!(attached(&server, alice), 0, "closed once the submission was answered");
    assert!(server.models[&model("doc")].is_idle(), "nobody holds it open");
    // The ack leaves with the writes that make it durable: the creation and the commit.
    assert!(server.writes.iter().any(|w| matches!(w, Write::CreateModel { .. })));
    assert!(server.writes.iter().any(|w| matches!(w, Write::Commit(_))));

    // Sent again (its answer lost): the same creation, the original ack, nothing applied
    // twice.
    let said = server.request(alice, sync(Some(1), Some((1, "hi"))));
    assert_eq!(answer(&said, alice, 1), Ok(1));
    assert_eq!(text_of(&server, "doc"), "hi");
    assert_eq!(attached(&server, alice), 0);

    // Without a submission it closes right after the replay.
    open(&mut server, bob, "doc");
    let said = server.request(alice, sync(None, None));
    assert!(
        matches!(
            heard(&said, alice).last(),
            Some(ServerMessage::Push(ServerPush::ResyncPage { last: true, .. }))
        ),
        "{said:?}"
    );
    assert_eq!(attached(&server, alice), 0);
    // Bob saw alice come and go.
    let bob_heard = heard(&said, bob);
    assert!(
        bob_heard
            .iter()
            .any(|m| matches!(m, ServerMessage::Push(ServerPush::CollaboratorClosed { .. }))),
        "{bob_heard:?}"
    );
}

#[test]
fn a_hostile_sync_is_refused_whole_and_never_leaves_a_model_open() {
    let limits = SessionLimits { max_open_models: 1, ..SessionLimits::default() };
    let mut server = Server::new();
    let (alice, mallory) = (server.connect("alice", limits), server.connect("mallory", limits));
    create(&mut server, alice, "doc", None);

    // Another creation's id: taken; nothing submitted, nothing attached.
    let said = server.request(mallory, sync(Some(7), Some((9, "x"))));
    assert_eq!(error_of(&said, mallory).0, ErrorCode::MODEL_ALREADY_EXISTS);
    assert_eq!(text_of(&server, "doc"), "");
    assert_eq!(attached(&server, mallory), 0);

    // Over the open-model limit: refused before anything happens.
    let other = ClientRequest::OpenModel { model: model("doc"), auto_create: false };
    server.request(mallory, other);
    assert_eq!(attached(&server, mallory), 1);
    let mut beyond = sync(Some(8), None);
    let ClientRequest::Sync { model: m, .. } = &mut beyond else { unreachable!() };
    *m = model("new");
    let said = server.request(mallory, beyond);
    assert_eq!(error_of(&said, mallory).0, ErrorCode::OVERLOADED);
    assert!(server.models.get(&model("new")).is_none_or(ModelHost::is_absent), "not created");

    // On a model it has open: refused (closing it would close it under its own use).
    let said = server.request(mallory, sync(None, Some((9, "x"))));
    assert_eq!(error_of(&said, mallory).0, ErrorCode::MODEL_ALREADY_OPEN);
    assert_eq!(attached(&server, mallory), 1);
    server.request(mallory, ClientRequest::CloseModel { model: model("doc") });

    // Alice's replica under mallory's session: refused, and still closed afterwards.
    server.request(alice, sync(None, Some((1, "a"))));
    let said = server.request(mallory, sync(None, Some((1, "m"))));
    assert_eq!(answer(&said, mallory, 1), Err(ErrorCode::PERMISSION_DENIED));
    assert_eq!(text_of(&server, "doc"), "a");
    assert_eq!(attached(&server, mallory), 0);

    // A gap in its own seqs: refused, nothing decided, closed.
    let mut gap = sync(None, Some((9, "g")));
    let ClientRequest::Sync { submission: Some(s), .. } = &mut gap else { unreachable!() };
    (s.first_seq, s.seq) = (5, 5);
    let said = server.request(mallory, gap);
    assert_eq!(answer(&said, mallory, 5), Err(ErrorCode::SEQ_OUT_OF_ORDER));
    assert_eq!(attached(&server, mallory), 0);

    // A model it may not read: answered as one that does not exist.
    let secret = PermissionGrants {
        override_collection: true,
        world: Permissions::NONE,
        users: BTreeMap::new(),
    };
    let mut grants = sync(None, None);
    let ClientRequest::Sync { model: m, .. } = &mut grants else { unreachable!() };
    *m = model("secret");
    create(&mut server, alice, "secret", Some(secret));
    let said = server.request(mallory, grants);
    assert_eq!(error_of(&said, mallory).0, ErrorCode::MODEL_NOT_FOUND);
    assert_eq!(attached(&server, mallory), 0);
}

/// Alice and Bob with "doc" open on a server of `config`: alice typed "world" (version 1),
/// then a "-" in front for each version up to `last`.
fn world_typed_over(config: HostConfig, last: u64) -> (Server, ConnId, ConnId) {
    let mut server = Server::with_config(config);
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    for conn in [alice, bob] {
        open(&mut server, conn, "doc");
    }
    assert_eq!(answer(&server.send(alice, submit(1, 1, 0, "world")), alice, 1), Ok(1));
    for seq in 2..=last {
        let typed = submit_batch(1, seq..=seq, seq - 1, splice(0, 0, "-"));
        assert_eq!(answer(&server.send(alice, typed), alice, seq), Ok(seq));
    }
    (server, alice, bob)
}

#[test]
fn a_reference_older_than_memory_is_moved_through_the_stored_operations() {
    let config = HostConfig { history_in_memory: 2, ..HostConfig::default() };
    // Six more versions after "world": only the last two stay in memory.
    let (mut server, alice, bob) = world_typed_over(config, 7);
    // Bob's cursor on the "r" of "world" as of version 1 comes in late: read from the
    // store, moved through versions 2 to 7, relayed at 7.
    let said = server.send(bob, cursor_change(1, 2));
    match relayed(&said, alice).as_slice() {
        [ReferenceChange::Set { value, version: 7, .. }] => {
            assert_eq!(*value, ReferenceValue::Index(vec![8]));
        }
        other => panic!("expected one set at version 7, got {other:?}"),
    }
    assert_eq!(opened_references(&mut server, "carol"), vec![Some(ReferenceValue::Index(vec![8]))]);
}

#[test]
fn a_submission_older_than_memory_is_moved_through_the_store_a_page_at_a_time() {
    let config = HostConfig { history_in_memory: 2, page: 3, ..HostConfig::default() };
    // Twelve more versions after "world": memory keeps the last two to four.
    let (mut server, _alice, bob) = world_typed_over(config, 13);
    // Bob appends "!" after "world" as of version 1: moved through versions 2 to 13, read
    // from the store three operations at a time, never the whole gap at once.
    let appended = submit_batch(2, 1..=1, 1, splice(5, 0, "!"));
    assert_eq!(answer(&server.send(bob, appended), bob, 1), Ok(14));
    assert_eq!(text_of(&server, "doc"), format!("{}world!", "-".repeat(12)));
    let reads = server.operation_reads.clone();
    assert!(reads.len() >= 3, "{reads:?}");
    assert!(reads.iter().all(|(after, through)| through - after <= 3), "{reads:?}");
    assert_eq!(reads.first().map(|r| r.0), Some(1), "{reads:?}");
    assert!(reads.windows(2).all(|w| w[1].0 == w[0].1), "consecutive pages: {reads:?}");
}

#[test]
fn an_old_reference_is_moved_through_the_store_a_page_at_a_time_and_cleared_there() {
    let config = HostConfig { history_in_memory: 2, page: 3, ..HostConfig::default() };
    let (mut server, alice, bob) = world_typed_over(config, 13);
    // Bob's cursor on the "r" of "world" as of version 1: moved through twelve stored
    // inserts three at a time, relayed at the model's version.
    let said = server.send(bob, cursor_change(1, 2));
    match relayed(&said, alice).as_slice() {
        [ReferenceChange::Set { value, version: 13, .. }] => {
            assert_eq!(*value, ReferenceValue::Index(vec![14]));
        }
        other => panic!("expected one set at version 13, got {other:?}"),
    }
    let reads = std::mem::take(&mut server.operation_reads);
    assert!(reads.len() >= 3 && reads.iter().all(|(a, t)| t - a <= 3), "{reads:?}");
    assert!(reads.windows(2).all(|w| w[1].0 == w[0].1), "consecutive pages: {reads:?}");
    // The string removed in a stored page (then more versions on another property): a
    // cursor set before reads as cleared.
    let root = document().root_id();
    let remove =
        DiscreteOperation::new(root, OperationKind::ObjectRemoveProperty { key: "text".into() });
    assert_eq!(
        answer(&server.send(alice, submit_batch(1, 14..=14, 13, remove.into())), alice, 14),
        Ok(14)
    );
    for seq in 15..=20 {
        let value =
            Value::from_json(&serde_json::json!(seq), &mut IdGenerator::new(ReplicaId(1), seq))
                .unwrap();
        let set = OperationKind::ObjectAddProperty { key: format!("n{seq}"), value };
        let set = DiscreteOperation::new(root, set);
        assert_eq!(
            answer(
                &server.send(alice, submit_batch(1, seq..=seq, seq - 1, set.into())),
                alice,
                seq
            ),
            Ok(seq)
        );
    }
    let said = server.send(bob, cursor_change(13, 1));
    assert!(
        matches!(relayed(&said, alice).as_slice(), [ReferenceChange::Clear { .. }]),
        "{said:?}"
    );
    assert!(!server.operation_reads.is_empty(), "read from the store");
    assert_eq!(opened_references(&mut server, "carol"), vec![None]);
}

#[test]
fn what_one_session_makes_the_server_read_for_old_references_is_budgeted() {
    let config = HostConfig { history_in_memory: 2, ..HostConfig::default() };
    let mut server = Server::with_config(config);
    let budget = SessionLimits {
        max_reference_reads: 10,
        reference_reads_per_second: 1,
        ..Default::default()
    };
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", budget);
    let carol = server.connect("carol", budget);
    create(&mut server, alice, "doc", None);
    for conn in [alice, bob, carol] {
        open(&mut server, conn, "doc");
    }
    assert_eq!(answer(&server.send(alice, submit(1, 1, 0, "world")), alice, 1), Ok(1));
    for seq in 2..=21 {
        let typed = submit_batch(1, seq..=seq, seq - 1, splice(0, 0, "-"));
        assert_eq!(answer(&server.send(alice, typed), alice, seq), Ok(seq));
    }
    // Memory holds the last two or three versions: a cursor as of version 11 needs seven or
    // eight stored operations read, one as of version 1 more than bob's budget of ten.
    let cursor = ReferenceKey { element: Some(text_id()), key: "cursor".into() };
    let said = server.send(bob, cursor_change(1, 0));
    assert_eq!(refused_reference(&said, bob), (cursor.clone(), ErrorCode::OVERLOADED));
    let (_, message) = error_of(&said, bob);
    assert!(message.contains("stored operations") && message.contains("at most 10"), "{message}");
    assert!(relayed(&said, alice).is_empty(), "a refused reference changes nothing");
    // Within the budget: read, moved and relayed; then the budget is spent.
    let said = server.send(bob, cursor_change(11, 0));
    assert!(matches!(relayed(&said, alice).as_slice(), [ReferenceChange::Set { version: 21, .. }]));
    let said = server.send(bob, cursor_change(11, 1));
    assert_eq!(refused_reference(&said, bob), (cursor.clone(), ErrorCode::OVERLOADED));
    assert!(relayed(&said, alice).is_empty());
    // The budget is per session: carol still has hers.
    let said = server.send(carol, cursor_change(11, 0));
    assert_eq!(relayed(&said, alice).len(), 1);
    // Time refills bob's (one operation a second, up to ten).
    server.now += 10_000;
    let said = server.send(bob, cursor_change(11, 1));
    assert_eq!(relayed(&said, alice).len(), 1);
    // A reference at a version memory holds costs nothing.
    for index in 0..5 {
        let said = server.send(bob, cursor_change(21, index));
        assert_eq!(relayed(&said, alice).len(), 1);
    }
}

#[test]
fn a_reference_too_far_back_or_without_its_history_is_refused_by_name() {
    use concord_sync::host::{MAX_REFERENCE_CATCH_UP, ModelRecord};
    // A model at a version far past anything in memory or in the (empty) store.
    let version = MAX_REFERENCE_CATCH_UP + 5;
    let mut server = Server::new();
    let record = ModelRecord {
        collection: CollectionId::new("notes").unwrap(),
        created_at: Timestamp(0),
        nonce: None,
        creator: None,
        grants: PermissionGrants::default(),
    };
    let snapshot = concord_protocol::ModelSnapshot {
        collection: record.collection.clone(),
        version,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data: document(),
    };
    let stored = StoredModel {
        record,
        collection: None,
        snapshot,
        operations: Vec::new(),
        last_decisions: BTreeMap::new(),
        authors: BTreeMap::new(),
    };
    let host = ModelHost::new(model("doc"), Loaded::Model(Box::new(stored)), server.config.clone());
    server.models.insert(model("doc"), host.unwrap());
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    open(&mut server, alice, "doc");
    open(&mut server, bob, "doc");
    let cursor = ReferenceKey { element: Some(text_id()), key: "cursor".into() };
    // Further back than the server moves references: refused without reading.
    let said = server.send(bob, cursor_change(version - MAX_REFERENCE_CATCH_UP - 1, 0));
    assert_eq!(refused_reference(&said, bob), (cursor.clone(), ErrorCode::INVALID_REFERENCE));
    assert!(relayed(&said, alice).is_empty());
    // Within reach, but the store lacks those operations: read once, then refused.
    let said = server.send(bob, cursor_change(version - 1, 0));
    assert_eq!(refused_reference(&said, bob), (cursor, ErrorCode::INVALID_REFERENCE));
    // At the current version it is taken.
    let said = server.send(bob, cursor_change(version, 0));
    assert_eq!(relayed(&said, alice).len(), 1);
}

#[test]
fn collaborators_carry_when_they_opened_and_closing_names_the_user() {
    let mut server = Server::new();
    let alice = server.connect("alice", SessionLimits::default());
    let bob = server.connect("bob", SessionLimits::default());
    create(&mut server, alice, "doc", None);
    open(&mut server, alice, "doc");
    let opened_at = server.now + 1;
    let said =
        server.request(bob, ClientRequest::OpenModel { model: model("doc"), auto_create: false });
    let told = heard(&said, alice);
    match told.as_slice() {
        [ServerMessage::Push(ServerPush::CollaboratorOpened { collaborator, .. })] => {
            assert_eq!(collaborator.user, UserId("bob".into()));
            assert_eq!(collaborator.since, Timestamp(opened_at));
        }
        other => panic!("expected bob's opening, got {other:?}"),
    }
    // Bob, opening later, lists alice since her own opening.
    let listed = heard(&said, bob)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::Response { response: ServerResponse::ModelOpened(opened), .. } => {
                Some(opened.collaborators)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user, UserId("alice".into()));
    assert!(listed[0].since < Timestamp(opened_at));
    let said = server.request(bob, ClientRequest::CloseModel { model: model("doc") });
    match heard(&said, alice).as_slice() {
        [ServerMessage::Push(ServerPush::CollaboratorClosed { session, user, .. })] => {
            assert_eq!((session.0.as_str(), user.0.as_str()), ("s2", "bob"));
        }
        other => panic!("expected bob's closing, got {other:?}"),
    }
}
