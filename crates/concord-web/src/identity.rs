//! Identity for JavaScript, with the Rust API's names: `domain.identity()` → `user(id)`,
//! `users(ids)`, `search(prefix, limit?)`, each resolving to `Identity` objects
//! (`{ user, displayName, email }`). Answered by the server when connected (emails only for
//! the user themself and the domain's administrators), else by what the offline store kept.

use concord_client::{Domain as ClientDomain, Identity, UserId};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

use crate::{Domain, WebError, error, to_js};

fn identity_json(identity: &Identity) -> Value {
    json!({
        "user": identity.user.0,
        "displayName": identity.display_name,
        "email": identity.email,
    })
}

#[wasm_bindgen]
impl Domain {
    pub fn identity(&self) -> IdentityService {
        IdentityService { domain: self.inner.clone() }
    }
}

/// Users' display names and emails.
#[wasm_bindgen]
#[derive(Debug)]
pub struct IdentityService {
    domain: ClientDomain,
}

#[wasm_bindgen]
impl IdentityService {
    /// Resolves to the user's `Identity`, or `null` when nobody knows them.
    #[wasm_bindgen(unchecked_return_type = "Identity | null")]
    pub async fn user(&self, user_id: String) -> Result<JsValue, WebError> {
        let found = self.domain.identity().user(&UserId(user_id)).await.map_err(error)?;
        to_js(&found.as_ref().map(identity_json))
    }

    /// Resolves to the known ones among these users, by id.
    #[wasm_bindgen(unchecked_return_type = "Identity[]")]
    pub async fn users(&self, user_ids: Vec<String>) -> Result<JsValue, WebError> {
        let ids: Vec<UserId> = user_ids.into_iter().map(UserId).collect();
        let found = self.domain.identity().users(&ids).await.map_err(error)?;
        to_js(&found.iter().map(identity_json).collect::<Vec<_>>())
    }

    /// Resolves to the users whose display name starts with `prefix` (ignoring case), by
    /// id; at most `limit` (20 when not given).
    #[wasm_bindgen(unchecked_return_type = "Identity[]")]
    pub async fn search(&self, prefix: String, limit: Option<u32>) -> Result<JsValue, WebError> {
        let limit = limit.unwrap_or(concord_client::DEFAULT_SEARCH_LIMIT);
        let found = self.domain.identity().search_limited(&prefix, limit).await.map_err(error)?;
        to_js(&found.iter().map(identity_json).collect::<Vec<_>>())
    }
}
