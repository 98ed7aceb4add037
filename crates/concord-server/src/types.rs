//! Small types the server's modules share.

use std::sync::Arc;

use concord_protocol::ModelId;

/// A model within a domain (`<namespace>/<domain>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ModelKey {
    pub(crate) domain: Arc<str>,
    pub(crate) model: ModelId,
}

impl ModelKey {
    pub(crate) fn as_tuple(&self) -> (&str, &str) {
        (&self.domain, self.model.as_str())
    }
}

/// How a connection ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client went away.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}
