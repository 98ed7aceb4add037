//! `concord-bench` holds Concord's benchmarks on real editing traces and the small amount of
//! shared code they need: a loader for the sequential editing traces, the conversion of a
//! trace into `concord-ot` string splices, and a deterministic generator of splice pairs for
//! the transform benchmark.
//!
//! It is not part of the product: nothing depends on it, it is never published, and the peer
//! engines it measures concord-ot against (jumprope, diamond-types, ropey) are
//! benchmark-only dependencies. The traces live in the repository's `data/editing-traces/`
//! (their README gives their origin, format and licence) unless `CONCORD_TRACES` names
//! another directory with the same layout.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use concord_ot::{DiscreteOperation, Document, ElementId, OperationKind, Value, ValueData};
use flate2::read::GzDecoder;
use serde::Deserialize;

/// The environment variable that overrides the editing-traces directory.
pub const TRACES_ENV: &str = "CONCORD_TRACES";

/// The sequential traces, smallest first.
pub const SEQUENTIAL: [&str; 4] = ["sveltecomponent", "rustcode", "seph-blog1", "automerge-paper"];

/// One edit: remove `del` chars at `pos`, then insert `insert` there. Counts are in `char`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub insert: String,
}

/// A sequential editing trace, its transactions flattened into patches in application order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub name: String,
    pub start_content: String,
    pub end_content: String,
    /// Number of transactions in the file (each holds one or more patches).
    pub txn_count: usize,
    pub patches: Vec<Patch>,
}

/// The file's shape; unknown fields (`time`, ...) are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrace {
    start_content: String,
    end_content: String,
    txns: Vec<RawTxn>,
}

#[derive(Deserialize)]
struct RawTxn {
    /// `[pos, delCount, insertStr]`.
    patches: Vec<(usize, usize, String)>,
}

/// The editing-traces directory: `$CONCORD_TRACES`, else the repository's
/// `data/editing-traces`.
pub fn traces_dir() -> PathBuf {
    match std::env::var_os(TRACES_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/editing-traces"),
    }
}

/// Loads `sequential/<name>.json.gz` from [`traces_dir`].
pub fn load_sequential(name: &str) -> Result<Trace> {
    let path = traces_dir().join("sequential").join(format!("{name}.json.gz"));
    load_path(name, &path)
}

/// Loads a gzipped sequential trace from `path`.
pub fn load_path(name: &str, path: &Path) -> Result<Trace> {
    let file = File::open(path).with_context(|| {
        format!(
            "opening trace {} (set {TRACES_ENV} to the editing-traces directory)",
            path.display()
        )
    })?;
    let mut json = Vec::new();
    GzDecoder::new(BufReader::new(file))
        .read_to_end(&mut json)
        .with_context(|| format!("decompressing {}", path.display()))?;
    parse(name, &json).with_context(|| format!("reading {}", path.display()))
}

/// Parses an uncompressed sequential trace.
pub fn parse(name: &str, json: &[u8]) -> Result<Trace> {
    let raw: RawTrace = serde_json::from_slice(json)?;
    let txn_count = raw.txns.len();
    let patches = raw
        .txns
        .into_iter()
        .flat_map(|txn| txn.patches)
        .map(|(pos, del, insert)| Patch { pos, del, insert })
        .collect();
    Ok(Trace {
        name: name.to_owned(),
        start_content: raw.start_content,
        end_content: raw.end_content,
        txn_count,
        patches,
    })
}

impl Trace {
    /// Chars inserted and deleted over the whole trace.
    pub fn char_counts(&self) -> (usize, usize) {
        self.patches
            .iter()
            .fold((0, 0), |(ins, del), p| (ins + p.insert.chars().count(), del + p.del))
    }

    /// Replays the trace on a plain `Vec<char>`: the reference result, slow but obviously
    /// right. Fails if a patch falls outside the text.
    pub fn replay_naive(&self) -> Result<String> {
        let mut text: Vec<char> = self.start_content.chars().collect();
        for (i, p) in self.patches.iter().enumerate() {
            let end = p.pos.checked_add(p.del).filter(|end| *end <= text.len());
            let Some(end) = end else {
                bail!("patch {i} ({}, {}) is outside a text of {} chars", p.pos, p.del, text.len());
            };
            text.splice(p.pos..end, p.insert.chars());
        }
        Ok(text.into_iter().collect())
    }
}

/// The id of the document root used by [`ot_document`].
pub const ROOT_ID: ElementId = ElementId::new(1, 0);
/// The id of the string element used by [`ot_document`].
pub const TEXT_ID: ElementId = ElementId::new(1, 1);

/// A document `{ "text": <content> }` whose string element has id [`TEXT_ID`].
pub fn ot_document(content: &str) -> Document {
    let text = Value::new(TEXT_ID, ValueData::String(content.to_owned()));
    let root = Value::new(ROOT_ID, ValueData::Object(BTreeMap::from([("text".to_owned(), text)])));
    Document::new(root).expect("a fresh two-element document is valid")
}

/// The trace as string splices on `target`, one per patch, in order.
pub fn splice_ops(trace: &Trace, target: ElementId) -> Vec<DiscreteOperation> {
    trace
        .patches
        .iter()
        .map(|p| {
            DiscreteOperation::new(
                target,
                OperationKind::StringSplice {
                    index: p.pos,
                    delete_count: p.del,
                    insert: p.insert.clone(),
                },
            )
        })
        .collect()
}

/// Applies `ops` to `doc` in order, failing on the first operation that does not apply.
pub fn apply_all(doc: &mut Document, ops: &[DiscreteOperation]) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        let applied = doc.apply_discrete(op).with_context(|| format!("operation {i}"))?;
        ensure!(!applied.is_skipped(), "operation {i} was skipped");
    }
    Ok(())
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants): deterministic and
/// dependency-free, good enough to spread benchmark inputs.
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // The high bits of an LCG are the good ones.
        self.0 ^ (self.0 >> 29)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32) % n as u64) as usize
    }
}

const INSERT_ALPHABET: [char; 8] = ['a', 'b', 'c', ' ', 'é', 'ß', '中', '🙂'];

/// One random splice on a text of `len` chars: a pure insert, a pure delete or a
/// replacement, with its start near `near` half of the time (ranges then often overlap or
/// touch) and anywhere otherwise.
fn random_splice(rng: &mut Lcg, len: usize, near: Option<usize>) -> OperationKind {
    let index = match near {
        Some(at) if rng.below(2) == 0 => {
            let lo = at.saturating_sub(8);
            let hi = (at + 8).min(len);
            lo + rng.below(hi - lo + 1)
        }
        _ => rng.below(len + 1),
    };
    let room = len - index;
    let (delete, insert) = match rng.below(3) {
        0 => (0, 1 + rng.below(8)),
        1 => (1 + rng.below(16), 0),
        _ => (1 + rng.below(16), 1 + rng.below(8)),
    };
    let delete = delete.min(room);
    let insert = (0..insert).map(|_| INSERT_ALPHABET[rng.below(INSERT_ALPHABET.len())]).collect();
    OperationKind::StringSplice { index, delete_count: delete, insert }
}

/// `count` pairs of concurrent splices on one string of `len` chars (`len > 16`), both made
/// against the same state and targeting `target`. Same seed, same pairs.
pub fn splice_pairs(
    seed: u64,
    count: usize,
    len: usize,
    target: ElementId,
) -> Vec<(DiscreteOperation, DiscreteOperation)> {
    let mut rng = Lcg::new(seed);
    (0..count)
        .map(|_| {
            let s = random_splice(&mut rng, len, None);
            let OperationKind::StringSplice { index, .. } = &s else {
                unreachable!("random_splice makes splices")
            };
            let c = random_splice(&mut rng, len, Some(*index));
            (DiscreteOperation::new(target, s), DiscreteOperation::new(target, c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_ot::transform_discrete;

    fn check_trace(name: &str) {
        let trace = load_sequential(name).unwrap();
        assert!(!trace.patches.is_empty(), "{name} has no patches");
        let mut doc = ot_document(&trace.start_content);
        apply_all(&mut doc, &splice_ops(&trace, TEXT_ID)).unwrap();
        let text = doc.text(TEXT_ID).unwrap();
        assert!(
            text == trace.end_content,
            "{name}: replay through concord-ot does not give endContent ({} chars, expected {})",
            text.chars().count(),
            trace.end_content.chars().count()
        );
    }

    #[test]
    fn sveltecomponent_replays_to_end_content() {
        check_trace("sveltecomponent");
    }

    #[test]
    fn rustcode_replays_to_end_content() {
        check_trace("rustcode");
    }

    #[test]
    fn seph_blog1_replays_to_end_content() {
        check_trace("seph-blog1");
    }

    #[test]
    fn automerge_paper_replays_to_end_content() {
        check_trace("automerge-paper");
    }

    #[test]
    fn loader_matches_readme_counts() {
        let trace = load_sequential("sveltecomponent").unwrap();
        assert_eq!(trace.txn_count, 18_335);
        assert_eq!(trace.patches.len(), 19_749);
        assert_eq!(trace.char_counts(), (93_984, 75_533));
        assert_eq!(trace.end_content.chars().count(), 18_451);
        assert_eq!(trace.replay_naive().unwrap(), trace.end_content);
    }

    #[test]
    fn parse_flattens_txns_in_order() {
        let json = br#"{"startContent":"ab","endContent":"xb!","txns":[
            {"time":"t","patches":[[2,0,"!"],[0,1,"x"]]}]}"#;
        let trace = parse("tiny", json).unwrap();
        assert_eq!(trace.txn_count, 1);
        assert_eq!(trace.patches[1], Patch { pos: 0, del: 1, insert: "x".into() });
        assert_eq!(trace.replay_naive().unwrap(), "xb!");
    }

    #[test]
    fn missing_trace_is_an_error() {
        let err = load_path("nope", Path::new("/nonexistent/nope.json.gz")).unwrap_err();
        assert!(format!("{err:#}").contains(TRACES_ENV));
    }

    #[test]
    fn splice_pairs_are_deterministic_and_converge() {
        const LEN: usize = 64;
        let pairs = splice_pairs(7, 3_000, LEN, TEXT_ID);
        assert_eq!(pairs, splice_pairs(7, 3_000, LEN, TEXT_ID));
        let base: String = (0..LEN).map(|i| char::from(b'A' + (i % 26) as u8)).collect();
        let doc = ot_document(&base);
        let (mut overlapping, mut disjoint) = (0, 0);
        for (i, (s, c)) in pairs.into_iter().enumerate() {
            if let (
                OperationKind::StringSplice { index: i1, delete_count: d1, .. },
                OperationKind::StringSplice { index: i2, delete_count: d2, .. },
            ) = (&s.kind, &c.kind)
            {
                if i1.max(i2) < &(i1 + d1).min(i2 + d2) {
                    overlapping += 1;
                } else {
                    disjoint += 1;
                }
            }
            let (s2, c2) = transform_discrete(s.clone(), c.clone());
            let mut left = doc.clone();
            left.apply_discrete(&s).unwrap();
            left.apply_discrete(&c2).unwrap();
            let mut right = doc.clone();
            right.apply_discrete(&c).unwrap();
            right.apply_discrete(&s2).unwrap();
            assert_eq!(left.text(TEXT_ID), right.text(TEXT_ID), "pair {i}: {s:?} / {c:?}");
        }
        assert!(overlapping > 300 && disjoint > 300, "{overlapping} / {disjoint}");
    }
}

/// What the multi-process benchmarks (`offline-sync`, `reconnect`) share: reading a
/// process's memory, minting a token, and running one of their own phases as a child, so
/// that each phase's peak resident set is its own.
pub mod process {
    use std::path::Path;
    use std::process::{Command, Stdio};

    use anyhow::{Context, Result, ensure};

    /// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`, `RssAnon:`); `pid` may be
    /// `self`.
    pub fn status_kib(pid: &str, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    }

    /// Resets a process's peak resident set (`VmHWM`) to its current one, so that a later
    /// reading is the peak of what came after.
    pub fn reset_peak_rss(pid: &str) -> Result<()> {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .with_context(|| format!("resetting the peak RSS of process {pid}"))
    }

    /// Mints a token for `user` with the secret of the server data directory `data`.
    pub fn token(concord: &Path, data: &Path, user: &str) -> Result<String> {
        let output = Command::new(concord)
            .args(["token", "--user", user, "--data-dir"])
            .arg(data)
            .stderr(Stdio::inherit())
            .output()?;
        ensure!(output.status.success(), "concord token failed");
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    /// Runs the current binary with `args` (one of its phases); returns what it printed.
    pub fn phase(args: &[&str]) -> Result<String> {
        let output =
            Command::new(std::env::current_exe()?).args(args).stderr(Stdio::inherit()).output()?;
        ensure!(output.status.success(), "phase {} failed", args[0]);
        Ok(String::from_utf8(output.stdout)?)
    }
}
