//! The server's settings. Each one comes from a flag, else its `CONCORD_*` environment
//! variable (clap handles those two), else the TOML file given with `--config`, else its
//! default. [`Config::resolve`] merges the layers and checks the result; `--print-config`
//! prints it in the file's own format. Collections (`[collections.<id>]`) and activity
//! types (`[activities.<type>]`) are configured in the file only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use clap::builder::BoolishValueParser;
use concord_protocol::{CollectionId, Permissions, UserId};
use concord_server::{
    ActivityConfig, ActivityPermissions, ActivityPolicy, AuthConfig, ClusterConfig,
    CollectionConfig, ConnectionLimits, JwtConfig, JwtKey, LeaseConfig, PresenceLimits,
    ServerConfig, StoreUrl,
};
use serde::{Deserialize, Serialize};

/// One layer of settings: the flags and environment variables, or the file. `None` means
/// "not set here". A file key is the flag's name with `_` for `-` (`--data-dir` is
/// `data_dir`); collections can only be configured in the file.
#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7700]
    #[arg(long, env = "CONCORD_BIND", value_name = "ADDR")]
    pub(crate) bind: Option<SocketAddr>,
    /// Directory of the store and of the server's secret [default: ./concord-data]
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where to store: a PostgreSQL URL (`postgres://user@host:port/database`, with
    /// `?sslmode=verify-full` for TLS) [default: the embedded store in the data directory]
    #[arg(long, env = "CONCORD_STORE", value_name = "URL")]
    pub(crate) store: Option<StoreUrl>,
    /// How long a commit to PostgreSQL is retried while PostgreSQL cannot be reached, in
    /// seconds, before the sessions waiting on it are closed (their clients resend)
    /// [default: 30]
    #[arg(long, env = "CONCORD_STORE_RETRY_SECS", value_name = "SECS")]
    pub(crate) store_retry_secs: Option<u64>,
    /// Run as one node of several on the PostgreSQL store: a model is sequenced only by the
    /// node holding its lease (docs/cluster.md) [default: false, the only server on its store]
    #[arg(long, env = "CONCORD_CLUSTER", value_name = "BOOL", num_args = 0..=1,
        require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub(crate) cluster: Option<bool>,
    /// Where clients reach this cluster node (`ws://host:port`), told to clients of other
    /// nodes [default: ws://<the address it listens on>]
    #[arg(long, env = "CONCORD_NODE_URL", value_name = "URL")]
    pub(crate) node_url: Option<String>,
    /// This node's name in the cluster [default: its node URL]
    #[arg(long, env = "CONCORD_NODE_NAME", value_name = "NAME")]
    pub(crate) node_name: Option<String>,
    /// How long a cluster node's leases last, in milliseconds: a dead node's models are
    /// taken over after at most this long; renewed every quarter of it [default: 4000]
    #[arg(long, env = "CONCORD_LEASE_MILLIS", value_name = "MS")]
    pub(crate) lease_millis: Option<u64>,
    /// File holding the HS256 secret that client JWTs are signed with (its contents, without
    /// surrounding whitespace) [default: <data-dir>/secret]
    #[arg(long, env = "CONCORD_JWT_SECRET_FILE", value_name = "FILE")]
    pub(crate) jwt_secret_file: Option<PathBuf>,
    /// PEM file of the RS256 public key that verifies client JWTs, instead of an HS256 secret
    #[arg(long, env = "CONCORD_JWT_RS256_PUBLIC_KEY", value_name = "FILE")]
    pub(crate) jwt_rs256_public_key: Option<PathBuf>,
    /// Audience that client JWTs must name in `aud` [default: not checked]
    #[arg(long, env = "CONCORD_JWT_AUDIENCE", value_name = "AUD")]
    pub(crate) jwt_audience: Option<String>,
    /// Clock skew tolerated on a JWT's `exp` and `nbf`, in seconds [default: 30]
    #[arg(long, env = "CONCORD_JWT_LEEWAY_SECS", value_name = "SECS")]
    pub(crate) jwt_leeway_secs: Option<u64>,
    /// Accept anonymous handshakes [default: false]
    #[arg(long, env = "CONCORD_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1,
        require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub(crate) allow_anonymous: Option<bool>,
    /// How long a reconnect token stays valid, in seconds [default: 86400]
    #[arg(long, env = "CONCORD_RECONNECT_TTL_SECS", value_name = "SECS")]
    pub(crate) reconnect_ttl_secs: Option<u64>,
    /// Create unknown collections on first use, with open permissions [default: true]
    #[arg(long, env = "CONCORD_AUTO_CREATE_COLLECTIONS", value_name = "BOOL", num_args = 0..=1,
        require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub(crate) auto_create_collections: Option<bool>,
    /// Unload a model nobody has open or subscribed after this many seconds [default: 30]
    #[arg(long, env = "CONCORD_IDLE_UNLOAD_SECS", value_name = "SECS")]
    pub(crate) idle_unload_secs: Option<u64>,
    /// Committed operations each loaded model keeps in memory [default: 1000]
    #[arg(long, env = "CONCORD_HISTORY_IN_MEMORY", value_name = "N")]
    pub(crate) history_in_memory: Option<usize>,
    /// Write a model snapshot every this many operations [default: 1000]
    #[arg(long, env = "CONCORD_SNAPSHOT_EVERY", value_name = "N")]
    pub(crate) snapshot_every: Option<u64>,
    /// Largest frame accepted from a client, in bytes [default: 16777216]
    #[arg(long, env = "CONCORD_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub(crate) max_frame_bytes: Option<usize>,
    /// Directory of static files served at `/` (the browser demo, built by `cargo xtask web`)
    #[arg(long, env = "CONCORD_WEB_ROOT", value_name = "DIR")]
    pub(crate) web_root: Option<PathBuf>,
    /// Sustained messages per second accepted from one connection [default: 2000]
    #[arg(long, env = "CONCORD_MESSAGES_PER_SECOND", value_name = "N")]
    pub(crate) messages_per_second: Option<u32>,
    /// Messages one connection may send in a burst above that rate [default: 4000]
    #[arg(long, env = "CONCORD_BURST", value_name = "N")]
    pub(crate) burst: Option<u32>,
    /// Models open at once on one connection [default: 1000]
    #[arg(long, env = "CONCORD_MAX_OPEN_MODELS", value_name = "N")]
    pub(crate) max_open_models: Option<usize>,
    /// Models in one connection's offline subscription set [default: 10000]
    #[arg(long, env = "CONCORD_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub(crate) max_subscriptions: Option<usize>,
    /// Messages queued for a client that does not read before it is dropped [default: 4096]
    #[arg(long, env = "CONCORD_MAX_QUEUED_MESSAGES", value_name = "N")]
    pub(crate) max_queued_messages: Option<usize>,
    /// Bytes of messages the server holds for one connection (waiting to be durable or to
    /// be written) before it is dropped as a client that does not read [default: 67108864]
    #[arg(long, env = "CONCORD_MAX_QUEUED_BYTES", value_name = "BYTES")]
    pub(crate) max_queued_bytes: Option<usize>,
    /// The most a model's encoded data may take: a change that would grow a model past it,
    /// or a creation with more, is refused with `model_too_large`; at most half of
    /// max_queued_bytes [default: 16777216, or half of max_queued_bytes if that is less]
    #[arg(long, env = "CONCORD_MAX_MODEL_BYTES", value_name = "BYTES")]
    pub(crate) max_model_bytes: Option<u64>,
    /// References (cursors, selections) one connection shares at once [default: 256]
    #[arg(long, env = "CONCORD_MAX_SHARED_REFERENCES", value_name = "N")]
    pub(crate) max_shared_references: Option<usize>,
    /// Bytes one shared reference's key and value may take [default: 4096]
    #[arg(long, env = "CONCORD_MAX_REFERENCE_BYTES", value_name = "BYTES")]
    pub(crate) max_reference_bytes: Option<usize>,
    /// Stored operations one connection may make the server read at once to move references
    /// set at old versions forward [default: 20000]
    #[arg(long, env = "CONCORD_MAX_REFERENCE_READS", value_name = "N")]
    pub(crate) max_reference_reads: Option<u64>,
    /// How many of those reads a connection earns back each second [default: 1000]
    #[arg(long, env = "CONCORD_REFERENCE_READS_PER_SECOND", value_name = "N")]
    pub(crate) reference_reads_per_second: Option<u64>,
    /// Connections served at once; more are closed as soon as accepted [default: 10000]
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Connections served at once from one IPv4 address or IPv6 /64 [default: 256]
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub(crate) max_connections_per_address: Option<usize>,
    /// Seconds a client has to send a whole HTTP request head (and the longest an idle HTTP
    /// connection stays open) [default: 10]
    #[arg(long, env = "CONCORD_HEADER_READ_TIMEOUT_SECS", value_name = "SECS")]
    pub(crate) header_read_timeout_secs: Option<u64>,
    /// Seconds a new connection has to complete its handshake [default: 10]
    #[arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS")]
    pub(crate) handshake_timeout_secs: Option<u64>,
    /// Seconds of silence (clients ping every few seconds) after which a session is ended
    /// as gone, and its user's presence goes offline if it was their last [default: 60]
    #[arg(long, env = "CONCORD_SILENCE_TIMEOUT_SECS", value_name = "SECS")]
    pub(crate) silence_timeout_secs: Option<u64>,
    /// Bytes of keys and values in one user's presence state [default: 16384]
    #[arg(long, env = "CONCORD_MAX_PRESENCE_STATE_BYTES", value_name = "BYTES")]
    pub(crate) max_presence_state_bytes: Option<usize>,
    /// Users one session follows at once [default: 1000]
    #[arg(long, env = "CONCORD_MAX_FOLLOWED_USERS", value_name = "N")]
    pub(crate) max_followed_users: Option<usize>,
    /// Activities one session is in at once [default: 64]
    #[arg(long, env = "CONCORD_MAX_ACTIVITIES_JOINED", value_name = "N")]
    pub(crate) max_activities_joined: Option<usize>,
    /// Bytes of keys and values of one participant's state in an activity [default: 4096]
    #[arg(long, env = "CONCORD_MAX_ACTIVITY_STATE_BYTES", value_name = "BYTES")]
    pub(crate) max_activity_state_bytes: Option<usize>,
    /// What every user may do in activities of a type without an `[activities.<type>]`
    /// table: a comma-separated list of `join`, `set_state`, `manage`, or `none`
    /// [default: join,set_state]
    #[arg(long, env = "CONCORD_ACTIVITY_PERMISSIONS", value_name = "LIST")]
    pub(crate) activity_permissions: Option<String>,
    /// Users who see every user's email in identity lookups (comma-separated); everyone
    /// else sees only their own [default: none]
    #[arg(long, env = "CONCORD_IDENTITY_ADMINS", value_name = "USERS", value_delimiter = ',')]
    pub(crate) identity_admins: Option<Vec<String>>,
    /// Threads that run connections and models (the async runtime's workers). The embedded
    /// store commits on a thread of its own, so by default it gets one of the machine's
    /// cores [default: the number of cores, less one with the embedded store, at least 1]
    #[arg(long, env = "CONCORD_WORKERS", value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// Back up the embedded store every this many seconds, into the data directory's
    /// `backups/` (as SIGUSR1 does) [default: 0, only when asked with SIGUSR1]
    #[arg(long, env = "CONCORD_BACKUP_EVERY_SECS", value_name = "SECS")]
    pub(crate) backup_every_secs: Option<u64>,
    /// Backups to keep in `backups/`: after each one the server writes, the oldest beyond
    /// this many are deleted [default: 0, all kept]
    #[arg(long, env = "CONCORD_BACKUP_KEEP", value_name = "N")]
    pub(crate) backup_keep: Option<usize>,
    /// Log filter, in tracing's EnvFilter syntax (for example `info,concord_server=debug`)
    /// [default: info]
    #[arg(long, env = "CONCORD_LOG", value_name = "FILTER")]
    pub(crate) log: Option<String>,
    /// `[collections.<id>]` tables of the file.
    #[arg(skip)]
    #[serde(default)]
    pub(crate) collections: BTreeMap<String, CollectionSection>,
    /// `[activities.<type>]` tables of the file.
    #[arg(skip)]
    #[serde(default)]
    pub(crate) activities: BTreeMap<String, ActivitySection>,
}

/// An `[activities.<type>]` table: who may join, set state in and manage activities of the
/// type. A key left out keeps the server's default (everyone may join and set their state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActivitySection {
    /// What every user may do, for example `{ join = true, set_state = true }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) world: Option<ActivityPermissionSet>,
    /// Per-user permissions that replace `world` for those users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) users: BTreeMap<String, ActivityPermissionSet>,
}

/// Activity permissions as a table; one left out is not granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ActivityPermissionSet {
    pub(crate) join: bool,
    pub(crate) set_state: bool,
    pub(crate) manage: bool,
}

impl From<ActivityPermissionSet> for ActivityPermissions {
    fn from(set: ActivityPermissionSet) -> ActivityPermissions {
        ActivityPermissions { join: set.join, set_state: set.set_state, manage: set.manage }
    }
}

/// The async workers when none are configured: one per core, less the core the embedded
/// store's writer thread keeps busy under load (P2 in `docs/benchmarks.md`). With
/// PostgreSQL the writer mostly waits on the database, and every core is a worker.
fn default_workers(postgres: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if postgres { cores } else { cores.saturating_sub(1).max(1) }
}

/// `join,set_state,manage` (any of them) or `none`.
fn parse_activity_permissions(list: &str) -> anyhow::Result<ActivityPermissions> {
    let mut permissions = ActivityPermissions::default();
    for word in list.split(',').map(str::trim) {
        match word {
            "join" => permissions.join = true,
            "set_state" => permissions.set_state = true,
            "manage" => permissions.manage = true,
            "none" => {}
            other => {
                bail!("activity_permissions: {other:?} is none of join, set_state, manage, none")
            }
        }
    }
    Ok(permissions)
}

fn activity_permissions_list(permissions: ActivityPermissions) -> String {
    let names = [
        (permissions.join, "join"),
        (permissions.set_state, "set_state"),
        (permissions.manage, "manage"),
    ];
    let list: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
    if list.is_empty() { "none".into() } else { list.join(",") }
}

/// A `[collections.<id>]` table: the collection's permission defaults. A key left out keeps
/// the server's default (everyone may read, write, remove and create).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CollectionSection {
    /// What every user may do with the collection's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) world: Option<PermissionSet>,
    /// Per-user permissions that replace `world` for those users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) users: BTreeMap<String, PermissionSet>,
    /// Whether every user may create models in the collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) world_create: Option<bool>,
    /// Users who may create models when `world_create` is false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) creators: Vec<String>,
    /// Paths indexed for queries (`"status"`, `"owner.city"`; `docs/queries.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) indexes: Vec<String>,
}

/// Permissions written as a table, for example `{ read = true, write = true }`; a permission
/// left out is not granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PermissionSet {
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) remove: bool,
    pub(crate) manage: bool,
}

impl From<PermissionSet> for Permissions {
    fn from(set: PermissionSet) -> Permissions {
        Permissions { read: set.read, write: set.write, remove: set.remove, manage: set.manage }
    }
}

/// The settings once merged: every value decided. Printed by `--print-config` in the file's
/// format, so the output is itself a valid configuration file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Config {
    pub(crate) bind: SocketAddr,
    pub(crate) data_dir: PathBuf,
    /// Printed with its password masked (`***`): the printout is for reading, and may be
    /// shared.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted_store")]
    pub(crate) store: Option<StoreUrl>,
    pub(crate) store_retry_secs: u64,
    pub(crate) cluster: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node_name: Option<String>,
    pub(crate) lease_millis: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwt_secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwt_rs256_public_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwt_audience: Option<String>,
    pub(crate) jwt_leeway_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) web_root: Option<PathBuf>,
    pub(crate) allow_anonymous: bool,
    pub(crate) reconnect_ttl_secs: u64,
    pub(crate) auto_create_collections: bool,
    pub(crate) idle_unload_secs: u64,
    pub(crate) history_in_memory: usize,
    pub(crate) snapshot_every: u64,
    pub(crate) max_frame_bytes: usize,
    pub(crate) messages_per_second: u32,
    pub(crate) burst: u32,
    pub(crate) max_open_models: usize,
    pub(crate) max_subscriptions: usize,
    pub(crate) max_queued_messages: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) max_model_bytes: u64,
    pub(crate) max_shared_references: usize,
    pub(crate) max_reference_bytes: usize,
    pub(crate) max_reference_reads: u64,
    pub(crate) reference_reads_per_second: u64,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_address: usize,
    pub(crate) header_read_timeout_secs: u64,
    pub(crate) handshake_timeout_secs: u64,
    pub(crate) silence_timeout_secs: u64,
    pub(crate) max_presence_state_bytes: usize,
    pub(crate) max_followed_users: usize,
    pub(crate) max_activities_joined: usize,
    pub(crate) max_activity_state_bytes: usize,
    pub(crate) activity_permissions: String,
    pub(crate) identity_admins: Vec<String>,
    /// Left out of the printout when not set: its default depends on the machine
    /// ([`Config::worker_threads`]), and a printout copied to another machine keeps none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) workers: Option<usize>,
    pub(crate) backup_every_secs: u64,
    pub(crate) backup_keep: usize,
    pub(crate) log: String,
    pub(crate) collections: BTreeMap<String, CollectionSection>,
    pub(crate) activities: BTreeMap<String, ActivitySection>,
}

impl Default for Config {
    fn default() -> Config {
        // The library's defaults, so that the two never drift apart.
        let auth = AuthConfig {
            jwt: None,
            allow_anonymous: false,
            reconnect_secret: Vec::new(),
            reconnect_ttl: Duration::ZERO,
        };
        let server = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 7700)), "", auth);
        let limits = ConnectionLimits::default();
        Config {
            bind: server.bind,
            data_dir: PathBuf::from("./concord-data"),
            store: None,
            store_retry_secs: server.store_retry.as_secs(),
            cluster: false,
            node_url: None,
            node_name: None,
            lease_millis: LeaseConfig::default().ttl.as_millis() as u64,
            jwt_secret_file: None,
            jwt_rs256_public_key: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            web_root: None,
            allow_anonymous: false,
            reconnect_ttl_secs: 86_400,
            auto_create_collections: server.auto_create_collections,
            idle_unload_secs: server.idle_unload.as_secs(),
            history_in_memory: server.history_in_memory,
            snapshot_every: server.snapshot_every,
            max_frame_bytes: limits.max_frame_bytes,
            messages_per_second: limits.messages_per_second,
            burst: limits.burst,
            max_open_models: limits.max_open_models,
            max_subscriptions: limits.max_subscriptions,
            max_queued_messages: limits.max_queued_messages,
            max_queued_bytes: limits.max_queued_bytes,
            max_model_bytes: server.max_model_bytes,
            max_shared_references: limits.max_shared_references,
            max_reference_bytes: limits.max_reference_bytes,
            max_reference_reads: limits.max_reference_reads,
            reference_reads_per_second: limits.reference_reads_per_second,
            max_connections: server.max_connections,
            max_connections_per_address: server.max_connections_per_address,
            header_read_timeout_secs: limits.header_read_timeout.as_secs(),
            handshake_timeout_secs: limits.handshake_timeout.as_secs(),
            silence_timeout_secs: server.silence_timeout.as_secs(),
            max_presence_state_bytes: server.presence.max_state_bytes,
            max_followed_users: server.presence.max_followed,
            max_activities_joined: server.activities.max_joined,
            max_activity_state_bytes: server.activities.max_state_bytes,
            activity_permissions: activity_permissions_list(server.activities.default.world),
            identity_admins: Vec::new(),
            workers: None,
            backup_every_secs: 0,
            backup_keep: 0,
            log: "info".into(),
            collections: BTreeMap::new(),
            activities: BTreeMap::new(),
        }
    }
}

impl Config {
    /// The async runtime's worker threads: `workers`, or by default as many as this machine
    /// and store call for ([`default_workers`]).
    pub(crate) fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| default_workers(self.store.is_some()))
    }

    /// Merges `flags` (flags and environment) over `file` over the defaults, and checks the
    /// result.
    pub(crate) fn resolve(flags: Settings, file: Settings) -> anyhow::Result<Config> {
        let defaults = Config::default();
        macro_rules! pick {
            ($field:ident) => {
                flags.$field.or(file.$field).unwrap_or(defaults.$field)
            };
            (optional $field:ident) => {
                flags.$field.or(file.$field)
            };
        }
        let max_queued_bytes = pick!(max_queued_bytes);
        let config = Config {
            bind: pick!(bind),
            data_dir: pick!(data_dir),
            workers: pick!(optional workers),
            store: pick!(optional store),
            store_retry_secs: pick!(store_retry_secs),
            cluster: pick!(cluster),
            node_url: pick!(optional node_url),
            node_name: pick!(optional node_name),
            lease_millis: pick!(lease_millis),
            jwt_secret_file: pick!(optional jwt_secret_file),
            jwt_rs256_public_key: pick!(optional jwt_rs256_public_key),
            jwt_audience: pick!(optional jwt_audience),
            jwt_leeway_secs: pick!(jwt_leeway_secs),
            web_root: pick!(optional web_root),
            allow_anonymous: pick!(allow_anonymous),
            reconnect_ttl_secs: pick!(reconnect_ttl_secs),
            auto_create_collections: pick!(auto_create_collections),
            idle_unload_secs: pick!(idle_unload_secs),
            history_in_memory: pick!(history_in_memory),
            snapshot_every: pick!(snapshot_every),
            max_frame_bytes: pick!(max_frame_bytes),
            messages_per_second: pick!(messages_per_second),
            burst: pick!(burst),
            max_open_models: pick!(max_open_models),
            max_subscriptions: pick!(max_subscriptions),
            max_queued_messages: pick!(max_queued_messages),
            max_queued_bytes,
            // A snapshot carries the whole model and must fit in what the server may hold
            // for one connection: a smaller queue bound lowers the default.
            max_model_bytes: pick!(optional max_model_bytes)
                .unwrap_or(defaults.max_model_bytes.min(max_queued_bytes as u64 / 2)),
            max_shared_references: pick!(max_shared_references),
            max_reference_bytes: pick!(max_reference_bytes),
            max_reference_reads: pick!(max_reference_reads),
            reference_reads_per_second: pick!(reference_reads_per_second),
            max_connections: pick!(max_connections),
            max_connections_per_address: pick!(max_connections_per_address),
            header_read_timeout_secs: pick!(header_read_timeout_secs),
            handshake_timeout_secs: pick!(handshake_timeout_secs),
            silence_timeout_secs: pick!(silence_timeout_secs),
            max_presence_state_bytes: pick!(max_presence_state_bytes),
            max_followed_users: pick!(max_followed_users),
            max_activities_joined: pick!(max_activities_joined),
            max_activity_state_bytes: pick!(max_activity_state_bytes),
            activity_permissions: pick!(activity_permissions),
            identity_admins: pick!(identity_admins),
            backup_every_secs: pick!(backup_every_secs),
            backup_keep: pick!(backup_keep),
            log: pick!(log),
            // Only the file has collections and activity types.
            collections: file.collections,
            activities: file.activities,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.jwt_secret_file.is_some() && self.jwt_rs256_public_key.is_some() {
            bail!("jwt_secret_file and jwt_rs256_public_key are both set; configure one of them");
        }
        if self.reconnect_ttl_secs == 0 {
            bail!("reconnect_ttl_secs must be at least 1");
        }
        if self.workers == Some(0) {
            bail!("workers must be at least 1");
        }
        // The library checks the rest; authentication is checked where its keys are read.
        let unchecked_auth = AuthConfig {
            jwt: None,
            allow_anonymous: false,
            reconnect_secret: Vec::new(),
            reconnect_ttl: Duration::from_secs(self.reconnect_ttl_secs),
        };
        self.server_config(unchecked_auth)?.check()?;
        Ok(())
    }

    /// The `[collections.<id>]` tables as the server takes them.
    pub(crate) fn collections(&self) -> anyhow::Result<BTreeMap<CollectionId, CollectionConfig>> {
        let mut collections = BTreeMap::new();
        for (id, section) in &self.collections {
            let id = CollectionId::new(id.as_str())
                .with_context(|| format!("[collections.{id:?}] is not a valid collection id"))?;
            let defaults = CollectionConfig::default();
            let mut users = BTreeMap::new();
            for (user, permissions) in &section.users {
                if user.is_empty() {
                    bail!("[collections.{id}] users: a user id is empty");
                }
                users.insert(UserId(user.clone()), Permissions::from(*permissions));
            }
            if section.creators.iter().any(String::is_empty) {
                bail!("[collections.{id}] creators: a user id is empty");
            }
            let config = CollectionConfig {
                world: section.world.map_or(defaults.world, Permissions::from),
                users,
                world_create: section.world_create.unwrap_or(defaults.world_create),
                creators: section.creators.iter().cloned().map(UserId).collect(),
            };
            collections.insert(id, config);
        }
        Ok(collections)
    }

    /// The `indexes` of the `[collections.<id>]` tables as the server takes them.
    pub(crate) fn indexes(
        &self,
    ) -> anyhow::Result<BTreeMap<CollectionId, Vec<concord_query::Path>>> {
        let mut indexes = BTreeMap::new();
        for (id, section) in &self.collections {
            if section.indexes.is_empty() {
                continue;
            }
            let collection = CollectionId::new(id.as_str())
                .with_context(|| format!("[collections.{id:?}] is not a valid collection id"))?;
            let mut paths = Vec::new();
            for path in &section.indexes {
                let parsed = concord_query::Path::parse(path).with_context(|| {
                    format!("[collections.{id}] indexes: {path:?} is not a path")
                })?;
                if !paths.contains(&parsed) {
                    paths.push(parsed);
                }
            }
            indexes.insert(collection, paths);
        }
        Ok(indexes)
    }

    /// The library's configuration, given how connections authenticate.
    pub(crate) fn server_config(&self, auth: AuthConfig) -> anyhow::Result<ServerConfig> {
        let mut server = ServerConfig::new(self.bind, &self.data_dir, auth);
        server.limits = ConnectionLimits {
            max_frame_bytes: self.max_frame_bytes,
            messages_per_second: self.messages_per_second,
            burst: self.burst,
            max_open_models: self.max_open_models,
            max_subscriptions: self.max_subscriptions,
            max_queued_messages: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes,
            max_shared_references: self.max_shared_references,
            max_reference_bytes: self.max_reference_bytes,
            max_reference_reads: self.max_reference_reads,
            reference_reads_per_second: self.reference_reads_per_second,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
        };
        server.max_connections = self.max_connections;
        server.max_connections_per_address = self.max_connections_per_address;
        server.collections = self.collections()?;
        server.indexes = self.indexes()?;
        server.auto_create_collections = self.auto_create_collections;
        server.idle_unload = Duration::from_secs(self.idle_unload_secs);
        server.history_in_memory = self.history_in_memory;
        server.snapshot_every = self.snapshot_every;
        server.max_model_bytes = self.max_model_bytes;
        server.web_root = self.web_root.clone();
        server.silence_timeout = Duration::from_secs(self.silence_timeout_secs);
        server.presence = PresenceLimits {
            max_state_bytes: self.max_presence_state_bytes,
            max_followed: self.max_followed_users,
            ..PresenceLimits::default()
        };
        server.activities = self.activities()?;
        if self.identity_admins.iter().any(String::is_empty) {
            bail!("identity_admins: a user id is empty");
        }
        server.admins = self.identity_admins.iter().cloned().map(UserId).collect();
        server.store = self.store.clone();
        server.store_retry = Duration::from_secs(self.store_retry_secs);
        server.cluster = self.cluster.then(|| {
            let ttl = Duration::from_millis(self.lease_millis);
            ClusterConfig {
                name: self.node_name.clone(),
                url: self.node_url.clone(),
                lease: LeaseConfig { ttl, renew_every: ttl / 4, margin: ttl / 4 },
            }
        });
        if !self.cluster && (self.node_name.is_some() || self.node_url.is_some()) {
            bail!("node_name or node_url is set without cluster = true");
        }
        Ok(server)
    }

    /// The activity settings as the server takes them: limits, the default policy and the
    /// `[activities.<type>]` tables.
    pub(crate) fn activities(&self) -> anyhow::Result<ActivityConfig> {
        let world = parse_activity_permissions(&self.activity_permissions)?;
        let default = ActivityPolicy { world, users: BTreeMap::new() };
        let mut types = BTreeMap::new();
        for (kind, section) in &self.activities {
            if kind.is_empty() {
                bail!("[activities.\"\"]: an activity type is empty");
            }
            let mut users = BTreeMap::new();
            for (user, permissions) in &section.users {
                if user.is_empty() {
                    bail!("[activities.{kind}] users: a user id is empty");
                }
                users.insert(UserId(user.clone()), ActivityPermissions::from(*permissions));
            }
            let world = section.world.map_or(default.world, ActivityPermissions::from);
            types.insert(kind.clone(), ActivityPolicy { world, users });
        }
        Ok(ActivityConfig {
            types,
            default,
            max_joined: self.max_activities_joined,
            max_state_bytes: self.max_activity_state_bytes,
            ..ActivityConfig::default()
        })
    }

    /// How client JWTs are verified: with `key` (read by the caller from the configured
    /// file, or the data dir's secret).
    pub(crate) fn jwt(&self, key: JwtKey) -> JwtConfig {
        JwtConfig {
            key,
            audience: self.jwt_audience.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
        }
    }

    pub(crate) fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("printing the configuration")
    }
}

fn redacted_store<S: serde::Serializer>(
    store: &Option<StoreUrl>,
    out: S,
) -> Result<S::Ok, S::Error> {
    match store {
        Some(url) => out.serialize_str(&url.redacted()),
        None => out.serialize_none(),
    }
}

/// Reads a configuration file. Relative paths in it are relative to the file's directory.
pub(crate) fn read_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let mut settings: Settings =
        toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    for file in [
        &mut settings.data_dir,
        &mut settings.jwt_secret_file,
        &mut settings.jwt_rs256_public_key,
        &mut settings.web_root,
    ]
    .into_iter()
    .flatten()
    {
        if file.is_relative() {
            *file = dir.join(&*file);
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Settings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_default_workers_leave_the_embedded_stores_writer_a_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let embedded = Config::resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(embedded.worker_threads(), cores.saturating_sub(1).max(1));
        let postgres = file("store = \"postgres://concord@db/concord\"\n");
        let postgres = Config::resolve(Settings::default(), postgres).unwrap();
        assert_eq!(postgres.worker_threads(), cores);
        let set = Config::resolve(Settings::default(), file("workers = 3\n")).unwrap();
        assert_eq!(set.worker_threads(), 3);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let flags = Settings { bind: Some("127.0.0.1:1".parse().unwrap()), ..Settings::default() };
        let file = file("bind = \"127.0.0.1:2\"\nmax_open_models = 7\n");
        let config = Config::resolve(flags, file).unwrap();
        assert_eq!(config.bind, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.max_open_models, 7);
        assert_eq!(config.burst, ConnectionLimits::default().burst);
        assert_eq!(config.data_dir, PathBuf::from("./concord-data"));
    }

    #[test]
    fn collections_map_onto_the_server_config() {
        let file = file(
            r#"
            [collections.notes]
            world = { read = true }
            users = { alice = { read = true, write = true, manage = true } }
            world_create = false
            creators = ["alice"]
            indexes = ["status", "owner.city", "status"]

            [collections.open]
            "#,
        );
        let config = Config::resolve(Settings::default(), file).unwrap();
        let collections = config.collections().unwrap();
        let notes = &collections[&CollectionId::new("notes").unwrap()];
        assert_eq!(notes.world, Permissions { read: true, ..Permissions::NONE });
        assert_eq!(
            notes.users[&UserId("alice".into())],
            Permissions { read: true, write: true, remove: false, manage: true }
        );
        assert!(!notes.world_create);
        assert_eq!(notes.creators, vec![UserId("alice".into())]);
        assert_eq!(collections[&CollectionId::new("open").unwrap()], CollectionConfig::default());
        let indexes = config.indexes().unwrap();
        let expected: Vec<concord_query::Path> = ["status", "owner.city"]
            .iter()
            .map(|p| concord_query::Path::parse(p).unwrap())
            .collect();
        assert_eq!(indexes[&CollectionId::new("notes").unwrap()], expected);
        assert!(!indexes.contains_key(&CollectionId::new("open").unwrap()));
        let bad = self::file("[collections.notes]\nindexes = [\"a..b\"]\n");
        assert!(Config::resolve(Settings::default(), bad).is_err(), "a bad index path is refused");
    }

    #[test]
    fn presence_and_activity_settings_map_onto_the_server_config() {
        let file = file(
            r#"
            silence_timeout_secs = 5
            max_presence_state_bytes = 10
            max_followed_users = 2
            max_activities_joined = 3
            max_activity_state_bytes = 4
            activity_permissions = "none"
            identity_admins = ["root"]

            [activities.meeting]
            world = { join = true }
            users = { alice = { join = true, set_state = true, manage = true } }
            "#,
        );
        let config = Config::resolve(Settings::default(), file).unwrap();
        let auth = AuthConfig::development(b"secret");
        let server = config.server_config(auth).unwrap();
        assert_eq!(server.silence_timeout, Duration::from_secs(5));
        assert_eq!((server.presence.max_state_bytes, server.presence.max_followed), (10, 2));
        let activities = &server.activities;
        assert_eq!((activities.max_joined, activities.max_state_bytes), (3, 4));
        assert_eq!(activities.default.world, ActivityPermissions::default());
        let meeting = &activities.types["meeting"];
        assert_eq!(meeting.world, ActivityPermissions { join: true, ..Default::default() });
        assert_eq!(meeting.permissions(&UserId("alice".into())), ActivityPermissions::ALL);
        assert!(server.admins.contains(&UserId("root".into())));
        let printed = config.to_toml().unwrap();
        let again =
            Config::resolve(Settings::default(), toml::from_str(&printed).unwrap()).unwrap();
        assert_eq!(again, config);
        let empty_type = self::file("[activities.\"\"]\n");
        assert!(Config::resolve(Settings::default(), empty_type).is_err());
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let file = file(
            "jwt_audience = \"app\"\n[collections.notes]\nworld = { read = true }\ncreators = [\"bob\"]\n",
        );
        let config = Config::resolve(Settings::default(), file).unwrap();
        let printed = config.to_toml().unwrap();
        let again =
            Config::resolve(Settings::default(), toml::from_str(&printed).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<Settings>("bind = \"nowhere\"").is_err());
        assert!(toml::from_str::<Settings>("no_such_key = 1").is_err());
        assert!(toml::from_str::<Settings>("[collections.a]\nworld = { fly = true }").is_err());
        let both = file("jwt_secret_file = \"a\"\njwt_rs256_public_key = \"b\"");
        assert!(Config::resolve(Settings::default(), both).is_err());
        let zero = file("snapshot_every = 0");
        assert!(Config::resolve(Settings::default(), zero).is_err());
        let too_large = file("max_queued_bytes = 1000\nmax_model_bytes = 501");
        assert!(Config::resolve(Settings::default(), too_large).is_err());
        let lowered = Config::resolve(Settings::default(), file("max_queued_bytes = 1000"));
        assert_eq!(lowered.unwrap().max_model_bytes, 500, "half the queue bound by default");
        let bad_id = file("[collections.\"\"]");
        assert!(Config::resolve(Settings::default(), bad_id).is_err());
        let not_postgres = file("store = \"mysql://db/concord\"");
        let refused = Config::resolve(Settings::default(), not_postgres).unwrap_err();
        assert!(refused.to_string().contains("postgres://"), "{refused}");
    }

    #[test]
    fn the_store_comes_from_the_flags_or_the_file_and_reaches_the_server() {
        let url = "postgres://concord@127.0.0.1:5432/concord";
        let from_file = Config::resolve(Settings::default(), file(&format!("store = \"{url}\"")));
        let config = from_file.unwrap();
        assert_eq!(config.store, Some(url.into()));
        let auth = AuthConfig::development(b"secret");
        assert_eq!(config.server_config(auth.clone()).unwrap().store, Some(url.into()));
        let flags = Settings { store: Some("postgres://other/db".into()), ..Settings::default() };
        let both = Config::resolve(flags, file(&format!("store = \"{url}\""))).unwrap();
        assert_eq!(both.store, Some("postgres://other/db".into()));
        // Unset: the embedded store.
        let embedded = Config::resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(embedded.server_config(auth).unwrap().store, None);
    }
}
