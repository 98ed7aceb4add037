//! What a server is told at start: where to listen and store, how to authenticate, and the
//! limits it enforces on each connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use concord_protocol::{CollectionId, ServerLimits, UserId};
pub use concord_sync::host::CollectionConfig;
pub use concord_sync::host::{
    ActivityConfig, ActivityPermissions, ActivityPolicy, IdentityLimits, PresenceLimits,
    QueryLimits,
};
use concord_sync::host::{DEFAULT_MAX_MODEL_BYTES, HostConfig, SessionLimits};

pub use concord_sync::lease::{LeaseConfig, LeaseConfigError};

use crate::outbox::max_message_bytes;

/// A server node among several on one PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The node's name, for operators and other nodes' messages (`None`: its URL).
    pub name: Option<String>,
    /// Where clients reach this node (`ws://host:port`): told to clients of other nodes
    /// asking for a model this node serves (`None`: `ws://` and the address it listens on).
    pub url: Option<String>,
    /// How long leases last and how often they are renewed: a dead node's models are
    /// taken over after at most the lease time.
    pub lease: LeaseConfig,
}

/// Everything `Server::bind` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one (`Server::local_addr` tells which).
    pub bind: SocketAddr,
    /// Directory of the embedded store (created if missing).
    pub data_dir: PathBuf,
    /// Where the server stores instead of `data_dir`'s embedded store: a PostgreSQL URL
    /// (`postgres://user@host:port/database`, needs the `postgres` feature). `None`: the
    /// embedded store.
    pub store: Option<StoreUrl>,
    /// How long a commit to PostgreSQL is retried while PostgreSQL cannot be reached
    /// (restarting, connections lost) before its writes are given up: the sessions waiting
    /// on them are then closed, saying why, and their clients resend (default 30 s).
    pub store_retry: Duration,
    /// Run as one node of several on the PostgreSQL `store` (`docs/cluster.md`): a model is
    /// sequenced only by the node holding its lease. `None`: the only server on its store.
    pub cluster: Option<ClusterConfig>,
    pub auth: AuthConfig,
    pub limits: ConnectionLimits,
    /// Collections known before any client creates a model in them; others are created on
    /// demand with [`CollectionConfig::default`] when `auto_create_collections` is set.
    pub collections: BTreeMap<CollectionId, CollectionConfig>,
    pub auto_create_collections: bool,
    /// The paths indexed in each collection (`docs/queries.md`): queries whose condition or
    /// ORDER BY is on one read a range of its index instead of the collection. Built on open
    /// for the models already stored; dropped from the store when no longer declared.
    pub indexes: BTreeMap<CollectionId, Vec<concord_query::Path>>,
    /// What one query may examine and return.
    pub query: QueryLimits,
    /// A model nobody has open or subscribed is unloaded from memory after this long.
    pub idle_unload: Duration,
    /// Committed operations each loaded model keeps in memory for transforms and resyncs;
    /// older ones are read from the store.
    pub history_in_memory: usize,
    /// A snapshot is written every this many operations, so loading replays at most this many.
    pub snapshot_every: u64,
    /// The most a model's encoded data may take: a submission that would grow a model past
    /// it, or a creation with more, is refused with `model_too_large` (default 16 MiB). Keep
    /// it well under [`ConnectionLimits::max_queued_bytes`], which also bounds the largest
    /// message the server sends (a model's snapshot), so that every model can be opened.
    pub max_model_bytes: u64,
    /// A directory of static files (the browser demo) served at `/` and `/<file>`. Hidden
    /// files (a name starting with `.`) and symlinks leading out of it are not served.
    pub web_root: Option<PathBuf>,
    /// Connections served at once, WebSockets and plain HTTP together; one more is closed
    /// as soon as it is accepted.
    pub max_connections: usize,
    /// Connections served at once from one source address (an IPv4 address, or an IPv6
    /// /64 network, which one host usually has whole).
    pub max_connections_per_address: usize,
    /// What one user's presence state and one session's followed users may take.
    pub presence: PresenceLimits,
    /// Who may join, set state in and manage activities, by activity type (by default
    /// every session may join and set its own state, and nobody may manage), and what one
    /// session may hold in them.
    pub activities: ActivityConfig,
    /// A session that sends nothing (clients ping every few seconds) for this long is ended
    /// as gone: its user's presence goes offline if it was their last session.
    pub silence_timeout: Duration,
    /// What each domain remembers of users' names and emails (in memory), and what one
    /// lookup may ask.
    pub identities: IdentityLimits,
    /// Users who see every user's email in identity lookups (everyone else sees only their
    /// own).
    pub admins: BTreeSet<UserId>,
}

impl ServerConfig {
    /// Listens on `bind`, stores under `data_dir`, authenticates with `auth`; defaults for
    /// the rest.
    pub fn new(bind: SocketAddr, data_dir: impl Into<PathBuf>, auth: AuthConfig) -> ServerConfig {
        ServerConfig {
            bind,
            data_dir: data_dir.into(),
            store: None,
            store_retry: Duration::from_secs(30),
            cluster: None,
            auth,
            limits: ConnectionLimits::default(),
            collections: BTreeMap::new(),
            auto_create_collections: true,
            indexes: BTreeMap::new(),
            query: QueryLimits::default(),
            idle_unload: Duration::from_secs(30),
            history_in_memory: 1_000,
            snapshot_every: 1_000,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            web_root: None,
            max_connections: 10_000,
            max_connections_per_address: 256,
            presence: PresenceLimits::default(),
            activities: ActivityConfig::default(),
            silence_timeout: Duration::from_secs(60),
            identities: IdentityLimits::default(),
            admins: BTreeSet::new(),
        }
    }

    /// A server for development, tests and demos: a free port on 127.0.0.1, the store
    /// under `data_dir`, and [`AuthConfig::development`] with `jwt_secret`; defaults for
    /// the rest. Not for production: the secret is whatever the caller passed.
    pub fn development(data_dir: impl Into<PathBuf>, jwt_secret: &[u8]) -> ServerConfig {
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerConfig::new(bind, data_dir, AuthConfig::development(jwt_secret))
    }
}

impl ServerConfig {
    /// What the model hosts need of this configuration.
    pub(crate) fn host_config(&self) -> HostConfig {
        HostConfig {
            collections: self.collections.clone(),
            auto_create_collections: self.auto_create_collections,
            history_in_memory: self.history_in_memory,
            snapshot_every: self.snapshot_every,
            max_model_bytes: self.max_model_bytes,
            indexes: self.indexes.clone(),
            ..HostConfig::default()
        }
    }

    /// The limits the handshake tells each client.
    pub(crate) fn told_limits(&self) -> ServerLimits {
        let sent = max_message_bytes(self.limits.max_queued_bytes);
        self.session_limits().told(self.limits.max_frame_bytes, sent, self.max_model_bytes)
    }

    pub(crate) fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_open_models: self.limits.max_open_models,
            max_subscriptions: self.limits.max_subscriptions,
            max_references: self.limits.max_shared_references,
            max_reference_bytes: self.limits.max_reference_bytes,
            max_reference_reads: self.limits.max_reference_reads,
            reference_reads_per_second: self.limits.reference_reads_per_second,
        }
    }
}

/// How connections prove who they are.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Verifies client JWTs; `None` accepts no JWT.
    pub jwt: Option<JwtConfig>,
    /// Whether `Auth::Anonymous` is accepted.
    pub allow_anonymous: bool,
    /// Signs reconnect tokens (kept by the server, for example in its data dir).
    pub reconnect_secret: Vec<u8>,
    /// How long a reconnect token stays valid; each use issues a fresh one.
    pub reconnect_ttl: Duration,
}

impl AuthConfig {
    /// Development authentication: client JWTs are HS256 tokens signed with `jwt_secret`
    /// (mint them with [`mint_token`](crate::mint_token)), with no audience and no clock
    /// leeway; anonymous handshakes are refused (set `allow_anonymous` to accept them);
    /// reconnect tokens are signed with a secret derived from `jwt_secret`, so they stay
    /// valid across restarts of a server configured the same way, and last an hour.
    pub fn development(jwt_secret: &[u8]) -> AuthConfig {
        AuthConfig {
            jwt: Some(JwtConfig {
                key: JwtKey::Hs256(jwt_secret.to_vec()),
                audience: None,
                leeway: Duration::ZERO,
            }),
            allow_anonymous: false,
            reconnect_secret: [b"concord development reconnect:".as_slice(), jwt_secret].concat(),
            reconnect_ttl: Duration::from_secs(3600),
        }
    }
}

/// How client JWTs are verified: `sub` is the user, `exp` is required.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: JwtKey,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

#[derive(Clone)]
pub enum JwtKey {
    /// A shared HS256 secret.
    Hs256(Vec<u8>),
    /// An RS256 public key, PEM-encoded.
    Rs256PublicPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(_) => f.write_str("Hs256(..)"),
            JwtKey::Rs256PublicPem(_) => f.write_str("Rs256PublicPem(..)"),
        }
    }
}

/// What one connection may do; exceeding a limit gets a typed error or, where the
/// connection itself is the problem, closes it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest frame accepted (bytes).
    pub max_frame_bytes: usize,
    /// Sustained requests and submissions per second, with a burst of `burst`.
    pub messages_per_second: u32,
    pub burst: u32,
    /// Models open at once on one connection.
    pub max_open_models: usize,
    /// Models in one connection's offline subscription set.
    pub max_subscriptions: usize,
    /// References (cursors, selections) one connection shares at once, across models.
    pub max_shared_references: usize,
    /// Bytes one shared reference's key and value may take.
    pub max_reference_bytes: usize,
    /// Stored operations one connection may make the server read at once to move
    /// references set at old versions forward, refilled by `reference_reads_per_second`;
    /// past it, such a reference is refused (`overloaded`).
    pub max_reference_reads: u64,
    pub reference_reads_per_second: u64,
    /// Messages queued for a client that does not read; past it, the connection is closed.
    pub max_queued_messages: usize,
    /// Bytes the server may hold for one connection: encoded messages waiting for their
    /// writes to be durable and in its outbox, until written to the socket (each counted
    /// with a small fixed overhead). A message that would go past it closes the connection
    /// instead, as a client that does not read. It also bounds the largest message the
    /// server sends (a reply larger than it is answered with an error instead): keep it
    /// well above [`ServerConfig::max_model_bytes`], so that a model's snapshot fits.
    pub max_queued_bytes: usize,
    /// Time a client has to send a whole HTTP request head (the WebSocket upgrade), also
    /// the longest an idle HTTP keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time allowed for the handshake after the socket opens.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_frame_bytes: 16 * 1024 * 1024,
            messages_per_second: 2_000,
            burst: 4_000,
            max_open_models: 1_000,
            max_subscriptions: 10_000,
            max_shared_references: 256,
            max_reference_bytes: 4_096,
            max_reference_reads: 20_000,
            reference_reads_per_second: 1_000,
            max_queued_messages: 4_096,
            max_queued_bytes: 64 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A setting the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "max_model_bytes ({max_model_bytes}) must be at most half of max_queued_bytes \
         ({max_queued_bytes}), so that a model's snapshot fits in what the server holds for a \
         connection"
    )]
    ModelLargerThanQueue { max_model_bytes: u64, max_queued_bytes: usize },
    #[error("store must be a postgres:// or postgresql:// URL (or unset for the embedded store)")]
    StoreUrl,
    #[error(
        "store is a PostgreSQL URL, but this build has no PostgreSQL support (feature `postgres`)"
    )]
    NoPostgres,
    #[error("a cluster node needs a PostgreSQL store (--store postgres://...)")]
    ClusterWithoutPostgres,
    #[error("the cluster's leases: {0}")]
    Lease(#[from] LeaseConfigError),
}

impl ServerConfig {
    /// Refuses settings the server cannot run with: a zero limit, rate or timeout (which
    /// would refuse every client, or divide by zero) and a model bound that a snapshot
    /// could not be sent within.
    pub fn check(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        for (name, value) in [
            ("snapshot_every", self.snapshot_every),
            ("max_model_bytes", self.max_model_bytes),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_address", self.max_connections_per_address as u64),
            ("max_frame_bytes", limits.max_frame_bytes as u64),
            ("messages_per_second", u64::from(limits.messages_per_second)),
            ("burst", u64::from(limits.burst)),
            ("max_open_models", limits.max_open_models as u64),
            ("max_queued_messages", limits.max_queued_messages as u64),
            ("max_queued_bytes", limits.max_queued_bytes as u64),
            ("max_reference_bytes", limits.max_reference_bytes as u64),
            ("header_read_timeout", limits.header_read_timeout.as_nanos() as u64),
            ("handshake_timeout", limits.handshake_timeout.as_nanos() as u64),
            ("silence_timeout", self.silence_timeout.as_nanos() as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if let Some(url) = self.store.as_ref().map(StoreUrl::expose) {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::StoreUrl);
            }
            if !cfg!(feature = "postgres") {
                return Err(ConfigError::NoPostgres);
            }
        }
        if let Some(cluster) = &self.cluster {
            if self.store.is_none() {
                return Err(ConfigError::ClusterWithoutPostgres);
            }
            cluster.lease.validate()?;
        }
        if self.max_model_bytes > limits.max_queued_bytes as u64 / 2 {
            return Err(ConfigError::ModelLargerThanQueue {
                max_model_bytes: self.max_model_bytes,
                max_queued_bytes: limits.max_queued_bytes,
            });
        }
        Ok(())
    }
}

/// A PostgreSQL store URL. It may hold a password, so its `Debug` (what logs, panics and
/// printed configurations show) is redacted by [`redact_store_url`]; [`StoreUrl::expose`]
/// gives the URL itself, for connecting only.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL with its password, for connecting to the store: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password, if any, replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_store_url(&self.0)
    }
}

impl From<String> for StoreUrl {
    fn from(url: String) -> Self {
        StoreUrl(url)
    }
}

impl From<&str> for StoreUrl {
    fn from(url: &str) -> Self {
        StoreUrl(url.to_owned())
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// `url` (a `postgres://` store URL) with its password, if any, replaced by `***`: in the
/// user part (`postgres://user:secret@host/db`) and in a `password=` parameter. What is
/// printed or logged of a store goes through this.
pub fn redact_store_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match location.find('/') {
        Some(at) => location.split_at(at),
        None => (location, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let mut redacted = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&parameters.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_urls_password_is_redacted_wherever_it_is() {
        let cases = [
            (
                "postgres://concord:s3cr:et@db.example:5432/concord",
                "postgres://concord:***@db.example:5432/concord",
            ),
            (
                "postgresql://u:p@h/d?sslmode=disable&password=x&a=b",
                "postgresql://u:***@h/d?sslmode=disable&password=***&a=b",
            ),
            (
                "postgres://concord@127.0.0.1:5432/concord",
                "postgres://concord@127.0.0.1:5432/concord",
            ),
            ("postgres://h/d?PASSWORD=x", "postgres://h/d?PASSWORD=***"),
            ("postgres://u:p%40ss@h", "postgres://u:***@h"),
            ("postgres://u:p@ss@h/d", "postgres://u:***@h/d"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_store_url(url), expected, "{url}");
            assert_eq!(format!("{:?}", StoreUrl::from(url)), format!("{expected:?}"));
        }
    }

    #[test]
    fn a_printed_configuration_shows_no_secret() {
        let mut config = ServerConfig::development("data", b"jwt-secret-bytes");
        config.store = Some("postgres://concord:pg-password@db/concord".into());
        let printed = format!("{config:?}");
        assert!(printed.contains("postgres://concord:***@db/concord"), "{printed}");
        assert!(!printed.contains("pg-password"), "{printed}");
        assert!(!printed.contains("jwt-secret-bytes"), "{printed}");
    }

    #[test]
    fn settings_the_server_cannot_run_with_are_refused() {
        let mut config = ServerConfig::development("data", b"secret");
        assert_eq!(config.check(), Ok(()));
        config.limits.max_queued_bytes = 1_000;
        config.max_model_bytes = 501;
        assert_eq!(
            config.check(),
            Err(ConfigError::ModelLargerThanQueue {
                max_model_bytes: 501,
                max_queued_bytes: 1_000
            })
        );
        config.max_model_bytes = 500;
        assert_eq!(config.check(), Ok(()));
        config.limits.burst = 0;
        assert_eq!(config.check(), Err(ConfigError::Zero("burst")));
    }
}
