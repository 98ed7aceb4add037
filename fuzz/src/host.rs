//! Stateful fuzzing of the server's sans-IO hosts: the fuzzer's bytes are read, a step at a
//! time, as a program of a few users' sessions sending client messages (opens with and
//! without auto-create, creations, resyncs, one-request syncs with creations and
//! submissions, submissions under their own and others' replica ids with duplicated,
//! replayed and skipped seqs, closes, deletions, subscriptions, permission changes,
//! references, history reads, queries, presence and identity lookups) and of store events
//! (a queued job becoming durable, a crash losing what is not durable, idle models
//! unloading, the store failing its next reads). The server is [`HostDriver`]: the real session and model hosts over an
//! in-memory store.
//!
//! After every step [`check_host`] checks: the driver found nothing wrong (no submission
//! committed twice, no replay the store lacks, nothing revealing a model delivered to a
//! session whose user may not read it); no query result names a model its user may not
//! read; every request got at most one reply, and by the end of the program exactly one;
//! every ack names an operation its user's session submitted; every acknowledged submission
//! is in the durable log, at the version its ack named, and stays there across crashes
//! unless its model is deleted; every session holds no more open models, subscriptions and
//! references than its limits; every loaded model holds no more bytes than
//! `max_model_bytes`, and no shared reference more than `max_reference_bytes`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arbitrary::{Result, Unstructured};
use concord_ot::{Document, ReferenceValue, ReplicaId};
use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, ClientResponse, CollectionId, CreationNonce,
    ErrorCode, ErrorReply, HistoryStart, IdentityRequest, InFlight, KnownModel, ModelId, NewModel,
    PermissionGrants, Permissions, PresenceRequest, ReferenceChange, ReferenceKey, RequestId,
    ServerMessage, ServerPush, ServerRequest, ServerResponse, SessionId, SyncSubmission, Timestamp,
    User, UserId,
};
use concord_sync::host::{CollectionConfig, ConnId, HostConfig, SessionLimits, reference_bytes};
use concord_sync::model_bytes;
use concord_testkit::host_driver::{HostDriver, Sent};
use concord_testkit::server_store::MemoryServerStore;

use crate::generate::{Config, Generator};

const USERS: u8 = 3;
const MODELS: u8 = 3;
/// Replica ids the sessions submit under: each user has "its own", but any session may use
/// any of them.
const REPLICAS: &[u64] = &[1, 2, 3, 4];
/// A collection whose world may do nothing: only creators and grants open its models.
const PRIVATE: &str = "private";
const OPEN: &str = "open";
const MAX_STEPS: usize = 200;

/// Small limits, so that a short program reaches them.
pub const LIMITS: SessionLimits = SessionLimits {
    max_open_models: 2,
    max_subscriptions: 2,
    max_references: 2,
    max_reference_bytes: 48,
    max_reference_reads: 64,
    reference_reads_per_second: 1,
};

fn host_config() -> HostConfig {
    let private = CollectionConfig { world: Permissions::NONE, ..CollectionConfig::default() };
    HostConfig {
        collections: BTreeMap::from([(collection(PRIVATE), private)]),
        // A short memory, frequent snapshots and small pages: reads of old history,
        // snapshot restores and paged replays all happen within a few steps.
        history_in_memory: 2,
        snapshot_every: 3,
        page: 2,
        max_model_bytes: 4_096,
        ..HostConfig::default()
    }
}

fn collection(name: &str) -> CollectionId {
    CollectionId::new(name).expect("a valid collection id")
}

fn model(n: u8) -> ModelId {
    ModelId::new(format!("m{n}")).expect("a valid model id")
}

fn user(n: u8) -> User {
    User { id: UserId(format!("u{n}")), display_name: None, anonymous: false }
}

/// What a program did, to tell whether generated programs reach the interesting cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    pub steps: usize,
    pub replies: usize,
    pub acks: usize,
    pub crashes: usize,
    /// Store reads the driver failed (unreachable or a fault of the store).
    pub failed_reads: usize,
}

/// Runs the program the bytes describe; `Err` names the invariant it broke (with what
/// happened). A panic in the hosts propagates.
pub fn check_host(data: &[u8]) -> std::result::Result<HostStats, String> {
    let mut u = Unstructured::new(data);
    let mut harness = Harness::new();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        // Running out of bytes mid-step ends the program, as an empty input does.
        if harness.step(&mut u).is_err() {
            break;
        }
        harness.stats.steps += 1;
        harness.check().map_err(|broken| harness.explain(broken))?;
    }
    harness.finish()
}

/// A connection the program opened, as its client sees it.
struct Conn {
    id: ConnId,
    user: u8,
    next_request: u64,
    /// Requests sent and how many replies each got.
    replies: BTreeMap<RequestId, u32>,
    /// How to answer the next `AutoCreate` requests: with a document, or with an error.
    auto_create: VecDeque<Option<(CollectionId, Document, Option<PermissionGrants>)>>,
}

/// An acknowledged submission: the durable log must keep it at `version`.
struct Acked {
    model: ModelId,
    version: u64,
    timestamp: Timestamp,
}

struct Harness {
    driver: HostDriver,
    now: i64,
    conns: Vec<Conn>,
    /// Every `(model, seq)` submitted, and under which replicas.
    submitted: BTreeMap<(ModelId, u64), BTreeSet<ReplicaId>>,
    /// The last seq submitted per model and replica.
    last_seq: BTreeMap<(ModelId, ReplicaId), u64>,
    acked: Vec<Acked>,
    /// The user of every session so far.
    session_users: BTreeMap<SessionId, u8>,
    error: Option<String>,
    /// What happened so far, to explain a broken invariant.
    log: Vec<String>,
    stats: HostStats,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            driver: HostDriver::new(host_config(), LIMITS, MemoryServerStore::new()),
            now: 0,
            conns: Vec::new(),
            submitted: BTreeMap::new(),
            last_seq: BTreeMap::new(),
            acked: Vec::new(),
            session_users: BTreeMap::new(),
            error: None,
            log: Vec::new(),
            stats: HostStats::default(),
        }
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        self.now += 1;
        if self.conns.is_empty() || u.ratio(1, 12)? {
            let user = user(u.int_in_range(0..=USERS - 1)?);
            let session = self.driver.connect(user.clone());
            let id = session.conn;
            self.log.push(format!("{id}: connect {}", user.id.0));
            let user = user.id.0[1..].parse().expect("u<n>");
            self.session_users.insert(session.session, user);
            let conn = Conn {
                id,
                user,
                next_request: 0,
                replies: BTreeMap::new(),
                auto_create: VecDeque::new(),
            };
            self.conns.push(conn);
            return Ok(());
        }
        let index = u.choose_index(self.conns.len())?;
        let model_id = model(u.int_in_range(0..=MODELS - 1)?);
        match u.int_in_range(0..=23)? {
            0 => {
                self.log.push(format!("{}: disconnect", self.conns[index].id));
                let sent = self.driver.close(Timestamp(self.now), self.conns[index].id);
                self.deliver(sent);
                self.conns.remove(index);
            }
            1..=3 => {
                let auto_create = u.ratio(2, 3)?;
                if auto_create {
                    let answer = if u.ratio(4, 5)? {
                        Some((self.collection(u)?, self.document(u)?, self.grants(u)?))
                    } else {
                        None
                    };
                    self.conns[index].auto_create.push_back(answer);
                }
                self.request(index, ClientRequest::OpenModel { model: model_id, auto_create });
            }
            4 | 5 => {
                let create = ClientRequest::CreateModel {
                    model: model_id,
                    collection: self.collection(u)?,
                    data: self.document(u)?,
                    nonce: CreationNonce([u.int_in_range(0..=1)?; 16]),
                    permissions: self.grants(u)?,
                };
                self.request(index, create);
            }
            6 => {
                let live = self.live_version(&model_id);
                let known_version = live.saturating_sub(u.int_in_range(0..=4)?);
                let in_flight = if u.arbitrary()? {
                    let replica = ReplicaId(*u.choose(REPLICAS)?);
                    Some(InFlight { replica, seq: u.int_in_range(0..=6)? })
                } else {
                    None
                };
                let resync = ClientRequest::Resync { model: model_id, known_version, in_flight };
                self.request(index, resync);
            }
            7 => {
                let open = u.arbitrary()?;
                self.request(index, ClientRequest::ResyncComplete { model: model_id, open });
            }
            8..=13 => {
                let session = self.driver.session(self.conns[index].id);
                let attached: Vec<ModelId> =
                    session.map(|s| s.attached().cloned().collect()).unwrap_or_default();
                let model = if !attached.is_empty() && u.ratio(4, 5)? {
                    attached[u.choose_index(attached.len())?].clone()
                } else {
                    model_id
                };
                self.submit(u, index, model)?
            }
            14 => self.request(index, ClientRequest::CloseModel { model: model_id }),
            15 => {
                // Unguarded, or naming one of the two creations programs make.
                let creation = match u.int_in_range(0..=2)? {
                    2 => None,
                    n => Some(CreationNonce([n; 16])),
                };
                self.request(index, ClientRequest::DeleteModel { model: model_id, creation })
            }
            16 => {
                let mut subscribe = Vec::new();
                for _ in 0..u.int_in_range(0..=3)? {
                    let model = model(u.int_in_range(0..=MODELS - 1)?);
                    let version = if u.arbitrary()? { Some(u.int_in_range(0..=8)?) } else { None };
                    subscribe.push(KnownModel { model, version });
                }
                let unsubscribe = if u.arbitrary()? { vec![model_id] } else { Vec::new() };
                let replace = u.arbitrary()?;
                let request = ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace };
                self.request(index, request);
            }
            17 => {
                let grants = self.grants(u)?.unwrap_or_default();
                self.request(index, ClientRequest::SetPermissions { model: model_id, grants });
            }
            18 => self.request(index, ClientRequest::GetPermissions { model: model_id }),
            19 => {
                let reference = ReferenceKey {
                    element: None,
                    key: "k".repeat(u.int_in_range(0..=3)? * 20 + u.int_in_range(0..=3)?),
                };
                let value = ReferenceValue::Index(vec![0; u.int_in_range(0..=7)?]);
                let change = match u.int_in_range(0..=3)? {
                    0 => ReferenceChange::Share { reference, value: Some(value) },
                    1 => ReferenceChange::Set { reference, value, version: 0 },
                    2 => ReferenceChange::Clear { reference },
                    _ => ReferenceChange::Unshare { reference },
                };
                let notice = ClientNotice::Reference { model: model_id, change };
                self.send(index, ClientMessage::Notice(notice));
            }
            20 | 21 => {
                self.log.push("flush one".into());
                let sent = self.driver.flush_one();
                self.deliver(sent);
            }
            22 => match u.int_in_range(0..=3)? {
                0 => {
                    self.log.push("crash".into());
                    self.stats.crashes += 1;
                    self.driver.crash();
                    self.conns.clear();
                }
                1 => {
                    self.log.push("unload idle".into());
                    let sent = self.driver.unload_idle();
                    self.deliver(sent);
                }
                // The store fails its next reads: unreachable, or a fault of its own.
                2 => {
                    let (reads, damaged) = (u.int_in_range(1..=4)?, u.arbitrary()?);
                    self.log.push(format!("the store fails {reads} reads ({damaged})"));
                    self.driver.failing_reads = reads;
                    self.driver.damaged = damaged;
                }
                _ => {
                    self.log.push("flush all".into());
                    let sent = self.driver.flush_all();
                    self.deliver(sent);
                }
            },
            _ => self.other_request(u, index, model_id)?,
        }
        Ok(())
    }

    /// The requests that neither edit nor open a model: pings, history reads, queries,
    /// one-request syncs, presence and identity lookups.
    fn other_request(&mut self, u: &mut Unstructured, index: usize, model: ModelId) -> Result<()> {
        let request = match u.int_in_range(0..=7)? {
            0 => ClientRequest::Ping,
            1 => ClientRequest::HistoryOpen { model },
            2 => ClientRequest::HistoryFetch {
                model,
                start: if u.arbitrary()? {
                    HistoryStart::Version(u.int_in_range(0..=8)?)
                } else {
                    HistoryStart::Time(Timestamp(u.int_in_range(0..=self.now)?))
                },
                checkpoint: u.arbitrary()?,
                max_operations: u.int_in_range(0..=4)?,
                max_bytes: u.int_in_range(0..=512)?,
            },
            3 => {
                let collection = self.collection(u)?;
                let query = match u.int_in_range(0..=3)? {
                    0 => format!("SELECT * FROM {collection}"),
                    1 => format!("SELECT * FROM {collection} ORDER BY a LIMIT 1 OFFSET 1"),
                    2 => format!("SELECT a FROM {collection} WHERE a IS NOT NULL"),
                    _ => "SELECT FROM WHERE".to_owned(),
                };
                ClientRequest::Query { query }
            }
            4 => {
                let identity = match u.int_in_range(0..=2)? {
                    0 => IdentityRequest::User { user: user(u.int_in_range(0..=USERS - 1)?).id },
                    1 => IdentityRequest::Users { users: (0..USERS).map(|n| user(n).id).collect() },
                    _ => IdentityRequest::Search { prefix: "u".into(), limit: 2 },
                };
                ClientRequest::Identity(identity)
            }
            5 => {
                let presence = match u.int_in_range(0..=1)? {
                    0 => PresenceRequest::Subscribe {
                        users: vec![user(u.int_in_range(0..=USERS - 1)?).id],
                    },
                    _ => PresenceRequest::RemoveState { keys: None },
                };
                ClientRequest::Presence(presence)
            }
            _ => return self.sync(u, index, model),
        };
        self.request(index, request);
        Ok(())
    }

    /// A `Sync`: maybe a creation, a resync, maybe a submission, then the model closes.
    fn sync(&mut self, u: &mut Unstructured, index: usize, model: ModelId) -> Result<()> {
        let create = if u.ratio(1, 3)? {
            Some(Box::new(NewModel {
                collection: self.collection(u)?,
                data: self.document(u)?,
                nonce: CreationNonce([u.int_in_range(0..=1)?; 16]),
                permissions: self.grants(u)?,
            }))
        } else {
            None
        };
        let live = self.live_version(&model);
        let known_version = live.saturating_sub(u.int_in_range(0..=4)?);
        let in_flight = if u.arbitrary()? {
            Some(InFlight { replica: ReplicaId(*u.choose(REPLICAS)?), seq: u.int_in_range(0..=6)? })
        } else {
            None
        };
        let submission = if u.ratio(3, 4)? {
            let submission = self.submission(u, &model)?;
            Some(Box::new(submission))
        } else {
            None
        };
        let key = submission.as_ref().map(|s| (s.replica, s.first_seq, s.seq));
        let before = key.map(|(replica, _, _)| self.driver.last_seq(&model, replica));
        let request = ClientRequest::Sync {
            model: model.clone(),
            create,
            known_version,
            in_flight,
            submission,
        };
        self.request(index, request);
        if let (Some((replica, first_seq, seq)), Some(before)) = (key, before) {
            self.check_decided(&model, replica, first_seq, seq, before);
        }
        Ok(())
    }

    fn submit(&mut self, u: &mut Unstructured, index: usize, model: ModelId) -> Result<()> {
        let SyncSubmission { replica, first_seq, seq, base_version, operation } =
            self.submission(u, &model)?;
        let before = self.driver.last_seq(&model, replica);
        let submit = ClientNotice::Submit {
            model: model.clone(),
            replica,
            first_seq,
            seq,
            base_version,
            operation,
        };
        self.send(index, ClientMessage::Notice(submit));
        self.check_decided(&model, replica, first_seq, seq, before);
        Ok(())
    }

    /// A submission to `model`, recorded as submitted: under any replica, mostly the next
    /// seq, sometimes a duplicate, a gap or an old one replayed, mostly on the live version.
    fn submission(&mut self, u: &mut Unstructured, model: &ModelId) -> Result<SyncSubmission> {
        let replica = ReplicaId(*u.choose(REPLICAS)?);
        let last = self.last_seq.get(&(model.clone(), replica)).copied().unwrap_or(0);
        let seq = match u.int_in_range(0..=7)? {
            0 => last,
            1 => last + 2,
            2 => u.int_in_range(0..=last + 1)?,
            _ => last + 1,
        };
        let first_seq = if u.ratio(3, 4)? { seq } else { u.int_in_range(0..=seq)? };
        let (version, doc) = match self.driver.state(model) {
            Ok(Some((version, doc))) => (version, doc),
            _ => (0, self.document(u)?),
        };
        let behind = if u.ratio(3, 4)? { 0 } else { u.int_in_range(1..=3)? };
        let base_version = version.saturating_sub(behind);
        let config = Config {
            replica: replica.0,
            known_replicas: REPLICAS,
            reuse_ids: u.ratio(1, 8)?,
            exact_numbers: true,
            wild: u.ratio(1, 8)?,
        };
        let operation = Generator::new(u, config).operation(&doc)?;
        self.last_seq.insert((model.clone(), replica), last.max(seq));
        self.submitted.entry((model.clone(), seq)).or_default().insert(replica);
        Ok(SyncSubmission { replica, first_seq, seq, base_version, operation })
    }

    /// A replica's seqs are decided (committed, or refused for good) in order, without a
    /// gap: a submission is decided only when its first seq follows the last decided one.
    fn check_decided(
        &mut self,
        model: &ModelId,
        replica: ReplicaId,
        first_seq: u64,
        seq: u64,
        before: Option<u64>,
    ) {
        let after = self.driver.last_seq(model, replica);
        if after != before {
            let expected = before.unwrap_or(0) + 1;
            if after != Some(seq) || first_seq != expected {
                self.fail(format!(
                    "{model}: submission {first_seq}..={seq} of replica {} moved its last \
                     decided seq from {before:?} to {after:?}",
                    replica.0
                ));
            }
        }
    }

    fn collection(&self, u: &mut Unstructured) -> Result<CollectionId> {
        Ok(collection(if u.ratio(1, 4)? { PRIVATE } else { OPEN }))
    }

    fn document(&self, u: &mut Unstructured) -> Result<Document> {
        let config = Config {
            replica: 0,
            known_replicas: REPLICAS,
            reuse_ids: false,
            exact_numbers: true,
            wild: false,
        };
        Generator::new(u, config).document()
    }

    fn grants(&self, u: &mut Unstructured) -> Result<Option<PermissionGrants>> {
        if u.arbitrary()? {
            return Ok(None);
        }
        let permissions = |u: &mut Unstructured| -> Result<Permissions> {
            Ok(Permissions {
                read: u.arbitrary()?,
                write: u.arbitrary()?,
                remove: u.arbitrary()?,
                manage: u.arbitrary()?,
            })
        };
        let mut grants = PermissionGrants {
            override_collection: u.arbitrary()?,
            world: permissions(u)?,
            users: BTreeMap::new(),
        };
        for _ in 0..u.int_in_range(0..=2)? {
            grants.users.insert(user(u.int_in_range(0..=USERS - 1)?).id, permissions(u)?);
        }
        Ok(Some(grants))
    }

    fn live_version(&self, model: &ModelId) -> u64 {
        match self.driver.state(model) {
            Ok(Some((version, _))) => version,
            _ => 0,
        }
    }

    fn request(&mut self, index: usize, request: ClientRequest) {
        let conn = &mut self.conns[index];
        conn.next_request += 1;
        let id = RequestId(conn.next_request);
        conn.replies.insert(id, 0);
        self.send(index, ClientMessage::Request { id, request });
    }

    fn send(&mut self, index: usize, message: ClientMessage) {
        let conn = self.conns[index].id;
        self.log.push(format!("{conn} <- {message:?}"));
        let sent = self.driver.receive(Timestamp(self.now), conn, message);
        self.deliver(sent);
    }

    /// Takes in what the server sent: counts replies, records acks, answers `AutoCreate`.
    fn deliver(&mut self, sent: std::result::Result<Sent, String>) {
        let mut queue: VecDeque<(ConnId, ServerMessage)> = match sent {
            Ok(sent) => sent.into(),
            Err(error) => return self.fail(error),
        };
        while let Some((conn_id, message)) = queue.pop_front() {
            self.log.push(format!("{conn_id} -> {message:?}"));
            let Some(index) = self.conns.iter().position(|c| c.id == conn_id) else {
                self.fail(format!("a message for connection {conn_id}, which is gone"));
                continue;
            };
            if let ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } =
                &message
            {
                let user = user(self.conns[index].user);
                for row in &page.rows {
                    if !self.driver.may_read(&user, &row.model) {
                        self.fail(format!(
                            "{}: a query result for {} names it, which they may not read",
                            row.model, user.id.0
                        ));
                    }
                }
            }
            let conn = &mut self.conns[index];
            match message {
                ServerMessage::Response { to, .. } | ServerMessage::Error { to: Some(to), .. } => {
                    match conn.replies.get_mut(&to) {
                        None => self.fail(format!("conn {conn_id}: a reply to unsent {to}")),
                        Some(count) => {
                            *count += 1;
                            self.stats.replies += 1;
                            if *count > 1 {
                                self.fail(format!("conn {conn_id}: request {to} replied twice"));
                            }
                        }
                    }
                }
                ServerMessage::Request { id, request: ServerRequest::AutoCreate { .. } } => {
                    let reply = match conn.auto_create.pop_front().flatten() {
                        Some((collection, data, permissions)) => ClientMessage::Response {
                            to: id,
                            response: ClientResponse::AutoCreate { collection, data, permissions },
                        },
                        None => ClientMessage::Error {
                            to: Some(id),
                            error: ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no data"),
                        },
                    };
                    match self.driver.receive(Timestamp(self.now), conn_id, reply) {
                        Ok(more) => queue.extend(more),
                        Err(error) => self.fail(error),
                    }
                }
                ServerMessage::Push(ServerPush::Ack { model, seq, version, timestamp }) => {
                    let replicas = self.submitted.get(&(model.clone(), seq));
                    let committed = replicas.is_some_and(|replicas| {
                        replicas.iter().any(|r| self.driver.is_committed(&model, *r, seq))
                    });
                    // A deletion made durable in the same flush forgets the commits.
                    if !committed && !self.driver.durable().is_deleted(&model) {
                        self.fail(format!("{model}: seq {seq} acked but not durably committed"));
                    }
                    // An ack tells a user that their own change is in: the operation at the
                    // acked version was submitted by one of the user's sessions.
                    let store = self.driver.durable();
                    if !store.is_deleted(&model) {
                        let at = store.operations(&model, version - 1, version, 1);
                        let user = self.conns[index].user;
                        let author = at.first().and_then(|op| self.session_users.get(&op.author));
                        if author != Some(&user) {
                            self.fail(format!(
                                "{model}: u{user} was acked seq {seq} at version {version}, \
                                 whose operation is {at:?}"
                            ));
                        }
                    }
                    self.acked.push(Acked { model, version, timestamp });
                    self.stats.acks += 1;
                }
                _ => {}
            }
        }
    }

    /// The broken invariant, and the last of what happened before it.
    fn explain(&self, broken: String) -> String {
        let recent = &self.log[self.log.len().saturating_sub(120)..];
        format!("{broken}\nlast steps:\n{}", recent.join("\n"))
    }

    fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    /// The invariants that hold after every step.
    fn check(&mut self) -> std::result::Result<(), String> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let store = self.driver.durable();
        for acked in &self.acked {
            if store.is_deleted(&acked.model) {
                continue;
            }
            let found = store.operations(&acked.model, acked.version - 1, acked.version, 1);
            if !found
                .iter()
                .any(|op| op.version == acked.version && op.timestamp == acked.timestamp)
            {
                return Err(format!(
                    "{}: the acked operation at version {} is not in the durable log (found \
                     {found:?})",
                    acked.model, acked.version
                ));
            }
        }
        for conn in &self.conns {
            let Some(session) = self.driver.session(conn.id) else {
                return Err(format!("connection {} is gone without a close", conn.id));
            };
            let open = session.attached().count();
            let subscribed = session.subscribed().count();
            let references = session.shared_references();
            if open > LIMITS.max_open_models
                || subscribed > LIMITS.max_subscriptions
                || references > LIMITS.max_references
            {
                return Err(format!(
                    "connection {} holds {open} open models, {subscribed} subscriptions and \
                     {references} references, over its limits {LIMITS:?}",
                    conn.id
                ));
            }
        }
        let max_model_bytes = self.driver.config().max_model_bytes;
        for host in self.driver.loaded_models() {
            if let Some((version, document)) = host.live() {
                let bytes = model_bytes(document);
                if bytes > max_model_bytes {
                    return Err(format!(
                        "{} holds {bytes} bytes at version {version}, over its limit of \
                         {max_model_bytes}",
                        host.model()
                    ));
                }
            }
            let mut per_session: BTreeMap<&SessionId, usize> = BTreeMap::new();
            for (session, key, value) in host.references() {
                let bytes = key.key.len() + value.map_or(0, reference_bytes);
                *per_session.entry(session).or_default() += 1;
                if bytes > LIMITS.max_reference_bytes {
                    return Err(format!(
                        "{}: {session:?} shares a reference of {bytes} bytes, over the limit of {}",
                        host.model(),
                        LIMITS.max_reference_bytes
                    ));
                }
            }
            if let Some((session, count)) =
                per_session.into_iter().find(|(_, count)| *count > LIMITS.max_references)
            {
                return Err(format!(
                    "{}: {session:?} holds {count} references, over its limit of {}",
                    host.model(),
                    LIMITS.max_references
                ));
            }
        }
        Ok(())
    }

    /// Everything becomes durable; then every request has had exactly one reply.
    fn finish(mut self) -> std::result::Result<HostStats, String> {
        self.log.push("flush everything".into());
        // Answers to what a flush delivered (`AutoCreate`) may queue more.
        while self.driver.has_pending() {
            let sent = self.driver.flush_all();
            self.deliver(sent);
        }
        self.check().map_err(|broken| self.explain(broken))?;
        for conn in &self.conns {
            for (request, count) in &conn.replies {
                if *count != 1 {
                    return Err(self.explain(format!(
                        "connection {} (user u{}): request {request} got {count} replies",
                        conn.id, conn.user
                    )));
                }
            }
        }
        self.stats.failed_reads = self.driver.unavailable_reads + self.driver.internal_reads;
        Ok(self.stats)
    }
}
