//! Shared references end to end: a real server on loopback, clients with redb stores,
//! cursors that must stay on the right characters while everyone types.

mod support;

use concord_client::{
    ClientError, Edit, EngineError, ModelEvent, RealTimeModel, ReferenceError, ReferenceValue,
    SessionId, UserId,
};
use serde_json::json;
use support::*;

async fn session(model: &RealTimeModel) -> anyhow::Result<SessionId> {
    model.session_id().await?.ok_or_else(|| anyhow::anyhow!("no session"))
}

/// The cursor `key` of `owner` on `model`'s "text", as `model` sees it.
async fn cursor_of(
    model: &RealTimeModel,
    owner: &SessionId,
    key: &str,
) -> anyhow::Result<Option<usize>> {
    let text = model.root().get("text").await?.unwrap();
    Ok(match text.reference(owner, key).await? {
        Some(Some(ReferenceValue::Index(indices))) => indices.first().copied(),
        _ => None,
    })
}

async fn text(model: &RealTimeModel) -> anyhow::Result<String> {
    Ok(model.root().get("text").await?.unwrap().as_string()?.value().await?)
}

/// The char at `index` of `text`.
fn char_at(text: &str, index: usize) -> Option<char> {
    text.chars().nth(index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_stay_on_their_characters_while_both_type() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let model = id("letter");
    create_confirmed(&alice, std::slice::from_ref(&model), json!({ "text": "hello world" }))
        .await?;
    let a = alice.models().open(&model).await?;
    let b = bob.models().open(&model).await?;
    let (a_session, b_session) = (session(&a).await?, session(&b).await?);
    let a_text = a.root().get("text").await?.unwrap().as_string()?;
    let b_text = b.root().get("text").await?.unwrap().as_string()?;

    // Bob's cursor sits on the "w" of "world"; alice's right after "hello".
    let b_cursor = b_text.index_reference("cursor");
    b_cursor.set_index(6).await?;
    let a_cursor = a_text.index_reference("cursor");
    a_cursor.set_index(5).await?;
    eventually("each sees the other's cursor", || async {
        Ok(cursor_of(&a, &b_session, "cursor").await? == Some(6)
            && cursor_of(&b, &a_session, "cursor").await? == Some(5))
    })
    .await?;

    // Alice types in front without waiting for acknowledgements: with her changes in
    // flight and pending, bob's cursor stays on the "w" in her view after every keystroke.
    for n in 0..10 {
        a_text.insert(0, &n.to_string()).await?;
        let seen = cursor_of(&a, &b_session, "cursor").await?.expect("shared");
        assert_eq!(char_at(&text(&a).await?, seen), Some('w'), "after keystroke {n}");
    }

    // Both type at once: bob at the end, alice right at her cursor (which moves along).
    // (Bob does not type in front here: alice reads her cursor and inserts there in two
    // calls, and an insert of his applied between them would rightly put her letter early.)
    let typing_a = {
        let a_text = a_text.clone();
        let a_cursor = a_cursor.clone();
        tokio::spawn(async move {
            let mut last = None;
            for c in ['A', 'B', 'C', 'D', 'E'] {
                let Some(Some(ReferenceValue::Index(at))) = a_cursor.value().await? else {
                    anyhow::bail!("alice's cursor is gone");
                };
                last = Some(a_text.insert(at[0], &c.to_string()).await?);
            }
            Ok::<_, anyhow::Error>(last)
        })
    };
    let mut last_b = None;
    for c in ['x', 'y', 'z', 'u', 'v'] {
        // At the end of his view as it is when the change is made (a batch is built in
        // the client's own turn): reading the length first would race with alice's letters.
        let (element, id) = (b_text.element().clone(), b_text.id());
        let append = b.batch(move |batch| {
            let end = batch.document().text_len(id).unwrap_or_default();
            let insert = c.to_string();
            batch.change(&element, Edit::StringSplice { index: end, delete: 0, insert })
        });
        last_b = Some(append.await?);
    }
    let last_a = typing_a.await??;
    a.acknowledged(last_a.unwrap()).await?;
    b.acknowledged(last_b.unwrap()).await?;
    eventually("both converge", || async { Ok(text(&a).await? == text(&b).await?) }).await?;

    // In both views bob's cursor is on the "w" and alice's right after what she typed.
    let final_text = text(&a).await?;
    assert!(final_text.contains("helloABCDE w"), "{final_text}");
    assert_eq!(final_text.chars().filter(|c| "xyzuv".contains(*c)).count(), 5, "{final_text}");
    eventually("the cursors agree everywhere", || async {
        let own_a = match a_cursor.value().await? {
            Some(Some(ReferenceValue::Index(at))) => at[0],
            other => anyhow::bail!("alice's cursor: {other:?}"),
        };
        let seen_b = cursor_of(&a, &b_session, "cursor").await;
        let seen_a = cursor_of(&b, &a_session, "cursor").await;
        Ok(seen_b?.is_some_and(|i| char_at(&final_text, i) == Some('w'))
            && seen_a?.is_some_and(|i| i == own_a)
            && char_at(&final_text, own_a.saturating_sub(1)) == Some('E'))
    })
    .await?;

    // A late joiner sees both cursors where their owners hold them.
    let carol = connected(&server, dir.path(), "carol").await?;
    let c = carol.models().open(&model).await?;
    let own_b = match b_cursor.value().await? {
        Some(Some(ReferenceValue::Index(at))) => at[0],
        other => anyhow::bail!("bob's cursor: {other:?}"),
    };
    let own_a = match a_cursor.value().await? {
        Some(Some(ReferenceValue::Index(at))) => at[0],
        other => anyhow::bail!("alice's cursor: {other:?}"),
    };
    eventually("carol sees the current cursors", || async {
        Ok(cursor_of(&c, &b_session, "cursor").await? == Some(own_b)
            && cursor_of(&c, &a_session, "cursor").await? == Some(own_a))
    })
    .await?;
    assert_eq!(char_at(&text(&c).await?, own_b), Some('w'));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_element_ends_its_references_and_invalid_ones_are_refused()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let model = id("page");
    let data = json!({ "text": "abc", "meta": { "title": "t", "tags": [] } });
    create_confirmed(&alice, std::slice::from_ref(&model), data).await?;
    let a = alice.models().open(&model).await?;
    let b = bob.models().open(&model).await?;
    let b_session = session(&b).await?;

    // Invalid references are refused here with a typed error, and change nothing.
    let b_text = b.root().get("text").await?.unwrap().as_string()?;
    let cursor = b_text.index_reference("cursor");
    match cursor.set_index(4).await {
        Err(ClientError::Engine(EngineError::InvalidReference(ReferenceError::OutOfRange {
            index: 4,
            len: 3,
        }))) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
    assert_eq!(cursor.value().await?, None);
    let wrong = cursor.set(ReferenceValue::Property(vec!["x".into()])).await;
    assert!(matches!(wrong, Err(ClientError::InvalidValue(_))), "{wrong:?}");

    // Bob highlights a property and an element, and puts his cursor in the text.
    let meta = b.root().get("meta").await?.unwrap();
    let property = meta.as_object()?.property_reference("focus");
    property.set(ReferenceValue::Property(vec!["title".into()])).await?;
    let elements = b.element_reference("selected");
    elements.set(ReferenceValue::Element(vec![meta.id(), b_text.id()])).await?;
    cursor.set_index(2).await?;
    eventually("alice sees bob's references", || async {
        let on_meta = a.root().get("meta").await?.unwrap().reference(&b_session, "focus").await?;
        Ok(cursor_of(&a, &b_session, "cursor").await? == Some(2)
            && on_meta == Some(Some(ReferenceValue::Property(vec!["title".into()])))
            && a.reference(&b_session, "selected").await?
                == Some(Some(ReferenceValue::Element(vec![meta.id(), b_text.id()]))))
    })
    .await?;

    // Alice removes the text: bob's cursor ends with it, everywhere; the element
    // reference keeps what still exists.
    let removed = a.root().remove("text").await?;
    a.acknowledged(removed).await?;
    eventually("the cursor is gone", || async {
        let seen = a.references().await?;
        Ok(cursor.value().await?.is_none()
            && !seen.iter().any(|r| r.reference.key == "cursor")
            && a.reference(&b_session, "selected").await?
                == Some(Some(ReferenceValue::Element(vec![meta.id()]))))
    })
    .await?;
    // Ids from references lead back to elements while they exist.
    assert!(a.element(b_text.id()).await?.is_none(), "the removed text has no element");
    let found = a.element(meta.id()).await?.expect("meta is still there");
    assert_eq!(found.json().await?, json!({ "title": "t", "tags": [] }));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collaborators_are_listed_and_events_name_the_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let model = id("minutes");
    create_confirmed(&alice, std::slice::from_ref(&model), json!({ "text": "" })).await?;
    let a = alice.models().open(&model).await?;
    let mut a_events = a.events();
    let b = bob.models().open(&model).await?;
    let b_session = session(&b).await?;
    eventually("alice lists bob", || async {
        let listed = a.collaborators().await?;
        Ok(listed.len() == 1 && listed[0].session == b_session && listed[0].user.0 == "bob")
    })
    .await?;
    // Bob lists alice: from his open's answer, or from her opened push when her open reached
    // the server after his (opening returns before the server has it), which may land after
    // alice already lists him.
    eventually("bob lists alice", || async {
        let listed = b.collaborators().await?;
        Ok(listed.iter().map(|c| c.user.0.as_str()).collect::<Vec<_>>() == ["alice"])
    })
    .await?;

    // What bob does reaches alice naming him.
    let b_text = b.root().get("text").await?.unwrap().as_string()?;
    b_text.insert(0, "hi").await?;
    b_text.index_reference("cursor").set_index(2).await?;
    let (mut changed, mut referenced) = (None, None);
    while changed.is_none() || referenced.is_none() {
        match tokio::time::timeout(std::time::Duration::from_secs(20), a_events.next()).await? {
            Some(ModelEvent::Changed { author: Some(_), user, .. }) => changed = Some(user),
            Some(ModelEvent::RemoteReference { user, .. }) => referenced = Some(user),
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    let bob_id = Some(UserId("bob".into()));
    assert_eq!((changed.unwrap(), referenced.unwrap()), (bob_id.clone(), bob_id));

    // Bob leaves (his last handle goes): alice hears it and no longer lists him, nor his
    // cursor.
    drop(b_text);
    b.close();
    eventually("bob is gone", || async {
        Ok(a.collaborators().await?.is_empty() && a.references().await?.is_empty())
    })
    .await?;

    // Bob opens it again while alice surely has it open at the server (she heard him leave):
    // she hears him open it, by user and session.
    let _b = bob.models().open(&model).await?;
    let mut closed = false;
    let opened = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), a_events.next()).await? {
            Some(ModelEvent::CollaboratorClosed { session, .. }) if session == b_session => {
                closed = true
            }
            Some(ModelEvent::CollaboratorOpened(collaborator)) if closed => break collaborator,
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    };
    assert_eq!((opened.session, opened.user), (b_session, UserId("bob".into())));
    assert!(opened.since.0 > 0, "{:?}", opened.since);
    server.stop().await?;
    Ok(())
}
