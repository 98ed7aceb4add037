//! A real server on loopback and clients with their own redb stores.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use concord_client::{CollectionId, Domain, ModelId, RedbAdapter};
use concord_server::{
    AuthConfig, JwtConfig, JwtKey, Server, ServerConfig, ServerError, mint_token,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &[u8] = b"the client tests' JWT secret";

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// A server on `dir`, listening on `addr` (port 0: any).
    pub async fn start(dir: &Path, addr: SocketAddr) -> anyhow::Result<TestServer> {
        let auth = AuthConfig {
            jwt: Some(JwtConfig {
                key: JwtKey::Hs256(SECRET.to_vec()),
                audience: None,
                leeway: Duration::ZERO,
            }),
            allow_anonymous: true,
            reconnect_secret: b"the test server's own secret".to_vec(),
            reconnect_ttl: Duration::from_secs(3600),
        };
        let server = Server::bind(ServerConfig::new(addr, dir, auth)).await?;
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(TestServer { addr, dir: dir.to_path_buf(), stop: Some(stop), task: Some(task) })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/test/main", self.addr)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("the server did not stop")???;
        }
        Ok(())
    }
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
