//! The server's hosts, driven directly: what one hostile or careless session can and cannot
//! do to others — use another user's replica, learn which models exist, make the server
//! hold more than its limits — and what a model's creator keeps.

use std::collections::BTreeMap;
use std::sync::Arc;

use concord_ot::{DiscreteOperation, Document, IdGenerator, Operation, OperationKind, PathSegment};
use concord_ot::{ReferenceValue, ReplicaId, Value};
use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, CollectionId, CreationNonce, ErrorCode, InFlight,
    KnownModel, ModelId, OfflineUpdate, PermissionGrants, Permissions, ReferenceChange,
    ReferenceKey, RequestId, ServerMessage, ServerPush, ServerResponse, SessionId, Timestamp, User,
    UserId,
};
use concord_sync::host::{
    ConnId, HostConfig, Loaded, ModelHost, ModelRequest, Notice, Outgoing, Read, ReadResult,
    SessionHost, SessionLimits, SessionOutput, SessionRef, Write,
};

/// Hosts wired together, every job made durable at once, every read answered.
struct Server {
    config: Arc<HostConfig>,
    models: BTreeMap<ModelId, ModelHost>,
    sessions: BTreeMap<ConnId, SessionHost>,
    owners: BTreeMap<ReplicaId, UserId>,
    writes: Vec<Write>,
    next_conn: ConnId,
    now: i64,
}

impl Server {
    fn new() -> Server {
        Server {
            config: Arc::new(HostConfig::default()),
            models: BTreeMap::new(),
            sessions: BTreeMap::new(),
            owners: BTreeMap::new(),
            writes: Vec::new(),
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
        let host = self.models.entry(model.clone()).or_insert_with(|| {
            ModelHost::new(model, Loaded::Absent { deleted: false }, config).unwrap()
        });
        host.handle(Timestamp(self.now), from, request);
        while let Some(read) = host.pending_read().cloned() {
            let result = match read {
                Read::Collection(_) => ReadResult::Collection(Ok(None)),
                Read::Operations { .. } => ReadResult::Operations(Ok(Vec::new())),
                Read::ReplicaOwner { replica, claimant } => ReadResult::ReplicaOwner(Ok(self
                    .owners
                    .entry(replica)
                    .or_insert(claimant)
                    .clone())),
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
            let Notice::Closed { conn, .. } = &notice;
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

fn submit(replica: u64, seq: u64, base_version: u64, text: &str) -> ClientMessage {
    ClientMessage::Notice(ClientNotice::Submit {
        model: model("doc"),
        replica: ReplicaId(replica),
        seq,
        base_version,
        operation: insert(&document(), text),
    })
}

/// What `conn` heard, without the request ids.
fn heard(said: &[(ConnId, ServerMessage)], conn: ConnId) -> Vec<ServerMessage> {
    said.iter().filter(|(c, _)| *c == conn).map(|(_, m)| m.clone()).collect()
}

fn error_of(said: &[(ConnId, ServerMessage)], conn: ConnId) -> (ErrorCode, String) {
    match heard(said, conn).as_slice() {
        [ServerMessage::Error { error, .. }] => (error.code, error.message.clone()),
        other => panic!("expected one error, got {other:?}"),
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
            ClientRequest::DeleteModel { model: model(id) },
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
