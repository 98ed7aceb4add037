//! Golden frames: fixed messages whose bytes are committed in `tests/golden/`, so that any
//! change of the wire format shows up as a failing test and is made on purpose (with a new
//! protocol version when old peers could no longer read the frames).
//!
//! `UPDATE_GOLDEN=1 cargo test -p concord-protocol --test golden` rewrites the files.
//!
//! A fragmented message's file holds its fragment frames in order, each preceded by its
//! length (u32, little endian).

mod support;

use std::path::PathBuf;

use concord_protocol::{
    DecodeError, Limits, Reassembler, ServerMessage, encode_frames, encode_message,
};
use support::{fragmented_golden, goldens};

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

/// The fragment frames of `bytes` (length-prefixed, as committed).
fn unprefix(mut bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or(anyhow::anyhow!("cut length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        anyhow::ensure!(rest.len() >= len, "cut frame");
        frames.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(frames)
}

#[test]
fn fragmented_frames_match_the_committed_bytes() -> anyhow::Result<()> {
    let golden = fragmented_golden();
    let frames = encode_frames(&Limits::DEFAULT, golden.fragment_bytes, &golden.message)?;
    assert!(frames.len() > 1, "the sample must need several fragments");
    let mut bytes = Vec::new();
    for frame in &frames {
        bytes.extend_from_slice(&u32::try_from(frame.len())?.to_le_bytes());
        bytes.extend_from_slice(frame);
    }
    let path = golden_path(golden.name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &bytes)?;
        return Ok(());
    }
    let committed = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display())
    })?;
    assert!(committed == bytes, "the fragments of {} changed", golden.name);
    // The committed fragments reassemble into the message, which is the whole frame's.
    let mut reassembler = Reassembler::<ServerMessage>::new(Limits::DEFAULT);
    let mut decoded = Vec::new();
    for frame in unprefix(&committed)? {
        decoded.extend(reassembler.push(&frame)?);
    }
    assert_eq!(decoded, vec![golden.message.clone()]);
    let whole: Vec<u8> =
        unprefix(&committed)?.iter().flat_map(|f| f[3..].iter().copied()).collect();
    assert_eq!(whole, encode_message(&Limits::DEFAULT, &golden.message)?);
    // Any fragment left out is noticed.
    let frames = unprefix(&committed)?;
    for skipped in 0..frames.len() {
        let mut reassembler = Reassembler::<ServerMessage>::new(Limits::DEFAULT);
        let outcome: Result<Vec<_>, DecodeError> = frames
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skipped)
            .map(|(_, f)| reassembler.push(f))
            .collect();
        let delivered = outcome.map(|all| all.into_iter().flatten().count());
        assert!(delivered != Ok(1), "fragment {skipped} left out went unnoticed");
    }
    Ok(())
}

#[test]
fn every_fixture_file_has_a_message() -> anyhow::Result<()> {
    let mut names: Vec<_> = goldens().iter().map(|g| g.name).collect();
    names.push(fragmented_golden().name);
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
    // version 8, server→client, Push (3), Ack (0), model id (36 bytes + length), seq 3,
    // version 13, timestamp (zig-zag varint).
    assert_eq!(&bytes[..4], &[8, 2, 3, 0]);
    assert_eq!(bytes[4], 36);
    assert_eq!(&bytes[41..43], &[3, 13]);
    assert_eq!(bytes.len(), 49);
}
