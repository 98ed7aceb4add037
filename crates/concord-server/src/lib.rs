//! `concord-server` is Concord's server library: the WebSocket endpoint
//! (`ws://HOST:PORT/<namespace>/<domain>`), authentication (JWT, anonymous, reconnect
//! tokens revocable per user), per-model permissions, one sequencer task per active model, and durable
//! persistence behind one store trait — an embedded redb store by default, or PostgreSQL
//! (feature `postgres`, [`ServerConfig::store`]) — every operation is on disk before anyone
//! hears of it, with group commit across models. Presence and activities are held per domain in
//! memory only. `GET /metrics` gives operators its figures in the Prometheus text format.
//!
//! It is not the command line (that is the `concord` binary) and holds no OT or ordering
//! logic of its own: `concord-sync`'s `Sequencer` orders, `concord-ot` transforms. Clients
//! speak `concord-protocol` (`docs/protocol.md`); how the pieces fit is in
//! `docs/server.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), concord_server::ServerError> {
//! use concord_server::{AuthConfig, Server, ServerConfig};
//! use std::time::Duration;
//!
//! let auth = AuthConfig {
//!     jwt: None,
//!     allow_anonymous: true,
//!     reconnect_secret: b"keep this secret".to_vec(),
//!     reconnect_ttl: Duration::from_secs(3600),
//! };
//! let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap(), "./data", auth)).await?;
//! println!("listening on {}", server.local_addr());
//! // Serves until the future resolves (`concord serve` passes SIGINT/SIGTERM here).
//! server.run(std::future::pending()).await
//! # }
//! ```
//!
//! In a process with other work to do (a test, a demo), [`Server::spawn`] runs it as a task
//! and [`ServerConfig::development`] saves building the configuration by hand:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use concord_server::{Server, ServerConfig, mint_token};
//! use std::time::Duration;
//!
//! let secret = b"a development secret";
//! let server = Server::spawn(ServerConfig::development("./data", secret)).await?;
//! let url = server.url("acme", "notes");
//! let token = mint_token(secret, "alice", None, Duration::from_secs(3600))?;
//! // ... clients connect to `url` with `token` ...
//! server.stop().await?; // everything acknowledged is on disk, the store is closed
//! # Ok(())
//! # }
//! ```

mod accept;
mod auth;
#[cfg(feature = "postgres")]
mod cluster;
#[cfg(not(feature = "postgres"))]
#[path = "cluster_stub.rs"]
mod cluster;
mod config;
mod connection;
mod ephemeral;
mod forward;
mod hub;
mod maintenance;
mod metrics;
mod model;
mod outbox;
mod registry;
mod revocation;
mod server;
mod store;
#[cfg(test)]
mod store_format_tests;
#[cfg(test)]
#[path = "../tests/support/postgres.rs"]
mod test_postgres;
mod types;
mod web_root;

pub use auth::{AuthError, Authenticated, Authenticator, mint_identity_token, mint_token};
pub use config::{
    ActivityConfig, ActivityPermissions, ActivityPolicy, AuthConfig, ClusterConfig,
    CollectionConfig, ConfigError, ConnectionLimits, IdentityLimits, JwtConfig, JwtKey,
    LeaseConfig, LeaseConfigError, PresenceLimits, QueryLimits, ServerConfig, StoreUrl,
    redact_store_url,
};
#[cfg(feature = "postgres")]
pub use maintenance::copy_store;
pub use maintenance::{
    Damage, DamagedModel, MaintenanceError, RebuiltSnapshot, StoreCheck, StoreLocation,
    check_store, drop_damaged_model, rebuild_snapshot,
};
pub use revocation::{REVOCATION_FILE, RevocationError, RevocationList};
pub use server::{Backups, RunningServer, Server, ServerError};
pub use store::{Backup, StoreError};
/// Store reading for the fuzz targets; not part of the API.
#[doc(hidden)]
pub use store::{benching, fuzzing};
