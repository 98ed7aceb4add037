//! Inputs and checks for Concord's fuzz targets (`fuzz_targets/*.rs`).
//!
//! The targets are thin: each decodes one input type from the fuzzer's bytes and runs one
//! check. The inputs are structure-aware (see [`generate`]): documents with ids from a small
//! space, and operations written against the document they will meet. The checks:
//!
//! - [`check_apply`]: applying an operation never panics; a failed apply leaves the document
//!   as it was; a successful one leaves a document that survives a serde_json round trip
//!   and that the inverses of what it reported restore exactly.
//! - [`check_tp1`]: two concurrent operations that each apply transform into a pair that
//!   converges (TP1).
//!
//! - [`host::check_host`]: the server's session and model hosts, driven by a program of
//!   several users' sessions and store events, keep their promises after every step.
//! - [`query::check_query_text`] and [`query::check_query_plan`]: the query language parses
//!   any text without a panic, with error positions inside the text, and plans soundly.
//! - [`store::check_record`]: the client store decodes any bytes as any of its records with
//!   a typed corruption error or a value that re-encodes stably.
//! - [`server_store::check_sealed`], [`server_store::check_file`] and
//!   [`server_store::check_log`]: the server's store reads any checksummed payload as any of
//!   its records, any damaged store file, and a file with damaged commits in its log,
//!   without a panic: a stable value or a typed error.
//!
//! The `Arbitrary` code lives here, not in concord-ot, which must not depend on arbitrary.

pub mod generate;
pub mod host;
pub mod query;
pub mod server_store;
pub mod store;

use std::fmt;

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_ot::{Document, Operation, Value, transform};

use crate::generate::{Config, Generator};

/// A root value (maybe not a valid document) and, when it is one, an operation against it.
pub struct ApplyInput {
    pub root: Value,
    pub op: Option<Operation>,
}

impl<'a> Arbitrary<'a> for ApplyInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<ApplyInput> {
        let document_ids = Config {
            replica: 0,
            known_replicas: &[0, 1],
            reuse_ids: true,
            exact_numbers: false,
            wild: true,
        };
        let root = Generator::new(u, document_ids).root()?;
        let Ok(doc) = Document::new(root.clone()) else {
            return Ok(ApplyInput { root, op: None });
        };
        let operation_ids = Config { replica: 1, ..document_ids };
        let op = Generator::new(u, operation_ids).operation(&doc)?;
        Ok(ApplyInput { root, op: Some(op) })
    }
}

impl fmt::Debug for ApplyInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyInput").field("root", &self.root).field("op", &self.op).finish()
    }
}

/// Applies the input's operation and checks what the document promises about it.
pub fn check_apply(input: &ApplyInput) {
    let Ok(mut doc) = Document::new(input.root.clone()) else {
        return;
    };
    let Some(op) = &input.op else {
        return;
    };
    let before = doc.clone();
    let applied = match doc.apply(op) {
        Ok(applied) => applied,
        Err(error) => {
            assert_eq!(doc, before, "a failed apply ({error}) changed the document");
            return;
        }
    };
    assert_eq!(applied.len(), op.discrete().len(), "one outcome per discrete operation");

    let json = serde_json::to_string(&doc).expect("a document serializes to JSON");
    let back: Document = match serde_json::from_str(&json) {
        Ok(back) => back,
        Err(error) => panic!("a document's JSON ({json}) does not deserialize: {error}"),
    };
    assert_eq!(back, doc, "serde_json round trip of the document via {json}");

    let mut undone = doc;
    for (part, outcome) in op.discrete().iter().zip(&applied).rev() {
        if let Some(inverse) = outcome.inverse(part)
            && let Err(error) = undone.apply_discrete(&inverse)
        {
            panic!("the inverse {inverse:?} of {part:?} does not apply: {error}");
        }
    }
    assert_eq!(undone, before, "the inverses did not restore the document");
}

/// A document and two concurrent operations on it from different replicas, `a` ordered
/// first (the server's). Numbers are small integers, so that number deltas add exactly.
pub struct Tp1Input {
    pub doc: Document,
    pub a: Operation,
    pub b: Operation,
}

impl<'a> Arbitrary<'a> for Tp1Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Tp1Input> {
        let config = Config {
            replica: 0,
            known_replicas: &[0],
            reuse_ids: false,
            exact_numbers: true,
            wild: false,
        };
        let doc = Generator::new(u, config).document()?;
        let a = Config { replica: 1, known_replicas: &[0, 1], ..config };
        let a = Generator::new(u, a).operation(&doc)?;
        let b = Config { replica: 2, known_replicas: &[0, 2], ..config };
        let b = Generator::new(u, b).operation(&doc)?;
        Ok(Tp1Input { doc, a, b })
    }
}

impl fmt::Debug for Tp1Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tp1Input")
            .field("doc", &self.doc.to_value())
            .field("a", &self.a)
            .field("b", &self.b)
            .finish()
    }
}

/// Checks TP1 for the input: with `(a', b') = transform(a, b)`, applying `a` then `b'`
/// gives the same document as `b` then `a'`. Inputs where `a` or `b` alone does not apply
/// are skipped: they cannot arise from two replicas editing the same state.
pub fn check_tp1(input: &Tp1Input) {
    let Tp1Input { doc, a, b } = input;
    let mut after_a = doc.clone();
    let mut after_b = doc.clone();
    if after_a.apply(a).is_err() || after_b.apply(b).is_err() {
        return;
    }
    let (a2, b2) = transform(a.clone(), b.clone());
    if let Err(error) = after_a.apply(&b2) {
        panic!("b' = {b2:?} does not apply after a: {error}");
    }
    if let Err(error) = after_b.apply(&a2) {
        panic!("a' = {a2:?} does not apply after b: {error}");
    }
    assert_eq!(
        after_a, after_b,
        "TP1 violated: a then b' = {b2:?} differs from b then a' = {a2:?}"
    );
}

/// `file` with each `(at, byte)` change made, `at` taken modulo the file's length.
pub(crate) fn damaged(file: &[u8], changes: &[(u32, u8)]) -> Vec<u8> {
    let mut file = file.to_vec();
    for &(at, byte) in changes {
        let at = at as usize % file.len();
        file[at] = byte;
    }
    file
}

/// A path of this process's and thread's own for `what` (tests read files on several
/// threads).
pub(crate) fn scratch_path(what: &str) -> std::path::PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!("concord-fuzz-{what}-{}-{thread}", std::process::id()))
}
