//! Golden frames: fixed messages whose bytes are committed in `tests/golden/`, so that any
//! change of the wire format shows up as a failing test and is made on purpose (with a new
//! protocol version when old peers could no longer read the frames).
//!
//! `UPDATE_GOLDEN=1 cargo test -p concord-protocol --test golden` rewrites the files.

mod support;

use std::path::PathBuf;

use support::goldens;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.bin"))
}

#[test]
fn frames_match_the_committed_bytes() -> anyhow::Result<()> {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for golden in goldens() {
        let bytes = golden.frame.encode();
        let path = golden_path(golden.name);
        if update {
            std::fs::write(&path, &bytes)?;
            continue;
        }
        let committed = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display())
        })?;
        if committed != bytes {
            mismatches.push(golden.name);
        }
        // Old bytes must still decode to the same message, not merely re-encode alike.
        assert!(
            golden.frame.decode_matches(&committed)?,
            "{} decodes to a different message",
            golden.name
        );
    }
    assert!(
        mismatches.is_empty(),
        "the encoding of {mismatches:?} changed; if that is deliberate, bump \
         PROTOCOL_VERSION when old peers cannot read it, then run with UPDATE_GOLDEN=1"
    );
    Ok(())
}

#[test]
fn every_fixture_file_has_a_message() -> anyhow::Result<()> {
    let names: Vec<_> = goldens().iter().map(|g| g.name).collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "bin") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        assert!(names.contains(&stem), "stale fixture {}", path.display());
    }
    Ok(())
}

/// A readable form of one fixture, to see what the bytes mean.
#[test]
fn the_ack_frame_is_small_and_readable() {
    let ack = goldens().into_iter().find(|g| g.name == "server_ack").unwrap();
    let bytes = ack.frame.encode();
    // version 1, server→client, Push (3), Ack (0), model id (36 bytes + length), seq 3,
    // version 13, timestamp (zig-zag varint).
    assert_eq!(&bytes[..4], &[1, 2, 3, 0]);
    assert_eq!(bytes[4], 36);
    assert_eq!(&bytes[41..43], &[3, 13]);
    assert_eq!(bytes.len(), 49);
}
