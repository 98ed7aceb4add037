//! A seeded simulation of several server nodes sequencing models over one shared store with
//! leases ([`concord_sync::lease::Leases`], the nodes' real lease logic): nodes acquire a
//! model's lease when a client brings them work for it, load the model, append operations
//! under the lease's fencing epoch, renew their leases in bulk, and step down when a lease
//! runs out, a renewal loses it or an append is fenced. Meanwhile nodes pause (past their
//! leases), crash (losing memory, their last appends still on their way), shut down
//! gracefully (releasing their leases), and messages between nodes and the store are
//! sometimes delayed far past the lease time. Clients resend what was not acknowledged,
//! to any node.
//!
//! The store below does what the PostgreSQL backend's lease statements do: a lease is
//! granted with a new epoch when it is free, released, held by the asker, or expired by
//! the store's clock; an append is accepted only under the model's current epoch, by its
//! holder, before expiry. Checked on every step: every accepted append extends the log
//! exactly as the appending node believes it to be (one writer per model version), no
//! operation is in a log twice, and a node that believes it holds a lease holds it in the
//! store; at the end, every operation was acknowledged and every acknowledged operation is
//! stored once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use concord_sync::Time;
use concord_sync::lease::{LeaseConfig, Leases};

use crate::SimRng;

/// A scenario's shape.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSimConfig {
    pub nodes: usize,
    pub models: usize,
    pub clients: usize,
    pub ops_per_client: usize,
    pub lease: LeaseConfig,
    /// Pauses, crashes, restarts and long delays happen until then (ms).
    pub chaos_until: u64,
    /// Everything must be acknowledged by then (ms).
    pub end: u64,
}

impl Default for LeaseSimConfig {
    fn default() -> LeaseSimConfig {
        LeaseSimConfig {
            nodes: 3,
            models: 3,
            clients: 5,
            ops_per_client: 15,
            lease: LeaseConfig {
                ttl: Duration::from_millis(400),
                renew_every: Duration::from_millis(100),
                margin: Duration::from_millis(100),
            },
            chaos_until: 5_000,
            end: 120_000,
        }
    }
}

/// What a scenario did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseStats {
    pub appends: usize,
    /// Appends the store refused because their epoch was no longer the model's.
    pub fenced: usize,
    /// Grants of a lease another node held before, without releasing it.
    pub takeovers: usize,
    /// Grants of a lease its holder had released (graceful handover).
    pub handovers: usize,
    /// Leases a node gave up because its own clock said so, or a renewal lost them.
    pub expired: usize,
    pub pauses: usize,
    pub crashes: usize,
    pub shutdowns: usize,
    pub delayed: usize,
    /// Submissions answered at once because the operation was already stored.
    pub duplicates: usize,
}

impl LeaseStats {
    pub fn add(&mut self, other: &LeaseStats) {
        self.appends += other.appends;
        self.fenced += other.fenced;
        self.takeovers += other.takeovers;
        self.handovers += other.handovers;
        self.expired += other.expired;
        self.pauses += other.pauses;
        self.crashes += other.crashes;
        self.shutdowns += other.shutdowns;
        self.delayed += other.delayed;
        self.duplicates += other.duplicates;
    }
}

type Model = usize;
type OpId = u64;
/// A node process: a crashed or restarted node comes back as a new incarnation.
type Incarnation = u64;

#[derive(Debug, Clone)]
enum DbRequest {
    Acquire { model: Model, sent_at: Time },
    Load { model: Model, epoch: u64 },
    Renew { leases: Vec<(Model, u64)> },
    Append { model: Model, epoch: u64, version: usize, prev: Option<OpId>, op: OpId },
    Release { model: Model, epoch: u64 },
}

#[derive(Debug, Clone)]
enum DbReply {
    Granted { model: Model, epoch: u64, sent_at: Time },
    Held { model: Model, owner: usize },
    Loaded { model: Model, epoch: u64, log: Vec<OpId> },
    Renewed { kept: Vec<(Model, u64)> },
    Appended { model: Model, epoch: u64, op: OpId },
    Fenced { model: Model, epoch: u64 },
}

#[derive(Debug, Clone, Copy)]
enum ClientReply {
    Acked(OpId),
    /// Not served here: try `hint` (or any node).
    NotOwner(Option<usize>),
    /// The node stopped serving the model; resend.
    Failed,
}

#[derive(Debug)]
enum Event {
    ToDb { node: usize, from: Incarnation, request: DbRequest },
    ToNode { node: usize, to: Incarnation, reply: DbReply },
    Submit { node: usize, client: usize, model: Model, op: OpId },
    ToClient { client: usize, reply: ClientReply },
    NodeTick { node: usize, to: Incarnation },
    ClientTick { client: usize },
    Chaos,
}

#[derive(Debug)]
struct StoredLease {
    holder: Incarnation,
    node: usize,
    epoch: u64,
    expires_at: Time,
    released: bool,
}

#[derive(Debug, Default)]
struct Db {
    leases: BTreeMap<Model, StoredLease>,
    logs: BTreeMap<Model, Vec<(OpId, u64)>>,
}

enum ModelState {
    Acquiring {
        waiting: Vec<(usize, OpId)>,
    },
    Loading {
        epoch: u64,
        waiting: Vec<(usize, OpId)>,
    },
    Serving {
        epoch: u64,
        log: Vec<OpId>,
        queue: VecDeque<(usize, OpId)>,
        in_flight: Option<(usize, OpId)>,
    },
}

struct Node {
    incarnation: Incarnation,
    leases: Leases<Model>,
    models: BTreeMap<Model, ModelState>,
    paused_until: Time,
}

struct Client {
    /// Each operation with its model; the first `next` are acknowledged.
    ops: Vec<(Model, OpId)>,
    next: usize,
    hint: Option<usize>,
    /// When the current operation is resent if nothing answered.
    resend_at: Time,
}

struct Sim {
    config: LeaseSimConfig,
    rng: SimRng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    db: Db,
    nodes: Vec<Node>,
    next_incarnation: Incarnation,
    clients: Vec<Client>,
    acked: BTreeMap<OpId, Model>,
    stats: LeaseStats,
}

/// Runs one scenario; `Err` says which invariant broke, and when.
pub fn run(seed: u64, config: LeaseSimConfig) -> Result<LeaseStats, String> {
    let mut sim = Sim::new(seed, config);
    sim.play()?;
    Ok(sim.stats)
}

const TICK: Duration = Duration::from_millis(25);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1_500);

impl Sim {
    fn new(seed: u64, config: LeaseSimConfig) -> Sim {
        let mut rng = SimRng::new(seed);
        let clients = (0..config.clients)
            .map(|c| {
                let ops = (0..config.ops_per_client)
                    .map(|i| (rng.below(config.models), (c * 10_000 + i) as OpId))
                    .collect();
                Client { ops, next: 0, hint: None, resend_at: Time::ZERO }
            })
            .collect();
        let mut sim = Sim {
            config,
            rng,
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            db: Db::default(),
            nodes: Vec::new(),
            next_incarnation: 0,
            clients,
            acked: BTreeMap::new(),
            stats: LeaseStats::default(),
        };
        for node in 0..config.nodes {
            let incarnation = sim.fresh_incarnation();
            sim.nodes.push(Node {
                incarnation,
                leases: Leases::new(config.lease),
                models: BTreeMap::new(),
                paused_until: Time::ZERO,
            });
            sim.schedule(TICK, Event::NodeTick { node, to: incarnation });
        }
        for client in 0..config.clients {
            let start = Duration::from_millis(sim.rng.below(50) as u64);
            sim.schedule(start, Event::ClientTick { client });
        }
        sim.schedule(Duration::from_millis(100), Event::Chaos);
        sim
    }

    fn fresh_incarnation(&mut self) -> Incarnation {
        self.next_incarnation += 1;
        self.next_incarnation
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.schedule_at(self.now + after, event);
    }

    fn schedule_at(&mut self, at: Time, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.seq += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, self.seq, id)));
    }

    /// A network delay: usually short, sometimes far past the lease time while chaos lasts.
    fn delay(&mut self) -> Duration {
        if self.now.as_millis() < self.config.chaos_until && self.rng.chance(3) {
            self.stats.delayed += 1;
            let ttl = self.config.lease.ttl.as_millis() as usize;
            Duration::from_millis((ttl / 2 + self.rng.below(ttl * 3)) as u64)
        } else {
            Duration::from_millis(1 + self.rng.below(15) as u64)
        }
    }

    fn done(&self) -> bool {
        self.clients.iter().all(|c| c.next == c.ops.len())
    }

    fn play(&mut self) -> Result<(), String> {
        while let Some(Reverse((at, _, id))) = self.queue.pop() {
            if self.done() {
                break;
            }
            self.now = at;
            if at.as_millis() > self.config.end {
                return Err(format!(
                    "not every operation was acknowledged by {} ms: {:?}",
                    self.config.end,
                    self.clients.iter().map(|c| (c.next, c.ops.len())).collect::<Vec<_>>()
                ));
            }
            let event = self.events.remove(&id).expect("every queued event is stored");
            // A paused node handles nothing until it resumes, in order.
            if let Some(node) = event_node(&event)
                && self.nodes[node].paused_until > self.now
            {
                let resume = self.nodes[node].paused_until;
                self.schedule_at(resume, event);
                continue;
            }
            self.handle(event)?;
            self.check_beliefs()?;
        }
        if !self.done() {
            return Err("the simulation ran out of events".into());
        }
        self.check_end()
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::ToDb { node, from, request } => self.db_handle(node, from, request),
            Event::ToNode { node, to, reply } => {
                if self.nodes[node].incarnation == to {
                    self.node_reply(node, reply);
                }
                Ok(())
            }
            Event::Submit { node, client, model, op } => {
                self.node_submit(node, client, model, op);
                Ok(())
            }
            Event::ToClient { client, reply } => {
                self.client_reply(client, reply);
                Ok(())
            }
            Event::NodeTick { node, to } => {
                if self.nodes[node].incarnation == to {
                    self.node_tick(node);
                    self.schedule(TICK, Event::NodeTick { node, to });
                }
                Ok(())
            }
            Event::ClientTick { client } => {
                self.client_tick(client);
                Ok(())
            }
            Event::Chaos => {
                self.chaos();
                Ok(())
            }
        }
    }

    // The store.

    fn db_handle(
        &mut self,
        node: usize,
        from: Incarnation,
        request: DbRequest,
    ) -> Result<(), String> {
        let ttl = self.config.lease.ttl;
        let reply = match request {
            DbRequest::Acquire { model, sent_at } => {
                let now = self.now;
                let last_epoch = self.db.leases.get(&model).map_or(0, |l| l.epoch);
                match self.db.leases.get(&model) {
                    Some(lease)
                        if lease.holder != from && !lease.released && lease.expires_at > now =>
                    {
                        Some(DbReply::Held { model, owner: lease.node })
                    }
                    previous => {
                        match previous {
                            Some(lease) if lease.holder != from && lease.released => {
                                self.stats.handovers += 1
                            }
                            Some(lease) if lease.holder != from => self.stats.takeovers += 1,
                            _ => {}
                        }
                        let epoch = last_epoch + 1;
                        let lease = StoredLease {
                            holder: from,
                            node,
                            epoch,
                            expires_at: now + ttl,
                            released: false,
                        };
                        self.db.leases.insert(model, lease);
                        Some(DbReply::Granted { model, epoch, sent_at })
                    }
                }
            }
            DbRequest::Load { model, epoch } => {
                let log = self
                    .db
                    .logs
                    .get(&model)
                    .map_or_else(Vec::new, |log| log.iter().map(|(op, _)| *op).collect());
                Some(DbReply::Loaded { model, epoch, log })
            }
            DbRequest::Renew { leases } => {
                let now = self.now;
                let mut kept = Vec::new();
                for (model, epoch) in leases {
                    if let Some(lease) = self.db.leases.get_mut(&model)
                        && lease.holder == from
                        && lease.epoch == epoch
                        && !lease.released
                    {
                        lease.expires_at = now + ttl;
                        kept.push((model, epoch));
                    }
                }
                Some(DbReply::Renewed { kept })
            }
            DbRequest::Release { model, epoch } => {
                if let Some(lease) = self.db.leases.get_mut(&model)
                    && lease.holder == from
                    && lease.epoch == epoch
                {
                    lease.released = true;
                }
                None
            }
            DbRequest::Append { model, epoch, version, prev, op } => {
                let current = self.db.leases.get(&model).is_some_and(|lease| {
                    lease.holder == from
                        && lease.epoch == epoch
                        && !lease.released
                        && lease.expires_at > self.now
                });
                if current {
                    let log = self.db.logs.entry(model).or_default();
                    if version != log.len() + 1 || prev != log.last().map(|(op, _)| *op) {
                        return Err(format!(
                            "at {} ms node {node} (epoch {epoch}) appended op {op} at version \
                             {version} after {prev:?}, but model {model}'s log has {} \
                             operations ending {:?}: two writers",
                            self.now.as_millis(),
                            log.len(),
                            log.last()
                        ));
                    }
                    if log.iter().any(|(stored, _)| *stored == op) {
                        return Err(format!("op {op} was appended to model {model} twice"));
                    }
                    log.push((op, epoch));
                    self.stats.appends += 1;
                    Some(DbReply::Appended { model, epoch, op })
                } else {
                    self.stats.fenced += 1;
                    Some(DbReply::Fenced { model, epoch })
                }
            }
        };
        if let Some(reply) = reply {
            let delay = self.delay();
            self.schedule(delay, Event::ToNode { node, to: from, reply });
        }
        Ok(())
    }

    // The nodes.

    fn send_to_db(&mut self, node: usize, request: DbRequest) {
        let from = self.nodes[node].incarnation;
        let delay = self.delay();
        self.schedule(delay, Event::ToDb { node, from, request });
    }

    fn send_to_client(&mut self, client: usize, reply: ClientReply) {
        let delay = self.delay();
        self.schedule(delay, Event::ToClient { client, reply });
    }

    fn node_submit(&mut self, node: usize, client: usize, model: Model, op: OpId) {
        let now = self.now;
        let n = &mut self.nodes[node];
        match n.models.get_mut(&model) {
            Some(ModelState::Acquiring { waiting } | ModelState::Loading { waiting, .. }) => {
                waiting.push((client, op));
            }
            Some(ModelState::Serving { queue, .. }) => {
                queue.push_back((client, op));
                self.pump(node, model);
            }
            None => {
                n.models.insert(model, ModelState::Acquiring { waiting: vec![(client, op)] });
                self.send_to_db(node, DbRequest::Acquire { model, sent_at: now });
            }
        }
    }

    /// Sends the next queued operation of `model`, if none is on its way.
    fn pump(&mut self, node: usize, model: Model) {
        let now = self.now;
        loop {
            let n = &mut self.nodes[node];
            let valid = n.leases.epoch(&model, now);
            let Some(ModelState::Serving { epoch, log, queue, in_flight }) =
                n.models.get_mut(&model)
            else {
                return;
            };
            if in_flight.is_some() || queue.is_empty() {
                return;
            }
            if valid != Some(*epoch) {
                self.step_down(node, model);
                return;
            }
            let (client, op) = queue.pop_front().expect("not empty");
            if log.contains(&op) {
                self.stats.duplicates += 1;
                self.send_to_client(client, ClientReply::Acked(op));
                continue;
            }
            *in_flight = Some((client, op));
            let request = DbRequest::Append {
                model,
                epoch: *epoch,
                version: log.len() + 1,
                prev: log.last().copied(),
                op,
            };
            self.send_to_db(node, request);
            return;
        }
    }

    /// Stops serving `model`: its waiting clients are told to resend.
    fn step_down(&mut self, node: usize, model: Model) {
        let n = &mut self.nodes[node];
        n.leases.drop_lease(&model, None);
        let waiting: Vec<usize> = match n.models.remove(&model) {
            None => Vec::new(),
            Some(ModelState::Acquiring { waiting } | ModelState::Loading { waiting, .. }) => {
                waiting.into_iter().map(|(c, _)| c).collect()
            }
            Some(ModelState::Serving { queue, in_flight, .. }) => {
                queue.into_iter().chain(in_flight).map(|(c, _)| c).collect()
            }
        };
        for client in waiting {
            self.send_to_client(client, ClientReply::Failed);
        }
    }

    fn node_reply(&mut self, node: usize, reply: DbReply) {
        let now = self.now;
        match reply {
            DbReply::Granted { model, epoch, sent_at } => {
                let n = &mut self.nodes[node];
                n.leases.granted(model, epoch, sent_at);
                match n.models.remove(&model) {
                    Some(ModelState::Acquiring { waiting }) => {
                        n.models.insert(model, ModelState::Loading { epoch, waiting });
                        self.send_to_db(node, DbRequest::Load { model, epoch });
                    }
                    other => {
                        // Not wanted any more: hand it back.
                        if let Some(state) = other {
                            n.models.insert(model, state);
                        } else {
                            n.leases.drop_lease(&model, Some(epoch));
                            self.send_to_db(node, DbRequest::Release { model, epoch });
                        }
                    }
                }
            }
            DbReply::Held { model, owner } => {
                if let Some(ModelState::Acquiring { waiting }) =
                    self.nodes[node].models.remove(&model)
                {
                    for (client, _) in waiting {
                        self.send_to_client(client, ClientReply::NotOwner(Some(owner)));
                    }
                }
            }
            DbReply::Loaded { model, epoch, log } => {
                let n = &mut self.nodes[node];
                let loading = matches!(n.models.get(&model),
                    Some(ModelState::Loading { epoch: e, .. }) if *e == epoch);
                if !loading {
                    return;
                }
                if n.leases.epoch(&model, now) != Some(epoch) {
                    self.step_down(node, model);
                    return;
                }
                let Some(ModelState::Loading { waiting, .. }) = n.models.remove(&model) else {
                    return;
                };
                let queue = waiting.into();
                n.models.insert(model, ModelState::Serving { epoch, log, queue, in_flight: None });
                self.pump(node, model);
            }
            DbReply::Renewed { kept } => {
                let lost = self.nodes[node].leases.renewed(&kept);
                for (model, _) in lost {
                    self.stats.expired += 1;
                    self.step_down(node, model);
                }
            }
            DbReply::Appended { model, epoch, op } => {
                let Some(ModelState::Serving { epoch: serving, log, in_flight, .. }) =
                    self.nodes[node].models.get_mut(&model)
                else {
                    return;
                };
                if *serving != epoch || in_flight.map(|(_, o)| o) != Some(op) {
                    return;
                }
                log.push(op);
                let (client, _) = in_flight.take().expect("checked");
                self.send_to_client(client, ClientReply::Acked(op));
                self.pump(node, model);
            }
            DbReply::Fenced { model, epoch } => {
                if matches!(self.nodes[node].models.get(&model),
                    Some(ModelState::Serving { epoch: serving, .. }) if *serving == epoch)
                {
                    self.step_down(node, model);
                }
            }
        }
    }

    fn node_tick(&mut self, node: usize) {
        let now = self.now;
        let expired = self.nodes[node].leases.expire(now);
        for (model, _) in expired {
            self.stats.expired += 1;
            self.step_down(node, model);
        }
        if let Some(leases) = self.nodes[node].leases.poll_renewal(now) {
            self.send_to_db(node, DbRequest::Renew { leases });
        }
    }

    /// Every node that believes it may write a model holds its lease in the store.
    fn check_beliefs(&self) -> Result<(), String> {
        for (index, node) in self.nodes.iter().enumerate() {
            if node.paused_until > self.now {
                continue; // A paused node acts on nothing it believes.
            }
            for (model, state) in &node.models {
                let ModelState::Serving { epoch, .. } = state else { continue };
                if node.leases.epoch(model, self.now) != Some(*epoch) {
                    continue;
                }
                let stored = self.db.leases.get(model);
                let agrees = stored.is_some_and(|lease| {
                    lease.holder == node.incarnation
                        && lease.epoch == *epoch
                        && lease.expires_at > self.now
                });
                if !agrees {
                    return Err(format!(
                        "at {} ms node {index} believes it holds model {model} at epoch {epoch}, \
                         the store has {stored:?}",
                        self.now.as_millis()
                    ));
                }
            }
        }
        Ok(())
    }

    // The clients.

    fn client_tick(&mut self, client: usize) {
        let now = self.now;
        let nodes = self.config.nodes;
        let c = &mut self.clients[client];
        if c.next == c.ops.len() {
            return;
        }
        if now >= c.resend_at {
            let (model, op) = c.ops[c.next];
            let node = c.hint.take().unwrap_or_else(|| self.rng.below(nodes));
            c.resend_at = now + CLIENT_TIMEOUT;
            let delay = self.delay();
            self.schedule(delay, Event::Submit { node, client, model, op });
        }
        self.schedule(Duration::from_millis(20), Event::ClientTick { client });
    }

    fn client_reply(&mut self, client: usize, reply: ClientReply) {
        let now = self.now;
        let c = &mut self.clients[client];
        match reply {
            ClientReply::Acked(op) => {
                if let Some(index) = c.ops.iter().position(|(_, o)| *o == op) {
                    self.acked.insert(op, c.ops[index].0);
                    if index == c.next {
                        c.next += 1;
                        c.resend_at = now;
                    }
                }
            }
            ClientReply::NotOwner(hint) => {
                c.hint = hint;
                c.resend_at = now + Duration::from_millis(50);
            }
            ClientReply::Failed => {
                c.resend_at = now + Duration::from_millis(10);
            }
        }
    }

    // Faults.

    fn chaos(&mut self) {
        if self.now.as_millis() >= self.config.chaos_until {
            return;
        }
        let ttl = self.config.lease.ttl.as_millis() as usize;
        let node = self.rng.below(self.config.nodes);
        match self.rng.below(10) {
            0 | 1 => {
                // Paused past its leases (or not quite).
                self.stats.pauses += 1;
                let pause = Duration::from_millis((ttl / 2 + self.rng.below(ttl * 3)) as u64);
                self.nodes[node].paused_until = self.now + pause;
            }
            2 => {
                self.stats.crashes += 1;
                self.restart(node);
            }
            3 => {
                self.stats.shutdowns += 1;
                for (model, epoch) in self.nodes[node].leases.held() {
                    self.send_to_db(node, DbRequest::Release { model, epoch });
                }
                let models: Vec<Model> = self.nodes[node].models.keys().copied().collect();
                for model in models {
                    self.step_down(node, model);
                }
                self.restart(node);
            }
            _ => {}
        }
        let next = Duration::from_millis(50 + self.rng.below(250) as u64);
        self.schedule(next, Event::Chaos);
    }

    /// The node comes back as a new process: nothing of its memory, no lease.
    fn restart(&mut self, node: usize) {
        let incarnation = self.fresh_incarnation();
        self.nodes[node] = Node {
            incarnation,
            leases: Leases::new(self.config.lease),
            models: BTreeMap::new(),
            paused_until: self.nodes[node].paused_until,
        };
        self.schedule(TICK, Event::NodeTick { node, to: incarnation });
    }

    fn check_end(&self) -> Result<(), String> {
        let mut stored: BTreeMap<OpId, usize> = BTreeMap::new();
        for (model, log) in &self.db.logs {
            for (op, _) in log {
                if stored.insert(*op, *model).is_some() {
                    return Err(format!("op {op} is stored twice"));
                }
            }
            let epochs: Vec<u64> = log.iter().map(|(_, e)| *e).collect();
            if epochs.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!("model {model}'s log went back to an older epoch: {epochs:?}"));
            }
        }
        for (op, model) in &self.acked {
            if stored.get(op) != Some(model) {
                return Err(format!("acknowledged op {op} of model {model} is not stored"));
            }
        }
        Ok(())
    }
}

/// The node an event is handled by, if any.
fn event_node(event: &Event) -> Option<usize> {
    match event {
        Event::ToNode { node, .. } | Event::Submit { node, .. } | Event::NodeTick { node, .. } => {
            Some(*node)
        }
        _ => None,
    }
}
