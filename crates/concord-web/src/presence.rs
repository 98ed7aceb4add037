//! Permissions, presence and activities for JavaScript, with the Rust API's names:
//! `models().permissions(id)`, `setPermissions`, `createWithPermissions`;
//! `domain.presence()` (`setState`, `setStates`, `removeState`, `clearState`, `follow`, `unfollow`,
//! `onEvent`); `domain.activities()` (`join` → an `Activity`: `participants`, `setState`,
//! `removeState`, `clearState`, `remove`, `leave`; `onEvent`). State values are any JSON
//! value here (JSON text on the wire).

use std::collections::BTreeMap;

use concord_client::{
    Activity as ClientActivity, ActivityChange, ActivityId, Domain as ClientDomain, Participant,
    PermissionGrants, Permissions, SessionId, UserId, UserPresence,
};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

use crate::{Domain, ModelService, WebError, collection, error, from_js, id, subscription, to_js};

fn permissions_json(p: &Permissions) -> Value {
    json!({ "read": p.read, "write": p.write, "remove": p.remove, "manage": p.manage })
}

fn permissions_from(value: &Value) -> Permissions {
    let flag = |name: &str| value.get(name).and_then(Value::as_bool).unwrap_or(false);
    Permissions {
        read: flag("read"),
        write: flag("write"),
        remove: flag("remove"),
        manage: flag("manage"),
    }
}

/// `{ overrideCollection, world: { read, write, remove, manage }, users: { id: {...} } }`.
fn grants_json(grants: &PermissionGrants) -> Value {
    let users: serde_json::Map<String, Value> =
        grants.users.iter().map(|(u, p)| (u.0.clone(), permissions_json(p))).collect();
    json!({
        "overrideCollection": grants.override_collection,
        "world": permissions_json(&grants.world),
        "users": users,
    })
}

fn grants_from(value: &Value) -> Result<PermissionGrants, WebError> {
    let users = match value.get("users") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(users)) => {
            users.iter().map(|(u, p)| (UserId(u.clone()), permissions_from(p))).collect()
        }
        Some(_) => return Err(WebError::invalid("`users` must be an object of user ids")),
    };
    Ok(PermissionGrants {
        override_collection: value
            .get("overrideCollection")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        world: value.get("world").map(permissions_from).unwrap_or_default(),
        users,
    })
}

/// A state map with each value parsed from its JSON text (text that is not JSON, which the
/// server never relays, stays a string).
fn state_json(state: &BTreeMap<String, String>) -> Value {
    let parsed: serde_json::Map<String, Value> = state
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or_else(|_| json!(v))))
        .collect();
    Value::Object(parsed)
}

fn presence_json(p: &UserPresence) -> Value {
    json!({ "user": p.user.0, "available": p.available, "state": state_json(&p.state) })
}

fn participant_json(p: &Participant) -> Value {
    json!({ "session": p.session.0, "user": p.user.0, "state": state_json(&p.state) })
}

fn activity_json(activity: &ActivityId) -> Value {
    json!({ "kind": activity.kind, "id": activity.id })
}

/// `{ type: "joined", activity, participant }`, `{ type: "left", activity, session, user }`,
/// `{ type: "stateChanged", activity, session, user, state }`.
fn activity_event(activity: &ActivityId, change: &ActivityChange) -> Value {
    let activity = activity_json(activity);
    match change {
        ActivityChange::Joined(p) => {
            json!({ "type": "joined", "activity": activity, "participant": participant_json(p) })
        }
        ActivityChange::Left { session, user } => {
            json!({ "type": "left", "activity": activity, "session": session.0, "user": user.0 })
        }
        ActivityChange::StateChanged { session, user, state } => json!({
            "type": "stateChanged",
            "activity": activity,
            "session": session.0,
            "user": user.0,
            "state": state_json(state),
        }),
    }
}

fn object(value: JsValue) -> Result<BTreeMap<String, Value>, WebError> {
    match from_js(value)? {
        Value::Object(map) => Ok(map.into_iter().collect()),
        Value::Null => Ok(BTreeMap::new()),
        _ => Err(WebError::invalid("a state must be an object")),
    }
}

fn users(ids: Vec<String>) -> Vec<UserId> {
    ids.into_iter().map(UserId).collect()
}

#[wasm_bindgen]
impl ModelService {
    /// The model's grants (needs `manage`; fails offline).
    #[wasm_bindgen(unchecked_return_type = "PermissionGrants")]
    pub async fn permissions(&self, model: String) -> Result<JsValue, WebError> {
        let grants = self.domain.models().permissions(&id(&model)?).await.map_err(error)?;
        to_js(&grants_json(&grants))
    }

    /// Replaces the model's grants (needs `manage`; fails offline, never queued).
    #[wasm_bindgen(js_name = setPermissions)]
    pub async fn set_permissions(
        &self,
        model: String,
        #[wasm_bindgen(unchecked_param_type = "PermissionGrants")] grants: JsValue,
    ) -> Result<(), WebError> {
        let grants = grants_from(&from_js(grants)?)?;
        self.domain.models().set_permissions(&id(&model)?, &grants).await.map_err(error)
    }

    /// Creates a model at the server with these grants (online only).
    #[wasm_bindgen(js_name = createWithPermissions)]
    pub async fn create_with_permissions(
        &self,
        model: String,
        collection_id: String,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "PermissionGrants")] grants: JsValue,
    ) -> Result<(), WebError> {
        let (data, grants) = (from_js(data)?, grants_from(&from_js(grants)?)?);
        let (model, collection) = (id(&model)?, collection(&collection_id)?);
        let models = self.domain.models();
        let created = models.create_with_permissions(&model, &collection, data, &grants).await;
        created.map(drop).map_err(error)
    }
}

#[wasm_bindgen]
impl Domain {
    pub fn presence(&self) -> PresenceService {
        PresenceService { domain: self.inner.clone() }
    }

    pub fn activities(&self) -> ActivityService {
        ActivityService { domain: self.inner.clone() }
    }
}

/// This user's presence state, and the users followed.
#[wasm_bindgen]
#[derive(Debug)]
pub struct PresenceService {
    domain: ClientDomain,
}

#[wasm_bindgen]
impl PresenceService {
    /// Sets one key (offline: published on the next connection).
    #[wasm_bindgen(js_name = setState)]
    pub async fn set_state(
        &self,
        key: String,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<(), WebError> {
        self.domain.presence().set_state(&key, from_js(value)?).await.map_err(error)
    }

    /// Sets several keys at once (an object of them).
    #[wasm_bindgen(js_name = setStates)]
    pub async fn set_states(
        &self,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] states: JsValue,
    ) -> Result<(), WebError> {
        self.domain.presence().set_states(object(states)?).await.map_err(error)
    }

    #[wasm_bindgen(js_name = removeState)]
    pub async fn remove_state(&self, keys: Vec<String>) -> Result<(), WebError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.domain.presence().remove_state(&keys).await.map_err(error)
    }

    #[wasm_bindgen(js_name = clearState)]
    pub async fn clear_state(&self) -> Result<(), WebError> {
        self.domain.presence().clear_state().await.map_err(error)
    }

    /// Resolves to `[{ user, available, state }]` (fails offline).
    #[wasm_bindgen(unchecked_return_type = "UserPresence[]")]
    pub async fn follow(&self, users_ids: Vec<String>) -> Result<JsValue, WebError> {
        let now = self.domain.presence().follow(&users(users_ids)).await.map_err(error)?;
        to_js(&now.iter().map(presence_json).collect::<Vec<_>>())
    }

    pub async fn unfollow(&self, users_ids: Vec<String>) -> Result<(), WebError> {
        self.domain.presence().unfollow(&users(users_ids)).await.map_err(error)
    }

    /// Calls `callback({ user, available, state })` for each change of a followed user;
    /// returns the function that ends the subscription.
    #[wasm_bindgen(js_name = onEvent, unchecked_return_type = "Unsubscribe")]
    pub fn on_event(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(presence: UserPresence) => void")]
        callback: js_sys::Function,
    ) -> js_sys::Function {
        let events =
            subscription::converted(self.domain.presence().events(), |presence| async move {
                to_js(&presence_json(&presence)).ok()
            });
        subscription::subscribe(events, callback)
    }
}

/// Joining activities.
#[wasm_bindgen]
#[derive(Debug)]
pub struct ActivityService {
    domain: ClientDomain,
}

#[wasm_bindgen]
impl ActivityService {
    /// Joins activity `id` of type `kind` with a first state (an object; fails offline).
    pub async fn join(
        &self,
        kind: String,
        id: String,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] state: JsValue,
    ) -> Result<Activity, WebError> {
        let state = object(state)?;
        let inner = self.domain.activities().join(&kind, &id, state).await.map_err(error)?;
        Ok(Activity { inner })
    }

    /// Calls `callback(event)` for what happens in joined activities: `joined`, `left`,
    /// `stateChanged` (see `docs/web.md`); returns the function that ends the subscription.
    #[wasm_bindgen(js_name = onEvent, unchecked_return_type = "Unsubscribe")]
    pub fn on_event(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: ActivityEvent) => void")]
        callback: js_sys::Function,
    ) -> js_sys::Function {
        let events = subscription::converted(
            self.domain.activities().events(),
            |(activity, change)| async move { to_js(&activity_event(&activity, &change)).ok() },
        );
        subscription::subscribe(events, callback)
    }
}

/// A joined activity.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Activity {
    inner: ClientActivity,
}

#[wasm_bindgen]
impl Activity {
    /// `{ kind, id }`.
    #[wasm_bindgen(unchecked_return_type = "ActivityRef")]
    pub fn id(&self) -> Result<JsValue, WebError> {
        to_js(&activity_json(self.inner.id()))
    }

    /// `[{ session, user, state }]` as last heard.
    #[wasm_bindgen(unchecked_return_type = "Participant[]")]
    pub async fn participants(&self) -> Result<JsValue, WebError> {
        let participants = self.inner.participants().await.map_err(error)?;
        to_js(&participants.iter().map(participant_json).collect::<Vec<_>>())
    }

    #[wasm_bindgen(js_name = setState)]
    pub async fn set_state(
        &self,
        key: String,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<(), WebError> {
        self.inner.set_state(&key, from_js(value)?).await.map_err(error)
    }

    #[wasm_bindgen(js_name = removeState)]
    pub async fn remove_state(&self, keys: Vec<String>) -> Result<(), WebError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.inner.remove_state(&keys).await.map_err(error)
    }

    #[wasm_bindgen(js_name = clearState)]
    pub async fn clear_state(&self) -> Result<(), WebError> {
        self.inner.clear_state().await.map_err(error)
    }

    /// Removes another session (needs `manage`).
    pub async fn remove(&self, session: String) -> Result<(), WebError> {
        self.inner.remove(&SessionId(session)).await.map_err(error)
    }

    pub async fn leave(self) -> Result<(), WebError> {
        self.inner.leave().await.map_err(error)
    }
}
