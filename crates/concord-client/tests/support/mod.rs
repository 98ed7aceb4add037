//! A real server on loopback and clients with their own redb stores.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use concord_client::{CollectionId, Domain, ModelId, RedbAdapter};
use concord_server::{RunningServer, Server, ServerConfig, mint_token};

pub const SECRET: &[u8] = b"the client tests' JWT secret";

/// A development server on `dir`, on a free port.
pub async fn start(dir: &Path) -> anyhow::Result<RunningServer> {
    Ok(Server::spawn(ServerConfig::development(dir, SECRET)).await?)
}

/// A development server on `dir` listening on `addr` (a restart where clients expect it).
pub async fn start_at(dir: &Path, addr: SocketAddr) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    config.bind = addr;
    Ok(Server::spawn(config).await?)
}

/// The domain every test uses.
pub fn url(server: &RunningServer) -> String {
    server.url("test", "main")
}

pub fn token(user: &str) -> String {
    mint_token(SECRET, user, None, Duration::from_secs(3600)).unwrap()
}

/// A domain for `url` with a redb store under `dir`, reconnecting quickly.
pub fn domain(url: &str, dir: &Path) -> Domain {
    Domain::builder(url)
        .storage(RedbAdapter::new(dir))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .heartbeat(Duration::from_secs(2))
        .build()
}

/// `user`'s domain on `server`, its store under `dir/<user>`, connected with a token of theirs.
pub async fn connected(server: &RunningServer, dir: &Path, user: &str) -> anyhow::Result<Domain> {
    let domain = domain(&url(server), &dir.join(user));
    domain.connect_with_jwt(token(user)).await?;
    Ok(domain)
}

pub fn id(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

pub fn notes() -> CollectionId {
    CollectionId::new("notes").unwrap()
}

/// Waits (bounded) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates models at `domain` and waits until the server has them all.
pub async fn create_confirmed(
    domain: &Domain,
    models: &[ModelId],
    data: serde_json::Value,
) -> anyhow::Result<()> {
    let mut events = domain.events();
    for model in models {
        domain.models().create_with_id(model, &notes(), data.clone()).await?;
    }
    let mut waiting: Vec<&ModelId> = models.iter().collect();
    while !waiting.is_empty() {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(concord_client::DomainEvent::Created { model }) => {
                waiting.retain(|m| **m != model)
            }
            Some(_) => {}
            None => anyhow::bail!("the domain stopped"),
        }
    }
    Ok(())
}
