//! Secret files. A secret is a file's contents without surrounding whitespace; the server's
//! own one, `<data-dir>/secret`, is 32 random bytes written as 64 hex digits, created on
//! first start with mode 0600 and reused afterwards.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The server's secret inside its data directory.
pub(crate) fn data_dir_secret(data_dir: &Path) -> PathBuf {
    data_dir.join("secret")
}

/// Reads the secret in `path`.
pub(crate) fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        bail!("the secret file {} is empty", path.display());
    }
    Ok(secret.to_vec())
}

/// Reads the secret in `path`, creating it first if there is none. Returns the secret and
/// whether it was created now. Two processes starting at once agree on one secret: it is
/// written whole to a temporary file, then linked into place only if nothing is there yet.
pub(crate) fn load_or_create(path: &Path) -> anyhow::Result<(Vec<u8>, bool)> {
    match std::fs::metadata(path) {
        Ok(_) => return Ok((read(path)?, false)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    let text = format!("{}\n", hex(&random));

    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        // The mode applies only to a file that did not exist; make sure of it either way.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().with_context(|| format!("cannot write {}", temporary.display()))?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                // Make the new name durable too.
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok((text.trim_ascii().as_bytes().to_vec(), true))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((read(path)?, false)),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Whether others than the owner may read `path` (for a warning).
pub(crate) fn readable_by_others(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = data_dir_secret(dir.path());
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        assert!(!readable_by_others(&path));
        let (second, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first, second);
        assert_eq!(read(&path).unwrap(), first);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_empty_secret_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, " \n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");
    }
}
