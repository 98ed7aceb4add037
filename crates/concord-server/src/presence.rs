//! Presence in the shell: one [`PresenceHost`] per domain, shared by that domain's
//! connections behind a lock (its work is a few map operations and no I/O), and the
//! outboxes its messages go to. A domain's entry lives while it has a session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use concord_protocol::{PresenceRequest, RequestId};
use concord_sync::host::{ConnId, PresenceHost, PresenceLimits, SessionRef};

use crate::outbox::Outbox;

#[derive(Debug)]
pub(crate) struct Presence {
    limits: PresenceLimits,
    domains: Mutex<HashMap<Arc<str>, DomainPresence>>,
}

#[derive(Debug)]
struct DomainPresence {
    host: PresenceHost,
    outboxes: HashMap<ConnId, Outbox>,
}

impl Presence {
    pub(crate) fn new(limits: PresenceLimits) -> Presence {
        Presence { limits, domains: Mutex::default() }
    }

    /// A session started on `domain`; its messages go to `outbox`.
    pub(crate) fn connected(&self, domain: &Arc<str>, session: &SessionRef, outbox: Outbox) {
        self.with(domain, |presence| {
            presence.outboxes.insert(session.conn, outbox);
            presence.host.connected(session);
        });
    }

    pub(crate) fn handle(
        &self,
        domain: &Arc<str>,
        from: &SessionRef,
        request: RequestId,
        presence: PresenceRequest,
    ) {
        self.with(domain, |domain| domain.host.handle(from, request, presence));
    }

    /// The session on `conn` ended; the domain's entry goes with its last session.
    pub(crate) fn disconnected(&self, domain: &Arc<str>, conn: ConnId) {
        let mut domains = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(presence) = domains.get_mut(domain) else { return };
        presence.outboxes.remove(&conn);
        presence.host.disconnected(conn);
        presence.deliver();
        if presence.outboxes.is_empty() {
            domains.remove(domain);
        }
    }

    fn with(&self, domain: &Arc<str>, f: impl FnOnce(&mut DomainPresence)) {
        let mut domains = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        let presence = domains.entry(domain.clone()).or_insert_with(|| DomainPresence {
            host: PresenceHost::new(self.limits),
            outboxes: HashMap::new(),
        });
        f(presence);
        presence.deliver();
    }
}

impl DomainPresence {
    /// Queues what the host said on the connections' outboxes (bounded as every message).
    fn deliver(&mut self) {
        while let Some(output) = self.host.poll_output() {
            for conn in output.to {
                if let Some(outbox) = self.outboxes.get(&conn) {
                    outbox.message(&output.message);
                }
            }
        }
    }
}
