//! Revoked reconnect tokens: per user, a time up to which every reconnect token issued to the
//! user is refused, so that they must log in again with a client JWT.
//!
//! The list is a file in the data directory, [`REVOCATION_FILE`], one JSON object a line
//! (`{"user":"alice","revoked_at_ms":1767225600000}`; the latest line of a user counts). It is
//! only ever appended to, by [`RevocationList::revoke`] in the server's process or another one
//! (`concord revoke`), and the server reads it again whenever it changed, so a revocation
//! takes effect at the next handshake without a restart. A list that cannot be read refuses
//! every reconnect token (the clients fall back to their JWTs) rather than accept a revoked one.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use concord_protocol::UserId;
use serde::{Deserialize, Serialize};

/// The revocation list's file name in the server's data directory.
pub const REVOCATION_FILE: &str = "revoked-reconnect-tokens";

/// Why the revocation list could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    #[error("cannot use the revocation list {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("line {line} of the revocation list {} is not a revocation: {reason}", .path.display())]
    Malformed { path: PathBuf, line: usize, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    user: String,
    revoked_at_ms: u64,
}

/// The revocations of one file; see the module's documentation.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    /// The file as last read, and what it said.
    cache: Mutex<Option<(Stamp, HashMap<String, u64>)>>,
}

/// What tells that the file changed: it only grows, and an edit by hand changes its time.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl RevocationList {
    /// The list in the data directory `dir`.
    pub fn in_data_dir(dir: &Path) -> RevocationList {
        RevocationList::at(dir.join(REVOCATION_FILE))
    }

    /// The list in the file `path` (which need not exist yet).
    pub fn at(path: impl Into<PathBuf>) -> RevocationList {
        RevocationList { path: path.into(), cache: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses every reconnect token issued to `user` until now; returns that time
    /// (milliseconds since the Unix epoch). Durable when it returns.
    pub fn revoke(&self, user: &UserId) -> Result<u64, RevocationError> {
        let revoked_at_ms = now_ms();
        let mut line = serde_json::to_string(&Line { user: user.0.clone(), revoked_at_ms })
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        line.push('\n');
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&self.path).map_err(|e| self.io(e))?;
        // One write of a whole line: appends from several processes never interleave.
        file.write_all(line.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| self.io(e))?;
        Ok(revoked_at_ms)
    }

    /// When `user`'s reconnect tokens were last revoked (milliseconds since the Unix epoch),
    /// if ever.
    pub fn revoked_at(&self, user: &UserId) -> Result<Option<u64>, RevocationError> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Stamp { len: meta.len(), modified: meta.modified().ok() },
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.as_ref().is_none_or(|(cached, _)| *cached != stamp) {
            *cache = Some((stamp, self.read()?));
        }
        Ok(cache.as_ref().and_then(|(_, revoked)| revoked.get(&user.0).copied()))
    }

    fn read(&self) -> Result<HashMap<String, u64>, RevocationError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.io(e))?;
        let mut revoked = HashMap::new();
        // A last line without its newline is still being written: it is not a revocation yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for (index, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let line: Line =
                serde_json::from_str(line).map_err(|e| RevocationError::Malformed {
                    path: self.path.clone(),
                    line: index + 1,
                    reason: e.to_string(),
                })?;
            let latest = revoked.entry(line.user).or_insert(line.revoked_at_ms);
            *latest = (*latest).max(line.revoked_at_ms);
        }
        Ok(revoked)
    }

    fn io(&self, source: std::io::Error) -> RevocationError {
        RevocationError::Io { path: self.path.clone(), source }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId(id.into())
    }

    #[test]
    fn revocations_are_kept_per_user_and_seen_by_other_readers() {
        let dir = tempfile::tempdir().unwrap();
        let server = RevocationList::in_data_dir(dir.path());
        assert_eq!(server.revoked_at(&user("alice")).unwrap(), None, "no file yet");
        // Revoked through another handle, as `concord revoke` does from its own process.
        let admin = RevocationList::in_data_dir(dir.path());
        let first = admin.revoke(&user("alice")).unwrap();
        assert_eq!(server.revoked_at(&user("alice")).unwrap(), Some(first));
        assert_eq!(server.revoked_at(&user("bob")).unwrap(), None);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = admin.revoke(&user("alice")).unwrap();
        assert!(second > first);
        assert_eq!(server.revoked_at(&user("alice")).unwrap(), Some(second));
        // A user id of any text survives the file.
        let odd = user("line\nbreak \"quoted\"");
        let at = admin.revoke(&odd).unwrap();
        assert_eq!(server.revoked_at(&odd).unwrap(), Some(at));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(server.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_list_is_an_error_and_a_line_being_written_is_not_yet_counted() {
        let dir = tempfile::tempdir().unwrap();
        let list = RevocationList::in_data_dir(dir.path());
        std::fs::write(list.path(), "{\"user\":\"alice\",\"revoked_at_ms\":5}\n{\"user\":\"bo")
            .unwrap();
        assert_eq!(list.revoked_at(&user("alice")).unwrap(), Some(5));
        assert_eq!(list.revoked_at(&user("bob")).unwrap(), None);
        std::fs::write(list.path(), "{\"user\":\"alice\",\"revoked_at_ms\":5}\nnonsense\n")
            .unwrap();
        assert!(matches!(
            list.revoked_at(&user("alice")),
            Err(RevocationError::Malformed { line: 2, .. })
        ));
    }
}
