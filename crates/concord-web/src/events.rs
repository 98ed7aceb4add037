//! Every event as JavaScript sees it: a plain object with a `type`. The matches are
//! exhaustive, with no catch-all, so that a new event does not compile until it has its JS
//! shape here (and a line in `docs/web.md`).

use concord_client::{
    ConnectionState, DomainEvent, ElementChange, ElementId, ErrorReply, HandshakeRejection,
    ModelEvent, OpenFailure, OperationKind, RemoteReferenceChange,
};
use serde_json::{Value, json};

use crate::collaboration::value_to_js;
use crate::error::server_code;

/// `"disconnected"`, `"connecting"`, `"connected"` or `"reconnecting"`.
pub(crate) fn state_name(state: &ConnectionState) -> &'static str {
    match state {
        ConnectionState::Disconnected => "disconnected",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Reconnecting => "reconnecting",
    }
}

/// `{ code, message }`: the code by name (`"model_not_found"`, …).
fn error(error: &ErrorReply) -> Value {
    json!({ "code": server_code(error.code), "message": error.message })
}

fn rejection(rejection: &HandshakeRejection) -> Value {
    json!({ "code": server_code(rejection.code), "message": rejection.message })
}

/// `"replica:counter"`.
pub(crate) fn element(id: ElementId) -> String {
    format!("{}:{}", id.replica.0, id.counter)
}

/// `text`: the text of the string a `RemoteReference` lives on, so that its positions reach
/// JavaScript in UTF-16 code units (`None` for other events and other elements).
pub(crate) fn model_event(event: ModelEvent, text: Option<&str>) -> Value {
    match event {
        ModelEvent::Changed { element: id, author, user, .. } => json!({
            "type": "changed",
            "element": element(id),
            "local": author.is_none(),
            "author": author.map(|a| a.0),
            "user": user.map(|u| u.0),
        }),
        ModelEvent::Modified => json!({ "type": "modified" }),
        ModelEvent::Committed => json!({ "type": "committed" }),
        ModelEvent::Stored { seq } => json!({ "type": "stored", "seq": seq }),
        ModelEvent::Acknowledged { seq, version } => {
            json!({ "type": "acknowledged", "seq": seq, "version": version })
        }
        ModelEvent::Neutralised { seqs } => json!({ "type": "neutralised", "seqs": seqs }),
        ModelEvent::Rejected { operations, error: e } => {
            let seqs: Vec<u64> = operations.iter().map(|o| o.seq).collect();
            json!({ "type": "rejected", "seqs": seqs, "error": error(&e) })
        }
        ModelEvent::ResyncStarted => json!({ "type": "resyncStarted" }),
        ModelEvent::ResyncCompleted => json!({ "type": "resyncCompleted" }),
        ModelEvent::Online => json!({ "type": "online" }),
        ModelEvent::Offline => json!({ "type": "offline" }),
        ModelEvent::CollaboratorOpened(collaborator) => json!({
            "type": "collaboratorOpened",
            "session": collaborator.session.0,
            "user": collaborator.user.0,
            "since": collaborator.since.0,
        }),
        ModelEvent::CollaboratorClosed { session, user } => {
            json!({ "type": "collaboratorClosed", "session": session.0, "user": user.0 })
        }
        ModelEvent::ReferenceRefused { reference, error: e } => json!({
            "type": "referenceRefused",
            "element": reference.element.map(element),
            "key": reference.key,
            "error": error(&e),
        }),
        ModelEvent::PermissionsChanged { permissions } => json!({
            "type": "permissionsChanged",
            "permissions": {
                "read": permissions.read,
                "write": permissions.write,
                "remove": permissions.remove,
                "manage": permissions.manage,
            },
        }),
        ModelEvent::RemoteReference { session, user, reference, change } => {
            let (change, value) = match change {
                RemoteReferenceChange::Shared => ("shared", Value::Null),
                RemoteReferenceChange::Set(value) => ("set", value_to_js(&value, text)),
                RemoteReferenceChange::Cleared => ("cleared", Value::Null),
                RemoteReferenceChange::Unshared => ("unshared", Value::Null),
            };
            json!({
                "type": "remoteReference",
                "session": session.0,
                "user": user.map(|u| u.0),
                "element": reference.element.map(element),
                "key": reference.key,
                "change": change,
                "value": value,
            })
        }
        ModelEvent::Gone { error: e } => json!({ "type": "gone", "error": error(&e) }),
        ModelEvent::Released => json!({ "type": "released" }),
    }
}

pub(crate) fn domain_event(event: DomainEvent) -> Value {
    match event {
        DomainEvent::State(state) => json!({ "type": "state", "state": state_name(&state) }),
        DomainEvent::SyncProgress { done, failed, total } => {
            json!({ "type": "syncProgress", "done": done, "failed": failed, "total": total })
        }
        DomainEvent::Created { model } => json!({ "type": "created", "model": model.as_str() }),
        DomainEvent::CreationRefused { model, error: e } => {
            json!({ "type": "creationRefused", "model": model.as_str(), "error": error(&e) })
        }
        DomainEvent::Deleted { model } => json!({ "type": "deleted", "model": model.as_str() }),
        DomainEvent::DeletionRefused { model, error: e } => {
            json!({ "type": "deletionRefused", "model": model.as_str(), "error": error(&e) })
        }
        DomainEvent::ModelGone { model, error: e } => {
            json!({ "type": "modelGone", "model": model.as_str(), "error": error(&e) })
        }
        DomainEvent::Downloaded { model } => {
            json!({ "type": "downloaded", "model": model.as_str() })
        }
        DomainEvent::Opened { model } => json!({ "type": "opened", "model": model.as_str() }),
        DomainEvent::OpenFailed { model, failure } => {
            let (reason, e) = match failure {
                OpenFailure::Refused(e) => ("refused", error(&e)),
                OpenFailure::ConnectionLost => ("connectionLost", Value::Null),
                OpenFailure::TimedOut => ("timedOut", Value::Null),
            };
            json!({ "type": "openFailed", "model": model.as_str(), "reason": reason, "error": e })
        }
        DomainEvent::ChangesRejected { model, error: e } => {
            json!({ "type": "changesRejected", "model": model.as_str(), "error": error(&e) })
        }
        DomainEvent::ServerFault { model, error: e } => {
            json!({ "type": "serverFault", "model": model.as_str(), "error": error(&e) })
        }
        DomainEvent::ProtocolViolation { model, error } => {
            json!({ "type": "protocolViolation", "model": model.as_str(), "message": error })
        }
        DomainEvent::ConnectionRefused(r) => json!({
            "type": "connectionRefused",
            "error": rejection(&r),
            "retryAllowed": r.retry_allowed,
        }),
        DomainEvent::StorageFailed(message) => {
            json!({ "type": "storageFailed", "message": message })
        }
    }
}

/// A change of one element: `{ type, local, author }` with the operation's kind as `type`
/// and what it says beside string positions (JavaScript reads the text itself).
pub(crate) fn element_event(change: &ElementChange) -> Value {
    let mut event = match &change.operation {
        OperationKind::StringSplice { .. } => json!({ "type": "stringSplice" }),
        OperationKind::StringSet { .. } => json!({ "type": "stringSet" }),
        OperationKind::ArrayInsert { index, .. } => {
            json!({ "type": "arrayInsert", "index": index })
        }
        OperationKind::ArrayRemove { index } => json!({ "type": "arrayRemove", "index": index }),
        OperationKind::ArrayReplace { index, .. } => {
            json!({ "type": "arrayReplace", "index": index })
        }
        OperationKind::ArrayMove { from, to } => {
            json!({ "type": "arrayMove", "from": from, "to": to })
        }
        OperationKind::ArraySet { .. } => json!({ "type": "arraySet" }),
        OperationKind::ObjectAddProperty { key, .. } => {
            json!({ "type": "objectAddProperty", "key": key })
        }
        OperationKind::ObjectSetProperty { key, .. } => {
            json!({ "type": "objectSetProperty", "key": key })
        }
        OperationKind::ObjectRemoveProperty { key } => {
            json!({ "type": "objectRemoveProperty", "key": key })
        }
        OperationKind::ObjectSet { .. } => json!({ "type": "objectSet" }),
        OperationKind::NumberDelta { delta } => json!({ "type": "numberDelta", "delta": delta }),
        OperationKind::NumberSet { value } => json!({ "type": "numberSet", "value": value }),
        OperationKind::BooleanSet { value } => json!({ "type": "booleanSet", "value": value }),
        OperationKind::DateSet { value } => json!({ "type": "dateSet", "value": value }),
    };
    event["local"] = json!(change.author.is_none());
    event["author"] = json!(change.author.as_ref().map(|a| &a.0));
    event["user"] = json!(change.user.as_ref().map(|u| &u.0));
    event
}
