//! Identity: the display name and email of users, as the server learned them from the
//! claims of the tokens they connected with. A session looks users up by id or searches
//! them by display-name prefix; an email is shown only to its own user and to the domain's
//! administrators (`docs/protocol.md`).

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// What the server knows of one user, as the asking session may see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub user: UserId,
    /// The token's `name` claim (or an anonymous user's chosen name).
    pub display_name: Option<String>,
    /// The token's `email` claim; `None` also when the asking session may not see it.
    pub email: Option<String>,
}

/// What a session asks about identities, as [`ClientRequest::Identity`]. Every variant is
/// answered with `Identities`: the users the server knows among those asked, in the
/// order of their ids; unknown users are left out.
///
/// [`ClientRequest::Identity`]: crate::ClientRequest::Identity
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityRequest {
    /// One user.
    User { user: UserId },
    /// Several users (at most the server's lookup limit).
    Users { users: Vec<UserId> },
    /// Users whose display name starts with `prefix`, ignoring case; at most `limit` (the
    /// server may lower it).
    Search { prefix: String, limit: u32 },
}
