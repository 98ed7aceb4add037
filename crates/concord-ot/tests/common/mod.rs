//! Helpers shared by the property tests; the generators live in `concord-testkit`.

use concord_ot::{Document, Operation};
use proptest::prelude::*;

/// Lists of choices for [`concord_testkit::generate::Choices`]: long enough for a rich document
/// and two operations.
pub(crate) fn choices() -> impl Strategy<Value = Vec<u16>> {
    proptest::collection::vec(any::<u16>(), 400..800)
}

/// `doc` with `ops` applied in order, or a description of the failure.
pub(crate) fn applied(doc: &Document, ops: &[&Operation]) -> Result<Document, String> {
    let mut doc = doc.clone();
    for op in ops {
        doc.apply(op).map_err(|e| format!("{e} applying {op:?}"))?;
    }
    Ok(doc)
}
