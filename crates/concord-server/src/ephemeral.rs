//! Presence and activities in the shell: one [`PresenceHost`] and one [`ActivityHost`] per
//! domain, shared by that domain's connections behind a lock (their work is a few map
//! operations and no I/O), and the outboxes their messages go to. A domain's entry lives
//! while it has a session. Each domain's [`IdentityHost`] (users' names and emails, bounded)
//! outlives its sessions: loaded from the store at the domain's first handshake, and what
//! it learns is stored by the connection (`Write::PutIdentity`). Presence and activities
//! are never stored.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use concord_protocol::{
    ActivityRequest, ErrorReply, Identity, IdentityRequest, PresenceRequest, RequestId, UserId,
};
use concord_sync::host::{
    ActivityConfig, ActivityHost, Broadcast, ConnId, IdentityHost, IdentityLimits, PresenceHost,
    PresenceLimits, SessionRef,
};

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::Store;

/// Domains whose identities are kept at once: past it, a domain with no session left loses
/// its identities when another domain needs room (they are learned again at the next
/// handshakes), so that connecting to ever new domain names cannot grow the server.
const MAX_IDENTITY_DOMAINS: usize = 1_024;

#[derive(Debug)]
pub(crate) struct Ephemeral {
    presence: PresenceLimits,
    activities: ActivityConfig,
    domains: Mutex<HashMap<Arc<str>, DomainState>>,
    identity_limits: IdentityLimits,
    admins: BTreeSet<UserId>,
    identities: Mutex<HashMap<Arc<str>, IdentityHost>>,
    /// Where the hosts' refusals are counted.
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct DomainState {
    presence: PresenceHost,
    activities: ActivityHost,
    outboxes: HashMap<ConnId, Outbox>,
}

impl Ephemeral {
    pub(crate) fn new(
        presence: PresenceLimits,
        activities: ActivityConfig,
        identity_limits: IdentityLimits,
        admins: BTreeSet<UserId>,
        metrics: Arc<Metrics>,
    ) -> Ephemeral {
        Ephemeral {
            presence,
            activities,
            domains: Mutex::default(),
            identity_limits,
            admins,
            identities: Mutex::default(),
            metrics,
        }
    }

    /// Loads `domain`'s stored identities (the newest, within the limits) unless they are
    /// in memory already. A store that fails is logged: the domain then starts with the
    /// identities learned from now on.
    pub(crate) async fn load_identities(&self, domain: &Arc<str>, store: &Store) {
        let loaded = {
            let identities = self.identities.lock().unwrap_or_else(PoisonError::into_inner);
            identities.contains_key(domain)
        };
        if loaded {
            return;
        }
        match store.identities(domain, self.identity_limits.max_users).await {
            // Another handshake may have loaded it meanwhile: then that one stays.
            Ok(stored) => self.with_identities_restored(domain, stored, |_| ()),
            Err(e) => tracing::error!(%domain, error = %e, "reading the stored identities failed"),
        }
    }

    /// A user authenticated on `domain` with these claims. Returns the identity now known,
    /// for the store.
    pub(crate) fn learn_identity(
        &self,
        domain: &Arc<str>,
        session: &SessionRef,
        email: Option<String>,
    ) -> Option<Identity> {
        self.with_identities(domain, |host| {
            let user = &session.user;
            host.learn(user.id.clone(), user.display_name.clone(), email)
        })
    }

    /// Answers `asker`'s identity request on `domain`.
    pub(crate) fn identities(
        &self,
        domain: &Arc<str>,
        asker: &UserId,
        request: IdentityRequest,
    ) -> Result<Vec<Identity>, ErrorReply> {
        self.with_identities(domain, |host| host.answer(asker, request))
    }

    fn with_identities<T>(&self, domain: &Arc<str>, f: impl FnOnce(&mut IdentityHost) -> T) -> T {
        self.with_identities_restored(domain, Vec::new(), f)
    }

    /// `f` on `domain`'s identities, made from `stored` if the domain has none in memory.
    fn with_identities_restored<T>(
        &self,
        domain: &Arc<str>,
        stored: Vec<Identity>,
        f: impl FnOnce(&mut IdentityHost) -> T,
    ) -> T {
        // Lock order: identities, then domains (nothing takes them the other way round).
        let mut identities = self.identities.lock().unwrap_or_else(PoisonError::into_inner);
        if !identities.contains_key(domain) && identities.len() >= MAX_IDENTITY_DOMAINS {
            let live = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
            let idle = identities.keys().find(|d| !live.contains_key(*d)).cloned();
            drop(live);
            if let Some(idle) = idle {
                identities.remove(&idle);
            }
        }
        let host = identities.entry(domain.clone()).or_insert_with(|| {
            let mut host = IdentityHost::new(self.identity_limits, self.admins.clone());
            host.restore(stored);
            host
        });
        f(host)
    }

    /// A session started on `domain`; its messages go to `outbox`.
    pub(crate) fn connected(&self, domain: &Arc<str>, session: &SessionRef, outbox: Outbox) {
        self.with(domain, |state| {
            state.outboxes.insert(session.conn, outbox);
            state.presence.connected(session);
        });
    }

    pub(crate) fn presence(
        &self,
        domain: &Arc<str>,
        from: &SessionRef,
        request: RequestId,
        presence: PresenceRequest,
    ) {
        self.with(domain, |state| state.presence.handle(from, request, presence));
    }

    pub(crate) fn activity(
        &self,
        domain: &Arc<str>,
        from: &SessionRef,
        request: RequestId,
        activity: ActivityRequest,
    ) {
        self.with(domain, |state| state.activities.handle(from, request, activity));
    }

    /// The session on `conn` ended; the domain's entry goes with its last session.
    pub(crate) fn disconnected(&self, domain: &Arc<str>, conn: ConnId) {
        let mut domains = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = domains.get_mut(domain) else { return };
        state.outboxes.remove(&conn);
        state.presence.disconnected(conn);
        state.activities.disconnected(conn);
        state.deliver(&self.metrics);
        if state.outboxes.is_empty() {
            domains.remove(domain);
        }
    }

    fn with(&self, domain: &Arc<str>, f: impl FnOnce(&mut DomainState)) {
        let mut domains = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        let state = domains.entry(domain.clone()).or_insert_with(|| DomainState {
            presence: PresenceHost::new(self.presence),
            activities: ActivityHost::new(self.activities.clone()),
            outboxes: HashMap::new(),
        });
        f(state);
        state.deliver(&self.metrics);
    }
}

impl DomainState {
    /// Queues what the hosts said on the connections' outboxes (bounded as every message),
    /// counting each refusal once.
    fn deliver(&mut self, metrics: &Metrics) {
        let mut outputs = Vec::new();
        while let Some(output) = self.presence.poll_output() {
            outputs.push(output);
        }
        while let Some(output) = self.activities.poll_output() {
            outputs.push(output);
        }
        for Broadcast { to, message } in outputs {
            metrics.sent(&message);
            for conn in to {
                if let Some(outbox) = self.outboxes.get(&conn) {
                    outbox.message(&message);
                }
            }
        }
    }
}
