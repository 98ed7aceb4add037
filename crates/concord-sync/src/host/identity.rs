//! Identities across one domain, sans-IO: the display name and email of each user, as the
//! claims of the tokens they connected with said, and the answers to lookups. Kept in
//! memory and bounded in users and bytes: past either bound the users seen longest ago are
//! forgotten first. What it learns is returned for the server to store
//! (`Write::PutIdentity`), and [`IdentityHost::restore`] takes it back after a restart.
//!
//! An email is personal: it is shown only to its own user and to the domain's
//! administrators; everyone else sees `None`.

use std::collections::{BTreeMap, BTreeSet};

use concord_protocol::{ErrorCode, ErrorReply, Identity, IdentityRequest, UserId};

use super::reply;

/// How much one domain's identities, and one lookup, may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityLimits {
    /// Users remembered per domain.
    pub max_users: usize,
    /// Bytes of ids, names and emails remembered per domain.
    pub max_bytes: usize,
    /// Users one `Users` request may name.
    pub max_lookup: usize,
    /// Users one search returns at most.
    pub max_search_results: usize,
    /// Bytes of one name or email kept (longer ones are cut at a character boundary).
    pub max_field_bytes: usize,
}

impl Default for IdentityLimits {
    fn default() -> IdentityLimits {
        IdentityLimits {
            max_users: 100_000,
            max_bytes: 16 * 1024 * 1024,
            max_lookup: 1_000,
            max_search_results: 100,
            max_field_bytes: 256,
        }
    }
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    /// When it was last learned (a tick), for forgetting the oldest.
    seen: u64,
}

fn bytes(identity: &Identity) -> usize {
    identity.user.0.len()
        + identity.display_name.as_ref().map_or(0, String::len)
        + identity.email.as_ref().map_or(0, String::len)
}

/// The identities of one domain's users.
#[derive(Debug)]
pub struct IdentityHost {
    limits: IdentityLimits,
    admins: BTreeSet<UserId>,
    users: BTreeMap<UserId, Entry>,
    /// Users by tick of last sighting, oldest first.
    by_age: BTreeMap<u64, UserId>,
    /// Lower-cased display name → users, for prefix search.
    by_name: BTreeSet<(String, UserId)>,
    bytes: usize,
    tick: u64,
}

impl IdentityHost {
    /// `admins` see every user's email.
    pub fn new(limits: IdentityLimits, admins: BTreeSet<UserId>) -> IdentityHost {
        IdentityHost {
            limits,
            admins,
            users: BTreeMap::new(),
            by_age: BTreeMap::new(),
            by_name: BTreeSet::new(),
            bytes: 0,
            tick: 0,
        }
    }

    /// Identities stored before, oldest first, as if learned in that order (so the bounds
    /// keep the newest). What is learned later replaces them.
    pub fn restore(&mut self, identities: impl IntoIterator<Item = Identity>) {
        for identity in identities {
            self.learn(identity.user, identity.display_name, identity.email);
        }
    }

    /// A user authenticated with these claims. A claim the token lacks keeps what an
    /// earlier token said (a reconnect token carries no email, for one). Returns the
    /// identity now known, to be stored, or `None` when it is too large to keep.
    pub fn learn(
        &mut self,
        user: UserId,
        display_name: Option<String>,
        email: Option<String>,
    ) -> Option<Identity> {
        let cut = |s: String| cut(s, self.limits.max_field_bytes);
        let (mut display_name, mut email) = (display_name.map(cut), email.map(cut));
        if let Some(old) = self.forget(&user) {
            display_name = display_name.or(old.display_name);
            email = email.or(old.email);
        }
        let identity = Identity { user: user.clone(), display_name, email };
        let size = bytes(&identity);
        if size > self.limits.max_bytes || self.limits.max_users == 0 {
            return None;
        }
        while self.users.len() >= self.limits.max_users || self.bytes + size > self.limits.max_bytes
        {
            let Some((_, oldest)) = self.by_age.first_key_value() else { break };
            let oldest = oldest.clone();
            self.forget(&oldest);
        }
        self.tick += 1;
        if let Some(name) = &identity.display_name {
            self.by_name.insert((name.to_lowercase(), user.clone()));
        }
        self.by_age.insert(self.tick, user.clone());
        self.bytes += size;
        self.users.insert(user, Entry { identity: identity.clone(), seen: self.tick });
        Some(identity)
    }

    fn forget(&mut self, user: &UserId) -> Option<Identity> {
        let entry = self.users.remove(user)?;
        self.by_age.remove(&entry.seen);
        if let Some(name) = &entry.identity.display_name {
            self.by_name.remove(&(name.to_lowercase(), user.clone()));
        }
        self.bytes -= bytes(&entry.identity);
        Some(entry.identity)
    }

    /// How many users are remembered, and their bytes.
    pub fn footprint(&self) -> (usize, usize) {
        (self.users.len(), self.bytes)
    }

    /// Answers `asker`'s request: the users known among those asked, by id, each with its
    /// email only when `asker` may see it.
    pub fn answer(
        &self,
        asker: &UserId,
        request: IdentityRequest,
    ) -> Result<Vec<Identity>, ErrorReply> {
        let found: Vec<&Identity> = match request {
            IdentityRequest::User { user } => {
                self.users.get(&user).map(|e| &e.identity).into_iter().collect()
            }
            IdentityRequest::Users { users } => {
                if users.len() > self.limits.max_lookup {
                    return Err(reply(
                        ErrorCode::INVALID_ARGUMENT,
                        format!(
                            "{} users asked at once; the server looks up at most {}",
                            users.len(),
                            self.limits.max_lookup
                        ),
                    ));
                }
                let users: BTreeSet<UserId> = users.into_iter().collect();
                users.iter().filter_map(|u| self.users.get(u)).map(|e| &e.identity).collect()
            }
            IdentityRequest::Search { prefix, limit } => {
                let prefix = prefix.to_lowercase();
                let limit = (limit as usize).min(self.limits.max_search_results);
                let mut found: Vec<&Identity> = self
                    .by_name
                    .range((prefix.clone(), UserId(String::new()))..)
                    .take_while(|(name, _)| name.starts_with(&prefix))
                    .filter_map(|(_, user)| self.users.get(user))
                    .map(|e| &e.identity)
                    .take(limit)
                    .collect();
                found.sort_by(|a, b| a.user.cmp(&b.user));
                found
            }
        };
        let sees_all = self.admins.contains(asker);
        Ok(found
            .into_iter()
            .map(|identity| {
                let mut shown = identity.clone();
                if !sees_all && identity.user != *asker {
                    shown.email = None;
                }
                shown
            })
            .collect())
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId(id.into())
    }

    fn host(limits: IdentityLimits) -> IdentityHost {
        IdentityHost::new(limits, BTreeSet::from([user("root")]))
    }

    fn learn(host: &mut IdentityHost, id: &str, name: &str) {
        host.learn(user(id), Some(name.into()), Some(format!("{id}@example.org")));
    }

    #[test]
    fn restored_identities_answer_and_the_newest_stay_within_bounds() {
        let mut before = host(IdentityLimits::default());
        let learned: Vec<Identity> = ["a", "b", "c"]
            .iter()
            .filter_map(|id| before.learn(user(id), Some(id.to_uppercase()), None))
            .collect();
        assert_eq!(learned.len(), 3);
        let mut after = host(IdentityLimits { max_users: 2, ..IdentityLimits::default() });
        after.restore(learned);
        let users = vec![user("a"), user("b"), user("c")];
        let found = after.answer(&user("x"), IdentityRequest::Users { users }).unwrap();
        let names: Vec<_> = found.iter().map(|i| i.display_name.as_deref()).collect();
        assert_eq!(names, [Some("B"), Some("C")], "the oldest restored gives way");
    }

    #[test]
    fn learning_returns_the_merged_identity_to_store() {
        let mut h = host(IdentityLimits::default());
        learn(&mut h, "alice", "Alice");
        let stored = h.learn(user("alice"), None, None).unwrap();
        assert_eq!(stored.display_name.as_deref(), Some("Alice"));
        assert_eq!(stored.email.as_deref(), Some("alice@example.org"));
        let mut tiny = host(IdentityLimits { max_bytes: 4, ..IdentityLimits::default() });
        assert_eq!(tiny.learn(user("alice"), Some("Alice".into()), None), None);
    }

    #[test]
    fn emails_show_only_to_their_user_and_to_admins() {
        let mut h = host(IdentityLimits::default());
        learn(&mut h, "alice", "Alice");
        let ask = |asker: &str| {
            h.answer(&user(asker), IdentityRequest::User { user: user("alice") }).unwrap()
        };
        assert_eq!(ask("bob")[0].email, None);
        assert_eq!(ask("bob")[0].display_name.as_deref(), Some("Alice"));
        assert_eq!(ask("alice")[0].email.as_deref(), Some("alice@example.org"));
        assert_eq!(ask("root")[0].email.as_deref(), Some("alice@example.org"));
    }

    #[test]
    fn search_is_by_name_prefix_ignoring_case_and_limited() {
        let mut h = host(IdentityLimits { max_search_results: 2, ..IdentityLimits::default() });
        learn(&mut h, "u1", "Anna");
        learn(&mut h, "u2", "anne");
        learn(&mut h, "u3", "Annabel");
        learn(&mut h, "u4", "Bob");
        let search = |prefix: &str, limit| {
            let request = IdentityRequest::Search { prefix: prefix.into(), limit };
            let found = h.answer(&user("x"), request).unwrap();
            found.into_iter().map(|i| i.user.0).collect::<Vec<_>>()
        };
        assert_eq!(search("ANNA", 10), ["u1", "u3"]);
        assert_eq!(search("ann", 10).len(), 2, "capped by the server's limit");
        assert_eq!(search("bo", 10), ["u4"]);
        assert!(search("z", 10).is_empty());
    }

    #[test]
    fn the_oldest_users_are_forgotten_past_the_bounds() {
        let mut h = host(IdentityLimits { max_users: 2, ..IdentityLimits::default() });
        learn(&mut h, "a", "A");
        learn(&mut h, "b", "B");
        learn(&mut h, "a", "A again"); // seen again: now the newest
        learn(&mut h, "c", "C");
        let users = vec![user("a"), user("b"), user("c")];
        let found = h.answer(&user("x"), IdentityRequest::Users { users }).unwrap();
        let ids: Vec<_> = found.iter().map(|i| i.user.0.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(found[0].display_name.as_deref(), Some("A again"));

        let mut h = host(IdentityLimits { max_bytes: 40, ..IdentityLimits::default() });
        for n in 0..10 {
            learn(&mut h, &format!("user{n}"), "N");
        }
        let (users, bytes) = h.footprint();
        assert!(bytes <= 40 && users >= 1, "{users} users, {bytes} bytes");
    }

    #[test]
    fn a_later_token_without_email_keeps_the_known_one() {
        let mut h = host(IdentityLimits::default());
        learn(&mut h, "alice", "Alice");
        h.learn(user("alice"), Some("Alice B".into()), None);
        let found = h.answer(&user("alice"), IdentityRequest::User { user: user("alice") });
        let found = found.unwrap();
        assert_eq!(found[0].email.as_deref(), Some("alice@example.org"));
        assert_eq!(found[0].display_name.as_deref(), Some("Alice B"));
    }

    #[test]
    fn too_many_users_at_once_is_a_typed_error() {
        let h = host(IdentityLimits { max_lookup: 2, ..IdentityLimits::default() });
        let users = vec![user("a"), user("b"), user("c")];
        let e = h.answer(&user("x"), IdentityRequest::Users { users }).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
    }
}
