//! Errors as JavaScript sees them: an `Error` named `ConcordError` whose `code` is stable
//! (local codes below, or the server's error code by name), so programs decide on `code`
//! and people read `message`.

use concord_client::{ClientError, EngineError, ErrorCode};
use wasm_bindgen::prelude::*;

/// What every rejected promise and thrown call of this API carries.
#[derive(Debug)]
pub struct WebError {
    code: String,
    message: String,
    /// Where in a query's text it went wrong: `(line, column)`.
    position: Option<(u64, u64)>,
}

impl WebError {
    /// An argument JavaScript passed is not what the call takes.
    pub(crate) fn invalid(message: impl Into<String>) -> WebError {
        WebError { code: "invalid_argument".to_owned(), message: message.into(), position: None }
    }

    pub(crate) fn with_code(code: &str, message: impl Into<String>) -> WebError {
        WebError { code: code.to_owned(), message: message.into(), position: None }
    }
}

/// The server's code by name (`"model_not_found"`, …); `unknown_<n>` for a code this build
/// does not know.
pub(crate) fn server_code(code: ErrorCode) -> String {
    code.name().map_or_else(|| format!("unknown_{}", code.0), str::to_owned)
}

fn engine_code(error: &EngineError) -> &'static str {
    match error {
        EngineError::NotLoaded(_) => "not_open",
        EngineError::AlreadyLoaded(_) => "already_open",
        EngineError::DeletionPending(_) => "deletion_pending",
        EngineError::Offline(_) => "offline",
        EngineError::TooManyOpen { .. } => "too_many_open",
        EngineError::Invalid(_) => "invalid_change",
        EngineError::InvalidReference(_) => "invalid_reference",
        // The enum is non-exhaustive: a newer engine's error keeps a generic code.
        _ => "engine_error",
    }
}

impl From<ClientError> for WebError {
    fn from(error: ClientError) -> WebError {
        let code = match &error {
            ClientError::NotInitialized => "not_initialized".to_owned(),
            ClientError::OtherUser { .. } => "other_user".to_owned(),
            ClientError::Connect { .. } => "connect_failed".to_owned(),
            ClientError::Rejected(rejection) => server_code(rejection.code),
            ClientError::NotAvailableOffline(_) => "not_available_offline".to_owned(),
            ClientError::NotOpen(_) => "not_open".to_owned(),
            ClientError::Offline => "offline".to_owned(),
            ClientError::ConnectionLost => "connection_lost".to_owned(),
            ClientError::NotJoined(_) => "not_joined".to_owned(),
            ClientError::Server(reply) => server_code(reply.code),
            ClientError::Timeout => "timeout".to_owned(),
            ClientError::WrongKind { .. } => "wrong_kind".to_owned(),
            ClientError::NoSuchElement => "no_such_element".to_owned(),
            ClientError::InvalidValue(_) => "invalid_value".to_owned(),
            ClientError::Invalid(_) => "invalid_change".to_owned(),
            ClientError::Storage(_) => "storage_failed".to_owned(),
            ClientError::Engine(e) => engine_code(e).to_owned(),
            ClientError::History(_) => "history".to_owned(),
            ClientError::Closed => "closed".to_owned(),
            ClientError::Query(_) => "invalid_query".to_owned(),
            // The enum is non-exhaustive: a newer client's error keeps a generic code.
            _ => "client_error".to_owned(),
        };
        let position = match &error {
            ClientError::Query(e) => e.position().map(|p| (p.line, p.column)),
            _ => None,
        };
        WebError { code, message: error.to_string(), position }
    }
}

impl From<WebError> for JsValue {
    fn from(error: WebError) -> JsValue {
        let js = js_sys::Error::new(&error.message);
        js.set_name("ConcordError");
        // Setting a property on a fresh Error cannot fail.
        let _ = js_sys::Reflect::set(&js, &"code".into(), &error.code.into());
        if let Some((line, column)) = error.position {
            let position = js_sys::Object::new();
            let _ = js_sys::Reflect::set(&position, &"line".into(), &(line as f64).into());
            let _ = js_sys::Reflect::set(&position, &"column".into(), &(column as f64).into());
            let _ = js_sys::Reflect::set(&js, &"position".into(), &position);
        }
        js.into()
    }
}
