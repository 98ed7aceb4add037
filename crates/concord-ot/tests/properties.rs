//! Properties of apply and transform on generated documents and valid operations.

mod common;

use common::{applied, choices};
use concord_ot::{
    DiscreteOperation, Document, IdGenerator, Operation, OperationKind, PathSegment, ReplicaId,
    Value, compose, transform,
};
use concord_testkit::generate::{
    Choices, Source, first_target, gen_document, gen_operation, pick_focus,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(10_000), ..ProptestConfig::default() })]

    /// TP1: `a` then `b'` equals `b` then `a'`.
    #[test]
    fn tp1_holds_for_concurrent_operations(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let focus = Some(pick_focus(&mut c, &doc));
        let a = gen_operation(&mut c, &doc, 1, focus);
        let b = gen_operation(&mut c, &doc, 2, focus);
        applied(&doc, &[&a]).expect("a is valid");
        applied(&doc, &[&b]).expect("b is valid");
        let (a2, b2) = transform(a.clone(), b.clone());
        let left = applied(&doc, &[&a, &b2]);
        let right = applied(&doc, &[&b, &a2]);
        prop_assert!(left.is_ok(), "a then b' failed: {:?}\na'={a2:?}\nb'={b2:?}", left);
        prop_assert!(right.is_ok(), "b then a' failed: {:?}\na'={a2:?}\nb'={b2:?}", right);
        prop_assert_eq!(left.unwrap(), right.unwrap(), "a'={:?}\nb'={:?}", a2, b2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1000), ..ProptestConfig::default() })]

    /// Transforming against an operation flagged no-op changes nothing.
    #[test]
    fn transform_with_a_noop_is_the_identity(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let a = gen_operation(&mut c, &doc, 1, None);
        let b = noop(gen_operation(&mut c, &doc, 2, first_target(&a)));
        prop_assert_eq!(transform(a.clone(), b.clone()), (a.clone(), b.clone()));
        prop_assert_eq!(transform(b.clone(), a.clone()), (b, a));
    }

    /// Applying without keeping old values changes the document exactly as `apply` does,
    /// and fails where it fails.
    #[test]
    fn applying_without_old_values_gives_the_same_document(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let mut op = gen_operation(&mut c, &doc, 1, None);
        if c.below(4) == 0 {
            op = Operation::Compound([op.discrete(), &[invalid(&doc)]].concat());
        }
        let (mut recorded, mut forgetting) = (doc.clone(), doc.clone());
        let outcome = recorded.apply(&op).map(drop);
        prop_assert_eq!(forgetting.apply_without_old(&op), outcome);
        prop_assert_eq!(forgetting, recorded);
    }

    /// A compound whose last part is invalid applies nothing.
    #[test]
    fn a_failed_apply_leaves_the_document_unchanged(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let mut parts = gen_operation(&mut c, &doc, 1, None).discrete().to_vec();
        parts.push(invalid(&doc));
        let mut after = doc.clone();
        prop_assert!(after.apply(&Operation::Compound(parts)).is_err());
        prop_assert_eq!(after, doc);
    }

    /// Applying the inverses of what an operation did restores the document.
    #[test]
    fn inverses_undo_exactly(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let op = gen_operation(&mut c, &doc, 1, None);
        let mut after = doc.clone();
        let outcomes = after.apply(&op).expect("valid");
        for (part, outcome) in op.discrete().iter().zip(&outcomes).rev() {
            if let Some(inverse) = outcome.inverse(part) {
                after.apply_discrete(&inverse).expect("an inverse applies");
            }
        }
        prop_assert_eq!(after, doc);
    }

    #[test]
    fn documents_and_operations_survive_a_serde_round_trip(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let op = gen_operation(&mut c, &doc, 1, None);
        let doc_json = serde_json::to_string(&doc).unwrap();
        prop_assert_eq!(serde_json::from_str::<Document>(&doc_json).unwrap(), doc);
        let op_json = serde_json::to_string(&op).unwrap();
        prop_assert_eq!(serde_json::from_str::<Operation>(&op_json).unwrap(), op);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    /// `compose(a, b)` changes a document exactly as `a` then `b` do, for any two valid
    /// operations (the second made after the first).
    #[test]
    fn composing_gives_the_same_document(values in choices()) {
        let mut c = Choices::new(&values);
        let doc = gen_document(&mut c);
        let focus = Some(pick_focus(&mut c, &doc));
        let a = gen_operation(&mut c, &doc, 1, focus);
        let after_a = applied(&doc, &[&a]).expect("a is valid");
        let b = gen_operation(&mut c, &after_a, 2, focus);
        let Ok(expected) = applied(&doc, &[&a, &b]) else { return Ok(()) };
        let composed = compose(a.clone(), b.clone());
        prop_assert_eq!(applied(&doc, &[&composed]), Ok(expected), "composed: {:?}", composed);
    }

    /// Typing, deleting and backspacing on one string in any order: composing the splices
    /// one by one gives the text applying them does.
    #[test]
    fn composed_splices_give_the_same_text(
        start in "[ab\u{e9}]{0,6}",
        edits in prop::collection::vec((0usize..12, 0usize..4, "[xy\u{1f600}]{0,3}"), 1..12),
    ) {
        let mut ids = IdGenerator::new(ReplicaId(1), 0);
        let json = serde_json::json!({ "text": start });
        let mut doc = Document::new(Value::from_json(&json, &mut ids).unwrap()).unwrap();
        let text = doc.element_at(&[PathSegment::Key("text".into())]).unwrap();
        let original = doc.clone();
        let mut composed: Option<Operation> = None;
        for (index, delete, insert) in edits {
            let len = doc.text_len(text).unwrap();
            let index = index.min(len);
            let delete_count = delete.min(len - index);
            let kind = OperationKind::StringSplice { index, delete_count, insert };
            let op = Operation::from(DiscreteOperation::new(text, kind));
            doc.apply(&op).unwrap();
            composed = Some(match composed {
                None => op,
                Some(before) => compose(before, op),
            });
        }
        let composed = composed.unwrap();
        let mut replayed = original;
        replayed.apply(&composed).unwrap();
        prop_assert_eq!(replayed.text(text), doc.text(text), "composed: {:?}", composed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// On texts long enough to be kept in chunks (several KiB): a splice changes the
    /// document the same with and without old values, and its inverse, built from the old
    /// values, restores the text before it.
    #[test]
    fn splices_of_long_texts_apply_and_undo_exactly(
        start in "[ab\u{e9} ]{1,8}".prop_map(|s| s.repeat(700)),
        edits in prop::collection::vec(
            (
                0.0..=1.0f64,
                prop_oneof![4 => 0usize..4, 1 => 0usize..4000],
                prop_oneof![4 => "[xy\u{1f600}]{0,3}", 1 => "[a-z]{1,3}".prop_map(|s| s.repeat(400))],
            ),
            1..30,
        ),
    ) {
        let mut ids = IdGenerator::new(ReplicaId(1), 0);
        let json = serde_json::json!({ "text": start });
        let mut doc = Document::new(Value::from_json(&json, &mut ids).unwrap()).unwrap();
        let text = doc.element_at(&[PathSegment::Key("text".into())]).unwrap();
        for (at, delete, insert) in edits {
            let len = doc.text_len(text).unwrap();
            let index = (at * len as f64) as usize;
            let delete_count = delete.min(len - index);
            let splice = DiscreteOperation::new(
                text,
                OperationKind::StringSplice { index, delete_count, insert },
            );
            let before = doc.clone();
            let mut forgetting = doc.clone();
            forgetting.apply_discrete_without_old(&splice).unwrap();
            let outcome = doc.apply_discrete(&splice).unwrap();
            prop_assert_eq!(&forgetting, &doc);
            let mut undone = doc.clone();
            undone.apply_discrete(&outcome.inverse(&splice).expect("a splice has an inverse")).unwrap();
            prop_assert_eq!(undone.text(text), before.text(text));
        }
    }
}

#[test]
fn typing_on_folds_into_one_splice() {
    let text = concord_ot::ElementId::new(1, 1);
    let splice = |index, delete_count, insert: &str| -> Operation {
        let kind = OperationKind::StringSplice { index, delete_count, insert: insert.into() };
        DiscreteOperation::new(text, kind).into()
    };
    let mut op = splice(3, 0, "a");
    for i in 4..100 {
        op = compose(op, splice(i, 0, "a"));
    }
    op = compose(op, splice(99, 1, "")); // a backspace
    op = compose(op, splice(2, 2, "")); // deleting across the start of what was typed
    assert_eq!(op, splice(2, 1, &"a".repeat(95)));
    // A splice elsewhere in the string stays a separate part.
    let apart = compose(op.clone(), splice(200, 0, "z"));
    assert_eq!(apart.discrete().len(), 2);
}

fn noop(op: Operation) -> Operation {
    match op {
        Operation::Discrete(op) => Operation::Discrete(op.into_noop()),
        Operation::Compound(ops) => {
            Operation::Compound(ops.into_iter().map(|op| op.into_noop()).collect())
        }
    }
}

/// An operation that cannot apply to `doc`: a string splice on the root object, which no
/// operation can remove.
fn invalid(doc: &Document) -> concord_ot::DiscreteOperation {
    concord_ot::DiscreteOperation::new(
        doc.root_id(),
        concord_ot::OperationKind::StringSplice { index: 0, delete_count: 0, insert: "x".into() },
    )
}

/// `default` cases, or `PROPTEST_CASES` for a longer local run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
