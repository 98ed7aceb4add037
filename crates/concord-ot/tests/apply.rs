//! Applying operations: validation errors are typed and leave the document unchanged;
//! edits on removed elements are reported no-ops.

use anyhow::Result;
use concord_ot::{
    Applied, ApplyError, DiscreteOperation, Document, ElementId, IdGenerator, IndexRange, Kind,
    Operation, OperationKind, PathSegment, ReferenceValue, ReplicaId, SkipReason, Value, ValueData,
    transform_reference,
};
use serde_json::json;

fn doc() -> Result<Document> {
    let value = json!({"title": "héllo", "items": [1, 2, 3], "done": false, "meta": {"n": 1}});
    Ok(Document::new(Value::from_json(&value, &mut IdGenerator::new(ReplicaId(0), 0))?)?)
}

fn at(doc: &Document, key: &str) -> ElementId {
    doc.element_at(&[PathSegment::Key(key.into())]).expect("key present")
}

fn op(target: ElementId, kind: OperationKind) -> DiscreteOperation {
    DiscreteOperation::new(target, kind)
}

fn fails(doc: &mut Document, op: DiscreteOperation) -> ApplyError {
    let before = doc.clone();
    let error = doc.apply_discrete(&op).expect_err("must fail");
    assert_eq!(*doc, before, "a failed apply changed the document");
    error
}

#[test]
fn invalid_operations_get_typed_errors_and_change_nothing() -> Result<()> {
    let mut doc = doc()?;
    let (title, items, meta) = (at(&doc, "title"), at(&doc, "items"), at(&doc, "meta"));
    let splice = |index, delete_count| OperationKind::StringSplice {
        index,
        delete_count,
        insert: "x".into(),
    };
    assert!(matches!(
        fails(&mut doc, op(title, splice(6, 0))),
        ApplyError::RangeOutOfRange { len: 5, .. }
    ));
    assert!(matches!(fails(&mut doc, op(title, splice(4, 2))), ApplyError::RangeOutOfRange { .. }));
    assert!(matches!(
        fails(&mut doc, op(title, splice(0, usize::MAX))),
        ApplyError::RangeOutOfRange { .. }
    ));
    assert!(matches!(
        fails(&mut doc, op(items, OperationKind::ArrayRemove { index: 3 })),
        ApplyError::IndexOutOfRange { index: 3, len: 3, .. }
    ));
    assert!(matches!(
        fails(&mut doc, op(items, OperationKind::ArrayMove { from: 0, to: 3 })),
        ApplyError::IndexOutOfRange { .. }
    ));
    assert!(matches!(
        fails(&mut doc, op(items, splice(0, 0))),
        ApplyError::WrongKind { expected: Kind::String, found: Kind::Array, .. }
    ));
    assert!(matches!(
        fails(&mut doc, op(meta, OperationKind::ObjectRemoveProperty { key: "zz".into() })),
        ApplyError::KeyMissing { .. }
    ));
    let existing = Value::new(ElementId::new(0, 0), ValueData::Null);
    assert!(matches!(
        fails(
            &mut doc,
            op(
                meta,
                OperationKind::ObjectAddProperty {
                    key: "n".into(),
                    value: Value::new(ElementId::new(3, 0), ValueData::Null)
                }
            )
        ),
        ApplyError::KeyExists { .. }
    ));
    assert!(matches!(
        fails(
            &mut doc,
            op(meta, OperationKind::ObjectAddProperty { key: "m".into(), value: existing })
        ),
        ApplyError::IdInUse(_)
    ));
    let twice = Value::new(
        ElementId::new(5, 0),
        ValueData::Array(vec![Value::new(ElementId::new(5, 1), ValueData::Null); 2]),
    );
    assert!(matches!(
        fails(&mut doc, op(items, OperationKind::ArrayInsert { index: 0, value: twice })),
        ApplyError::InvalidValue(_)
    ));
    let n =
        doc.element_at(&[PathSegment::Key("meta".into()), PathSegment::Key("n".into())]).unwrap();
    assert!(matches!(
        fails(&mut doc, op(n, OperationKind::NumberSet { value: f64::NAN })),
        ApplyError::NonFiniteResult { .. }
    ));
    assert!(matches!(
        fails(&mut doc, op(n, OperationKind::NumberDelta { delta: f64::INFINITY })),
        ApplyError::NonFiniteResult { .. }
    ));
    Ok(())
}

#[test]
fn a_compound_applies_all_or_nothing() -> Result<()> {
    let mut doc = doc()?;
    let (title, items) = (at(&doc, "title"), at(&doc, "items"));
    let before = doc.clone();
    let compound = Operation::Compound(vec![
        op(title, OperationKind::StringSplice { index: 0, delete_count: 1, insert: "H".into() }),
        op(items, OperationKind::ArrayRemove { index: 0 }),
        op(items, OperationKind::ArrayRemove { index: 7 }),
    ]);
    let error = doc.apply(&compound).expect_err("third part is out of range");
    assert!(matches!(error, ApplyError::InCompound { position: 2, .. }), "{error}");
    assert_eq!(doc, before);
    Ok(())
}

#[test]
fn an_edit_inside_a_removed_subtree_is_a_reported_noop() -> Result<()> {
    let mut doc = doc()?;
    let (root, meta) = (doc.root_id(), at(&doc, "meta"));
    let n = doc.object_entries(meta).unwrap()["n"];
    doc.apply_discrete(&op(root, OperationKind::ObjectRemoveProperty { key: "meta".into() }))?;
    assert!(!doc.contains(n), "the whole subtree left the index");
    let outcome = doc.apply_discrete(&op(n, OperationKind::NumberDelta { delta: 1.0 }))?;
    assert_eq!(outcome, Applied::Skipped(SkipReason::TargetMissing));
    Ok(())
}

#[test]
fn applied_reports_old_values_and_paths_are_computed() -> Result<()> {
    let mut doc = doc()?;
    let title = at(&doc, "title");
    let splice =
        op(title, OperationKind::StringSplice { index: 1, delete_count: 3, insert: "e".into() });
    let outcome = doc.apply_discrete(&splice)?;
    assert_eq!(doc.text(title).as_deref(), Some("heo"));
    assert_eq!(outcome, Applied::Changed { old: concord_ot::Old::Text("éll".into()) });
    let items = at(&doc, "items");
    let second = doc.array_items(items).unwrap()[1];
    assert_eq!(
        doc.path(second),
        Some(vec![PathSegment::Key("items".into()), PathSegment::Index(1)])
    );
    assert_eq!(doc.to_json()["items"], json!([1.0, 2.0, 3.0]));
    Ok(())
}

#[test]
fn references_move_with_splices_and_clear_on_set() {
    let s = ElementId::new(1, 1);
    let splice =
        op(s, OperationKind::StringSplice { index: 4, delete_count: 2, insert: "xyz".into() });
    let moved = transform_reference(&splice, s, ReferenceValue::Index(vec![2, 4, 5, 6, 9]));
    // Before the splice: unchanged (Convergence moved these too); inside: collapses.
    assert_eq!(moved, Some(ReferenceValue::Index(vec![2, 7, 7, 7, 10])));
    let range = transform_reference(
        &splice,
        s,
        ReferenceValue::Range(vec![IndexRange { start: 1, end: 8 }]),
    );
    assert_eq!(range, Some(ReferenceValue::Range(vec![IndexRange { start: 1, end: 9 }])));
    let set = op(s, OperationKind::StringSet { value: "new".into() });
    assert_eq!(transform_reference(&set, s, ReferenceValue::Index(vec![1])), None);
    let elsewhere = ElementId::new(1, 2);
    assert_eq!(
        transform_reference(&splice, elsewhere, ReferenceValue::Index(vec![5])),
        Some(ReferenceValue::Index(vec![5]))
    );
}

#[test]
fn every_finite_number_survives_a_json_round_trip() -> Result<()> {
    // Found by the ot_apply fuzz target: without exact float parsing this came back changed.
    let value = json!({"n": 5.0957437349914564e-304, "m": f64::MAX, "s": -0.1});
    let doc = Document::new(Value::from_json(&value, &mut IdGenerator::new(ReplicaId(0), 0))?)?;
    let back: Document = serde_json::from_str(&serde_json::to_string(&doc)?)?;
    assert_eq!(back, doc);
    Ok(())
}

#[test]
fn transform_never_overflows_on_out_of_range_indices() {
    // Found by reading the code: an invalid client index near usize::MAX must not panic
    // (debug) or wrap into a valid index (release); applying the result reports it.
    let array = ElementId::new(0, 9);
    let insert = |index| -> Operation {
        let value = Value::new(ElementId::new(1, index as u64 % 7), ValueData::Null);
        DiscreteOperation::new(array, OperationKind::ArrayInsert { index, value }).into()
    };
    let (_, client) = concord_ot::transform(insert(0), insert(usize::MAX));
    let Operation::Discrete(client) = client else { panic!("discrete in, discrete out") };
    assert!(matches!(client.kind, OperationKind::ArrayInsert { index: usize::MAX, .. }));
    let splice = |index, delete_count| -> Operation {
        let kind = OperationKind::StringSplice { index, delete_count, insert: "ab".into() };
        DiscreteOperation::new(array, kind).into()
    };
    // Ranges reaching past usize::MAX saturate instead of panicking.
    let (server, client) = concord_ot::transform(splice(usize::MAX, usize::MAX), splice(0, 3));
    assert_eq!(server.discrete().len(), 1);
    assert_eq!(client.discrete().len(), 1);
}
