//! Identity from the client: users' display names and emails, looked up by id or searched
//! by display-name prefix. Connected, the server answers (an email only for this user, or
//! for anyone when this user is one of the domain's administrators) and the offline store
//! keeps what it answered; offline, the store answers with what it kept.

use concord_protocol::{ClientRequest, Identity, IdentityRequest, ServerResponse, UserId};

use crate::domain::Domain;
use crate::driver::Command;
use crate::error::ClientError;
use crate::permissions::unexpected;

/// How many users a search returns when the caller does not say.
pub const DEFAULT_SEARCH_LIMIT: u32 = 20;

/// The identity side of a [`Domain`].
#[derive(Debug, Clone)]
pub struct IdentityService {
    pub(crate) domain: Domain,
}

impl IdentityService {
    /// One user, `None` when neither the server nor (offline) the store knows them.
    pub async fn user(&self, user: &UserId) -> Result<Option<Identity>, ClientError> {
        let found = self.ask(IdentityRequest::User { user: user.clone() }).await?;
        Ok(found.into_iter().find(|i| i.user == *user))
    }

    /// Several users, those known, by id.
    pub async fn users(&self, users: &[UserId]) -> Result<Vec<Identity>, ClientError> {
        self.ask(IdentityRequest::Users { users: users.to_vec() }).await
    }

    /// Users whose display name starts with `prefix` (ignoring case), by id; at most
    /// [`DEFAULT_SEARCH_LIMIT`].
    pub async fn search(&self, prefix: &str) -> Result<Vec<Identity>, ClientError> {
        self.search_limited(prefix, DEFAULT_SEARCH_LIMIT).await
    }

    /// As [`IdentityService::search`], with at most `limit` users (the server may lower it).
    pub async fn search_limited(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Identity>, ClientError> {
        self.ask(IdentityRequest::Search { prefix: prefix.to_owned(), limit }).await
    }

    async fn ask(&self, request: IdentityRequest) -> Result<Vec<Identity>, ClientError> {
        let sent = request.clone();
        let answer = self
            .domain
            .call(|reply| Command::Call {
                request: Box::new(move |_| Ok(ClientRequest::Identity(sent))),
                reply,
            })
            .await;
        match answer {
            Ok(ServerResponse::Identities(found)) => {
                if !found.is_empty() {
                    let identities = found.clone();
                    self.domain
                        .call(|reply| Command::CacheIdentities { identities, reply })
                        .await?;
                }
                Ok(found)
            }
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Offline) => {
                let cached = self.domain.call(|reply| Command::CachedIdentities { reply }).await?;
                Ok(answer_from(cached, request))
            }
            Err(e) => Err(e),
        }
    }
}

/// What the store's cache answers to `request`, as the server would (by id, searches
/// ignoring case).
fn answer_from(cached: Vec<Identity>, request: IdentityRequest) -> Vec<Identity> {
    match request {
        IdentityRequest::User { user } => cached.into_iter().filter(|i| i.user == user).collect(),
        IdentityRequest::Users { users } => {
            cached.into_iter().filter(|i| users.contains(&i.user)).collect()
        }
        IdentityRequest::Search { prefix, limit } => {
            let prefix = prefix.to_lowercase();
            cached
                .into_iter()
                .filter(|i| {
                    i.display_name.as_ref().is_some_and(|n| n.to_lowercase().starts_with(&prefix))
                })
                .take(limit as usize)
                .collect()
        }
    }
}
