//! Shared by the protocol tests: proptest strategies for every message (and for the
//! concord-ot values and operations they carry), and a few fixed sample messages.

// Each test binary uses a different part of this module, and `pub` here means "for the
// test files that include it".
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use concord_ot::{
    DiscreteOperation, Document, ElementId, IndexRange, Operation, OperationKind, ReferenceValue,
    ReplicaId, Value, ValueData,
};
use concord_protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// concord-ot types

pub fn element_id() -> impl Strategy<Value = ElementId> {
    prop_oneof![
        (0u64..4, 0u64..100).prop_map(|(r, c)| ElementId::new(r, c)),
        (any::<u64>(), any::<u64>()).prop_map(|(r, c)| ElementId::new(r, c)),
    ]
}

/// Finite numbers only: a document rejects the others, and NaN is not equal to itself.
pub fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |n| n.is_finite()),
        Just(0.0),
        Just(-1.5),
        (-1000i64..1000).prop_map(|n| n as f64),
    ]
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z]{0,6}"]
}

fn leaf_data() -> impl Strategy<Value = ValueData> {
    prop_oneof![
        text().prop_map(ValueData::String),
        number().prop_map(ValueData::Number),
        any::<bool>().prop_map(ValueData::Boolean),
        Just(ValueData::Null),
        any::<i64>().prop_map(ValueData::Date),
    ]
}

/// A value tree with arbitrary (possibly repeated) ids: what an operation may carry.
pub fn value() -> impl Strategy<Value = Value> {
    let leaf = (element_id(), leaf_data()).prop_map(|(id, data)| Value::new(id, data));
    leaf.prop_recursive(4, 24, 4, |inner| {
        (
            element_id(),
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(ValueData::Array),
                btree_map(text(), inner, 0..4).prop_map(ValueData::Object),
            ],
        )
            .prop_map(|(id, data)| Value::new(id, data))
    })
}

/// Gives every node of `value` a fresh id, so that it is valid in a document.
fn renumber(value: &mut Value, replica: u64, next: &mut u64) {
    value.id = ElementId::new(replica, *next);
    *next += 1;
    match &mut value.data {
        ValueData::Object(children) => {
            children.values_mut().for_each(|c| renumber(c, replica, next))
        }
        ValueData::Array(children) => children.iter_mut().for_each(|c| renumber(c, replica, next)),
        _ => {}
    }
}

/// A valid document: an object root, unique ids, finite numbers.
pub fn document() -> impl Strategy<Value = Document> {
    (btree_map(text(), value(), 0..4), 0u64..3).prop_map(|(entries, replica)| {
        let mut root = Value::new(ElementId::new(0, 0), ValueData::Object(entries));
        renumber(&mut root, replica, &mut 0);
        Document::new(root).expect("renumbered values are valid documents")
    })
}

pub fn operation_kind() -> impl Strategy<Value = OperationKind> {
    use OperationKind::*;
    prop_oneof![
        (any::<usize>(), 0usize..10, text()).prop_map(|(index, delete_count, insert)| {
            StringSplice { index, delete_count, insert }
        }),
        text().prop_map(|value| StringSet { value }),
        (0usize..100, value()).prop_map(|(index, value)| ArrayInsert { index, value }),
        any::<usize>().prop_map(|index| ArrayRemove { index }),
        (0usize..100, value()).prop_map(|(index, value)| ArrayReplace { index, value }),
        (any::<usize>(), any::<usize>()).prop_map(|(from, to)| ArrayMove { from, to }),
        vec(value(), 0..3).prop_map(|values| ArraySet { values }),
        (text(), value()).prop_map(|(key, value)| ObjectAddProperty { key, value }),
        (text(), value()).prop_map(|(key, value)| ObjectSetProperty { key, value }),
        text().prop_map(|key| ObjectRemoveProperty { key }),
        btree_map(text(), value(), 0..3).prop_map(|values| ObjectSet { values }),
        number().prop_map(|delta| NumberDelta { delta }),
        number().prop_map(|value| NumberSet { value }),
        any::<bool>().prop_map(|value| BooleanSet { value }),
        any::<i64>().prop_map(|value| DateSet { value }),
    ]
}

pub fn discrete_operation() -> impl Strategy<Value = DiscreteOperation> {
    (element_id(), any::<bool>(), operation_kind())
        .prop_map(|(target, noop, kind)| DiscreteOperation { target, noop, kind })
}

pub fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        discrete_operation().prop_map(Operation::Discrete),
        vec(discrete_operation(), 0..4).prop_map(Operation::Compound),
    ]
}

pub fn reference_value() -> impl Strategy<Value = ReferenceValue> {
    prop_oneof![
        vec(any::<usize>(), 0..4).prop_map(ReferenceValue::Index),
        vec(
            (any::<usize>(), any::<usize>()).prop_map(|(start, end)| IndexRange { start, end }),
            0..4
        )
        .prop_map(ReferenceValue::Range),
        vec(text(), 0..4).prop_map(ReferenceValue::Property),
        vec(element_id(), 0..4).prop_map(ReferenceValue::Element),
    ]
}

// ---------------------------------------------------------------------------------------
// Protocol scalars and payloads

pub fn model_id() -> impl Strategy<Value = ModelId> {
    prop_oneof!["[a-z0-9-]{1,36}", "\\PC{1,20}"].prop_map(|s| ModelId::new(s).unwrap())
}

pub fn collection_id() -> impl Strategy<Value = CollectionId> {
    "[a-z]{1,12}".prop_map(|s| CollectionId::new(s).unwrap())
}

pub fn session_id() -> impl Strategy<Value = SessionId> {
    text().prop_map(SessionId)
}

pub fn user_id() -> impl Strategy<Value = UserId> {
    text().prop_map(UserId)
}

pub fn request_id() -> impl Strategy<Value = RequestId> {
    any::<u64>().prop_map(RequestId)
}

pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    any::<i64>().prop_map(Timestamp)
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![proptest::sample::select(ErrorCode::ALL), any::<u16>().prop_map(ErrorCode),]
}

pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (error_code(), text(), btree_map(text(), text(), 0..3))
        .prop_map(|(code, message, details)| ErrorReply { code, message, details })
}

pub fn permissions() -> impl Strategy<Value = Permissions> {
    any::<[bool; 4]>().prop_map(|[read, write, remove, manage]| Permissions {
        read,
        write,
        remove,
        manage,
    })
}

pub fn permission_grants() -> impl Strategy<Value = PermissionGrants> {
    (any::<bool>(), permissions(), btree_map(user_id(), permissions(), 0..3)).prop_map(
        |(override_collection, world, users)| PermissionGrants {
            override_collection,
            world,
            users,
        },
    )
}

pub fn snapshot() -> impl Strategy<Value = ModelSnapshot> {
    (collection_id(), any::<u64>(), timestamp(), timestamp(), document()).prop_map(
        |(collection, version, created_at, modified_at, data)| ModelSnapshot {
            collection,
            version,
            created_at,
            modified_at,
            data,
        },
    )
}

pub fn committed_operation() -> impl Strategy<Value = CommittedOperation> {
    (any::<u64>(), session_id(), timestamp(), operation()).prop_map(
        |(version, author, timestamp, operation)| CommittedOperation {
            version,
            author,
            timestamp,
            operation,
        },
    )
}

pub fn author() -> impl Strategy<Value = Author> {
    (session_id(), user_id()).prop_map(|(session, user)| Author { session, user })
}

pub fn collaborator() -> impl Strategy<Value = Collaborator> {
    (session_id(), user_id(), timestamp()).prop_map(|(session, user, since)| Collaborator {
        session,
        user,
        since,
    })
}

pub fn reference_key() -> impl Strategy<Value = ReferenceKey> {
    (option::of(element_id()), text()).prop_map(|(element, key)| ReferenceKey { element, key })
}

pub fn reference_change() -> impl Strategy<Value = ReferenceChange> {
    prop_oneof![
        (reference_key(), option::of(reference_value()))
            .prop_map(|(reference, value)| ReferenceChange::Share { reference, value }),
        (reference_key(), reference_value(), any::<u64>()).prop_map(
            |(reference, value, version)| ReferenceChange::Set { reference, value, version }
        ),
        reference_key().prop_map(|reference| ReferenceChange::Clear { reference }),
        reference_key().prop_map(|reference| ReferenceChange::Unshare { reference }),
    ]
}

pub fn shared_reference() -> impl Strategy<Value = SharedReference> {
    (session_id(), reference_key(), option::of(reference_value()))
        .prop_map(|(session, reference, value)| SharedReference { session, reference, value })
}

pub fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        text().prop_map(Auth::Jwt),
        option::of(text()).prop_map(|display_name| Auth::Anonymous { display_name }),
        text().prop_map(|t| Auth::Reconnect(ReconnectToken(t))),
    ]
}

pub fn server_limits() -> impl Strategy<Value = ServerLimits> {
    (any::<[u64; 4]>(), any::<[u64; 3]>()).prop_map(|(a, b)| ServerLimits {
        max_frame_bytes: a[0],
        max_message_bytes: a[1],
        max_open_models: a[2],
        max_subscriptions: a[3],
        max_shared_references: b[0],
        max_reference_bytes: b[1],
        max_model_bytes: b[2],
    })
}

pub fn session() -> impl Strategy<Value = Session> {
    (session_id(), user_id(), option::of(text()), any::<bool>(), text(), text(), server_limits())
        .prop_map(|(session, id, display_name, anonymous, token, server_version, limits)| Session {
            session,
            user: User { id, display_name, anonymous },
            reconnect_token: ReconnectToken(token),
            server_version,
            limits,
        })
}

pub fn offline_update() -> impl Strategy<Value = OfflineUpdate> {
    prop_oneof![
        (vec(committed_operation(), 0..3), any::<bool>())
            .prop_map(|(operations, more)| OfflineUpdate::Operations { operations, more }),
        (snapshot(), permissions()).prop_map(|(snapshot, permissions)| {
            OfflineUpdate::Snapshot { snapshot, permissions }
        }),
        Just(OfflineUpdate::Deleted),
        Just(OfflineUpdate::PermissionRevoked),
    ]
}

// ---------------------------------------------------------------------------------------
// Messages

pub fn client_request() -> impl Strategy<Value = ClientRequest> {
    use ClientRequest::*;
    prop_oneof![
        (any::<u8>(), text(), text(), auth()).prop_map(
            |(protocol_version, name, version, auth)| {
                Handshake { protocol_version, client: ClientInfo { name, version }, auth }
            }
        ),
        (model_id(), any::<bool>())
            .prop_map(|(model, auto_create)| OpenModel { model, auto_create }),
        model_id().prop_map(|model| CloseModel { model }),
        (
            model_id(),
            collection_id(),
            document(),
            any::<[u8; 16]>(),
            option::of(permission_grants())
        )
            .prop_map(|(model, collection, data, nonce, permissions)| CreateModel {
                model,
                collection,
                data,
                nonce: CreationNonce(nonce),
                permissions,
            }),
        (model_id(), option::of(any::<[u8; 16]>()))
            .prop_map(|(model, nonce)| DeleteModel { model, creation: nonce.map(CreationNonce) }),
        (model_id(), any::<u64>(), option::of((any::<u64>(), any::<u64>()))).prop_map(
            |(model, known_version, in_flight)| Resync {
                model,
                known_version,
                in_flight: in_flight
                    .map(|(replica, seq)| InFlight { replica: ReplicaId(replica), seq }),
            }
        ),
        (
            model_id(),
            option::of((
                collection_id(),
                document(),
                any::<[u8; 16]>(),
                option::of(permission_grants())
            )),
            any::<u64>(),
            option::of((any::<u64>(), any::<u64>())),
            option::of((any::<u64>(), any::<[u64; 3]>(), operation())),
        )
            .prop_map(|(model, create, known_version, in_flight, submission)| Sync {
                model,
                create: create.map(|(collection, data, nonce, permissions)| Box::new(NewModel {
                    collection,
                    data,
                    nonce: CreationNonce(nonce),
                    permissions,
                })),
                known_version,
                in_flight: in_flight
                    .map(|(replica, seq)| InFlight { replica: ReplicaId(replica), seq }),
                submission: submission.map(
                    |(replica, [first_seq, seq, base_version], operation)| {
                        Box::new(SyncSubmission {
                            replica: ReplicaId(replica),
                            first_seq,
                            seq,
                            base_version,
                            operation,
                        })
                    }
                ),
            }),
        (model_id(), any::<bool>()).prop_map(|(model, open)| ResyncComplete { model, open }),
        (vec((model_id(), option::of(any::<u64>())), 0..3), vec(model_id(), 0..3), any::<bool>())
            .prop_map(|(subscribe, unsubscribe, replace)| SubscribeOffline {
                subscribe: subscribe
                    .into_iter()
                    .map(|(model, version)| KnownModel { model, version })
                    .collect(),
                unsubscribe,
                replace,
            }),
        model_id().prop_map(|model| GetPermissions { model }),
        (model_id(), permission_grants())
            .prop_map(|(model, grants)| SetPermissions { model, grants }),
        Just(Ping),
        presence_request().prop_map(Presence),
        activity_request().prop_map(Activity),
        model_id().prop_map(|model| HistoryOpen { model }),
        (model_id(), history_start(), any::<bool>(), any::<u32>(), any::<u32>()).prop_map(
            |(model, start, checkpoint, max_operations, max_bytes)| HistoryFetch {
                model,
                start,
                checkpoint,
                max_operations,
                max_bytes,
            }
        ),
        text().prop_map(|query| Query { query }),
        identity_request().prop_map(Identity),
    ]
}

pub fn identity_request() -> impl Strategy<Value = IdentityRequest> {
    prop_oneof![
        user_id().prop_map(|user| IdentityRequest::User { user }),
        vec(user_id(), 0..3).prop_map(|users| IdentityRequest::Users { users }),
        (text(), any::<u32>())
            .prop_map(|(prefix, limit)| IdentityRequest::Search { prefix, limit }),
    ]
}

pub fn identity() -> impl Strategy<Value = concord_protocol::Identity> {
    (user_id(), option::of(text()), option::of(text())).prop_map(|(user, display_name, email)| {
        concord_protocol::Identity { user, display_name, email }
    })
}

pub fn activity_id() -> impl Strategy<Value = ActivityId> {
    (text(), text()).prop_map(|(kind, id)| ActivityId { kind, id })
}

pub fn activity_request() -> impl Strategy<Value = ActivityRequest> {
    prop_oneof![
        (activity_id(), presence_state())
            .prop_map(|(activity, state)| ActivityRequest::Join { activity, state }),
        activity_id().prop_map(|activity| ActivityRequest::Leave { activity }),
        (activity_id(), presence_state())
            .prop_map(|(activity, state)| ActivityRequest::SetState { activity, state }),
        (activity_id(), option::of(vec(text(), 0..3)))
            .prop_map(|(activity, keys)| ActivityRequest::RemoveState { activity, keys }),
        (activity_id(), session_id())
            .prop_map(|(activity, session)| ActivityRequest::Remove { activity, session }),
    ]
}

pub fn participant() -> impl Strategy<Value = Participant> {
    (session_id(), user_id(), presence_state()).prop_map(|(session, user, state)| Participant {
        session,
        user,
        state,
    })
}

pub fn activity_change() -> impl Strategy<Value = ActivityChange> {
    prop_oneof![
        participant().prop_map(ActivityChange::Joined),
        (session_id(), user_id())
            .prop_map(|(session, user)| ActivityChange::Left { session, user }),
        (session_id(), user_id(), presence_state()).prop_map(|(session, user, state)| {
            ActivityChange::StateChanged { session, user, state }
        }),
    ]
}

pub fn presence_state() -> impl Strategy<Value = PresenceState> {
    btree_map(text(), text(), 0..3)
}

pub fn presence_request() -> impl Strategy<Value = PresenceRequest> {
    prop_oneof![
        presence_state().prop_map(|state| PresenceRequest::SetState { state }),
        option::of(vec(text(), 0..3)).prop_map(|keys| PresenceRequest::RemoveState { keys }),
        vec(user_id(), 0..3).prop_map(|users| PresenceRequest::Subscribe { users }),
        vec(user_id(), 0..3).prop_map(|users| PresenceRequest::Unsubscribe { users }),
    ]
}

pub fn user_presence() -> impl Strategy<Value = UserPresence> {
    (user_id(), any::<bool>(), presence_state()).prop_map(|(user, available, state)| UserPresence {
        user,
        available,
        state,
    })
}

pub fn history_start() -> impl Strategy<Value = HistoryStart> {
    prop_oneof![
        any::<u64>().prop_map(HistoryStart::Version),
        timestamp().prop_map(HistoryStart::Time),
    ]
}

pub fn history_operation() -> impl Strategy<Value = HistoryOperation> {
    (committed_operation(), option::of(user_id()))
        .prop_map(|(operation, user)| HistoryOperation { operation, user })
}

pub fn client_response() -> impl Strategy<Value = ClientResponse> {
    prop_oneof![
        (collection_id(), document(), option::of(permission_grants())).prop_map(
            |(collection, data, permissions)| ClientResponse::AutoCreate {
                collection,
                data,
                permissions,
            }
        ),
        Just(ClientResponse::Pong),
    ]
}

pub fn client_notice() -> impl Strategy<Value = ClientNotice> {
    prop_oneof![
        (model_id(), any::<u64>(), any::<[u64; 2]>(), any::<u64>(), operation()).prop_map(
            |(model, replica, [first_seq, seq], base_version, operation)| {
                ClientNotice::Submit {
                    model,
                    replica: ReplicaId(replica),
                    first_seq,
                    seq,
                    base_version,
                    operation,
                }
            }
        ),
        (model_id(), reference_change())
            .prop_map(|(model, change)| ClientNotice::Reference { model, change }),
    ]
}

pub fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (request_id(), client_request())
            .prop_map(|(id, request)| ClientMessage::Request { id, request }),
        (request_id(), client_response())
            .prop_map(|(to, response)| ClientMessage::Response { to, response }),
        (option::of(request_id()), error_reply())
            .prop_map(|(to, error)| ClientMessage::Error { to, error }),
        client_notice().prop_map(ClientMessage::Notice),
    ]
}

pub fn server_request() -> impl Strategy<Value = ServerRequest> {
    prop_oneof![
        model_id().prop_map(|model| ServerRequest::AutoCreate { model }),
        Just(ServerRequest::Ping),
    ]
}

pub fn server_response() -> impl Strategy<Value = ServerResponse> {
    use ServerResponse::*;
    prop_oneof![
        session().prop_map(|s| Handshake(HandshakeResult::Accepted(s))),
        (error_code(), text(), any::<bool>()).prop_map(|(code, message, retry_allowed)| {
            Handshake(HandshakeResult::Rejected(HandshakeRejection {
                code,
                message,
                retry_allowed,
            }))
        }),
        (
            model_id(),
            snapshot(),
            permissions(),
            vec(collaborator(), 0..3),
            vec(shared_reference(), 0..3)
        )
            .prop_map(|(model, snapshot, permissions, collaborators, references)| {
                ModelOpened(OpenedModel { model, snapshot, permissions, collaborators, references })
            }),
        (model_id(), any::<u64>(), timestamp()).prop_map(|(model, version, created_at)| {
            ModelCreated { model, version, created_at }
        }),
        (
            model_id(),
            any::<u64>(),
            option::of((any::<u64>(), timestamp())),
            permissions(),
            timestamp()
        )
            .prop_map(|(model, current_version, committed, permissions, created_at)| {
                ResyncStarted {
                    model,
                    current_version,
                    in_flight_committed: committed
                        .map(|(version, timestamp)| Commit { version, timestamp }),
                    permissions,
                    created_at,
                }
            }),
        (model_id(), vec(collaborator(), 0..3), vec(shared_reference(), 0..3)).prop_map(
            |(model, collaborators, references)| ResyncCompleted {
                model,
                collaborators,
                references,
            }
        ),
        (model_id(), permission_grants()).prop_map(|(model, grants)| Permissions { model, grants }),
        Just(Pong),
        Just(Done),
        vec(user_presence(), 0..3).prop_map(Presence),
        (activity_id(), vec(participant(), 0..3))
            .prop_map(|(activity, participants)| ActivityJoined { activity, participants }),
        (
            model_id(),
            collection_id(),
            timestamp(),
            any::<u64>(),
            any::<u64>(),
            timestamp(),
            any::<u64>()
        )
            .prop_map(
                |(model, collection, created_at, min_version, max_version, modified_at, every)| {
                    HistoryOpened(HistoryInfo {
                        model,
                        collection,
                        created_at,
                        min_version,
                        max_version,
                        modified_at,
                        checkpoint_every: every,
                    })
                }
            ),
        (
            model_id(),
            any::<u64>(),
            option::of(snapshot()),
            vec(history_operation(), 0..3),
            any::<u64>()
        )
            .prop_map(|(model, start_version, checkpoint, operations, max_version)| {
                HistoryPage(concord_protocol::HistoryPage {
                    model,
                    start_version,
                    checkpoint,
                    operations,
                    max_version,
                })
            }),
        (vec(query_row(), 0..3), any::<u64>(), any::<u64>(), option::of(text())).prop_map(
            |(rows, total, scanned, index)| QueryResult(QueryPage { rows, total, scanned, index })
        ),
        vec(identity(), 0..3).prop_map(Identities),
    ]
}

pub fn query_row() -> impl Strategy<Value = QueryRow> {
    let data = prop_oneof![
        value().prop_map(QueryData::All),
        vec(option::of(value()), 0..3).prop_map(QueryData::Paths),
    ];
    (model_id(), collection_id(), any::<u64>(), timestamp(), timestamp(), data).prop_map(
        |(model, collection, version, created_at, modified_at, data)| QueryRow {
            model,
            collection,
            version,
            created_at,
            modified_at,
            data,
        },
    )
}

pub fn server_push() -> impl Strategy<Value = ServerPush> {
    use ServerPush::*;
    prop_oneof![
        (model_id(), any::<u64>(), any::<u64>(), timestamp())
            .prop_map(|(model, seq, version, timestamp)| Ack { model, seq, version, timestamp }),
        (model_id(), any::<u64>(), error_reply()).prop_map(|(model, seq, error)| SubmitRejected {
            model,
            seq,
            error
        }),
        (model_id(), committed_operation())
            .prop_map(|(model, operation)| RemoteOperation { model, operation }),
        (model_id(), vec(committed_operation(), 0..3), vec(author(), 0..3), any::<bool>())
            .prop_map(|(model, operations, authors, last)| ResyncPage {
                model,
                operations,
                authors,
                last
            }),
        (model_id(), offline_update()).prop_map(|(model, update)| OfflineUpdate { model, update }),
        (model_id(), permissions())
            .prop_map(|(model, permissions)| PermissionsChanged { model, permissions }),
        (model_id(), collaborator())
            .prop_map(|(model, collaborator)| CollaboratorOpened { model, collaborator }),
        (model_id(), session_id(), user_id())
            .prop_map(|(model, session, user)| CollaboratorClosed { model, session, user }),
        (model_id(), session_id(), reference_change())
            .prop_map(|(model, session, change)| { RemoteReference { model, session, change } }),
        (model_id(), error_code(), text())
            .prop_map(|(model, code, message)| { ModelForceClosed { model, code, message } }),
        (error_code(), text()).prop_map(|(code, message)| SessionClosing { code, message }),
        user_presence().prop_map(Presence),
        (activity_id(), activity_change())
            .prop_map(|(activity, change)| Activity { activity, change }),
        (model_id(), reference_key(), error_reply())
            .prop_map(|(model, reference, error)| ReferenceRefused { model, reference, error }),
    ]
}

pub fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (request_id(), server_request())
            .prop_map(|(id, request)| ServerMessage::Request { id, request }),
        (request_id(), server_response())
            .prop_map(|(to, response)| ServerMessage::Response { to, response }),
        (option::of(request_id()), error_reply())
            .prop_map(|(to, error)| ServerMessage::Error { to, error }),
        server_push().prop_map(ServerMessage::Push),
    ]
}

// ---------------------------------------------------------------------------------------
// Variant names, to check that the strategies reach every message. The matches are
// exhaustive, so a new variant does not compile until it is named here; then add it to the
// ALL list beside the function, and to the strategy.

pub const CLIENT_VARIANTS: &[&str] = &[
    "Request::Handshake",
    "Request::OpenModel",
    "Request::CloseModel",
    "Request::CreateModel",
    "Request::DeleteModel",
    "Request::Resync",
    "Request::Sync",
    "Request::ResyncComplete",
    "Request::SubscribeOffline",
    "Request::GetPermissions",
    "Request::SetPermissions",
    "Request::Ping",
    "Request::Presence::SetState",
    "Request::Presence::RemoveState",
    "Request::Presence::Subscribe",
    "Request::Presence::Unsubscribe",
    "Request::Activity::Join",
    "Request::Activity::Leave",
    "Request::Activity::SetState",
    "Request::Activity::RemoveState",
    "Request::Activity::Remove",
    "Request::HistoryOpen",
    "Request::HistoryFetch",
    "Request::Query",
    "Request::Identity::User",
    "Request::Identity::Users",
    "Request::Identity::Search",
    "Response::AutoCreate",
    "Response::Pong",
    "Error",
    "Notice::Submit",
    "Notice::Reference",
];

pub fn client_variant(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Request { request, .. } => match request {
            ClientRequest::Handshake { .. } => "Request::Handshake",
            ClientRequest::OpenModel { .. } => "Request::OpenModel",
            ClientRequest::CloseModel { .. } => "Request::CloseModel",
            ClientRequest::CreateModel { .. } => "Request::CreateModel",
            ClientRequest::DeleteModel { .. } => "Request::DeleteModel",
            ClientRequest::Resync { .. } => "Request::Resync",
            ClientRequest::Sync { .. } => "Request::Sync",
            ClientRequest::ResyncComplete { .. } => "Request::ResyncComplete",
            ClientRequest::SubscribeOffline { .. } => "Request::SubscribeOffline",
            ClientRequest::GetPermissions { .. } => "Request::GetPermissions",
            ClientRequest::SetPermissions { .. } => "Request::SetPermissions",
            ClientRequest::Ping => "Request::Ping",
            ClientRequest::Presence(presence) => match presence {
                PresenceRequest::SetState { .. } => "Request::Presence::SetState",
                PresenceRequest::RemoveState { .. } => "Request::Presence::RemoveState",
                PresenceRequest::Subscribe { .. } => "Request::Presence::Subscribe",
                PresenceRequest::Unsubscribe { .. } => "Request::Presence::Unsubscribe",
            },
            ClientRequest::Activity(activity) => match activity {
                ActivityRequest::Join { .. } => "Request::Activity::Join",
                ActivityRequest::Leave { .. } => "Request::Activity::Leave",
                ActivityRequest::SetState { .. } => "Request::Activity::SetState",
                ActivityRequest::RemoveState { .. } => "Request::Activity::RemoveState",
                ActivityRequest::Remove { .. } => "Request::Activity::Remove",
            },
            ClientRequest::HistoryOpen { .. } => "Request::HistoryOpen",
            ClientRequest::HistoryFetch { .. } => "Request::HistoryFetch",
            ClientRequest::Query { .. } => "Request::Query",
            ClientRequest::Identity(request) => match request {
                IdentityRequest::User { .. } => "Request::Identity::User",
                IdentityRequest::Users { .. } => "Request::Identity::Users",
                IdentityRequest::Search { .. } => "Request::Identity::Search",
            },
        },
        ClientMessage::Response { response, .. } => match response {
            ClientResponse::AutoCreate { .. } => "Response::AutoCreate",
            ClientResponse::Pong => "Response::Pong",
        },
        ClientMessage::Error { .. } => "Error",
        ClientMessage::Notice(notice) => match notice {
            ClientNotice::Submit { .. } => "Notice::Submit",
            ClientNotice::Reference { .. } => "Notice::Reference",
        },
    }
}

pub const SERVER_VARIANTS: &[&str] = &[
    "Request::AutoCreate",
    "Request::Ping",
    "Response::Handshake::Accepted",
    "Response::Handshake::Rejected",
    "Response::ModelOpened",
    "Response::ModelCreated",
    "Response::ResyncStarted",
    "Response::ResyncCompleted",
    "Response::Permissions",
    "Response::Pong",
    "Response::Done",
    "Response::Presence",
    "Response::ActivityJoined",
    "Response::HistoryOpened",
    "Response::HistoryPage",
    "Response::QueryResult",
    "Response::Identities",
    "Error",
    "Push::Ack",
    "Push::SubmitRejected",
    "Push::RemoteOperation",
    "Push::ResyncPage",
    "Push::OfflineUpdate::Operations",
    "Push::OfflineUpdate::Snapshot",
    "Push::OfflineUpdate::Deleted",
    "Push::OfflineUpdate::PermissionRevoked",
    "Push::PermissionsChanged",
    "Push::CollaboratorOpened",
    "Push::CollaboratorClosed",
    "Push::RemoteReference",
    "Push::ModelForceClosed",
    "Push::SessionClosing",
    "Push::Presence",
    "Push::Activity::Joined",
    "Push::Activity::Left",
    "Push::Activity::StateChanged",
    "Push::ReferenceRefused",
];

pub fn server_variant(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Request { request, .. } => match request {
            ServerRequest::AutoCreate { .. } => "Request::AutoCreate",
            ServerRequest::Ping => "Request::Ping",
        },
        ServerMessage::Response { response, .. } => match response {
            ServerResponse::Handshake(HandshakeResult::Accepted(_)) => {
                "Response::Handshake::Accepted"
            }
            ServerResponse::Handshake(HandshakeResult::Rejected(_)) => {
                "Response::Handshake::Rejected"
            }
            ServerResponse::ModelOpened(_) => "Response::ModelOpened",
            ServerResponse::ModelCreated { .. } => "Response::ModelCreated",
            ServerResponse::ResyncStarted { .. } => "Response::ResyncStarted",
            ServerResponse::ResyncCompleted { .. } => "Response::ResyncCompleted",
            ServerResponse::Permissions { .. } => "Response::Permissions",
            ServerResponse::Pong => "Response::Pong",
            ServerResponse::Done => "Response::Done",
            ServerResponse::Presence(_) => "Response::Presence",
            ServerResponse::ActivityJoined { .. } => "Response::ActivityJoined",
            ServerResponse::HistoryOpened(_) => "Response::HistoryOpened",
            ServerResponse::HistoryPage(_) => "Response::HistoryPage",
            ServerResponse::QueryResult(_) => "Response::QueryResult",
            ServerResponse::Identities(_) => "Response::Identities",
        },
        ServerMessage::Error { .. } => "Error",
        ServerMessage::Push(push) => match push {
            ServerPush::Ack { .. } => "Push::Ack",
            ServerPush::SubmitRejected { .. } => "Push::SubmitRejected",
            ServerPush::RemoteOperation { .. } => "Push::RemoteOperation",
            ServerPush::ResyncPage { .. } => "Push::ResyncPage",
            ServerPush::OfflineUpdate { update, .. } => match update {
                OfflineUpdate::Operations { .. } => "Push::OfflineUpdate::Operations",
                OfflineUpdate::Snapshot { .. } => "Push::OfflineUpdate::Snapshot",
                OfflineUpdate::Deleted => "Push::OfflineUpdate::Deleted",
                OfflineUpdate::PermissionRevoked => "Push::OfflineUpdate::PermissionRevoked",
            },
            ServerPush::PermissionsChanged { .. } => "Push::PermissionsChanged",
            ServerPush::CollaboratorOpened { .. } => "Push::CollaboratorOpened",
            ServerPush::CollaboratorClosed { .. } => "Push::CollaboratorClosed",
            ServerPush::RemoteReference { .. } => "Push::RemoteReference",
            ServerPush::ModelForceClosed { .. } => "Push::ModelForceClosed",
            ServerPush::SessionClosing { .. } => "Push::SessionClosing",
            ServerPush::Presence(_) => "Push::Presence",
            ServerPush::Activity { change, .. } => match change {
                ActivityChange::Joined(_) => "Push::Activity::Joined",
                ActivityChange::Left { .. } => "Push::Activity::Left",
                ActivityChange::StateChanged { .. } => "Push::Activity::StateChanged",
            },
            ServerPush::ReferenceRefused { .. } => "Push::ReferenceRefused",
        },
    }
}

// ---------------------------------------------------------------------------------------
// Fixed samples (the golden fixtures)

pub fn model() -> ModelId {
    ModelId::new("0190d1c2-7f6e-7cc3-a2f4-5d6e7f8a9b0c").unwrap()
}

/// `{"title": "Hi", "tags": ["a", 2.5], "done": false, "due": date}` with ids from replica 7.
pub fn sample_document() -> Document {
    let id = |c| ElementId::new(7, c);
    let mut root = BTreeMap::new();
    root.insert("title".to_string(), Value::new(id(1), ValueData::String("Hi".into())));
    root.insert(
        "tags".to_string(),
        Value::new(
            id(2),
            ValueData::Array(vec![
                Value::new(id(3), ValueData::String("a".into())),
                Value::new(id(4), ValueData::Number(2.5)),
            ]),
        ),
    );
    root.insert("done".to_string(), Value::new(id(5), ValueData::Boolean(false)));
    root.insert("due".to_string(), Value::new(id(6), ValueData::Date(1_767_225_600_000)));
    Document::new(Value::new(id(0), ValueData::Object(root))).unwrap()
}

pub fn sample_operation() -> Operation {
    Operation::Compound(vec![
        DiscreteOperation::new(
            ElementId::new(7, 1),
            OperationKind::StringSplice { index: 2, delete_count: 0, insert: " there".into() },
        ),
        DiscreteOperation::new(
            ElementId::new(7, 0),
            OperationKind::ObjectSetProperty {
                key: "owner".into(),
                value: Value::new(ElementId::new(9, 0), ValueData::Null),
            },
        ),
        DiscreteOperation::new(ElementId::new(7, 4), OperationKind::NumberDelta { delta: 1.0 })
            .into_noop(),
    ])
}

pub struct Golden {
    pub name: &'static str,
    pub frame: Sample,
}

pub enum Sample {
    Client(ClientMessage),
    Server(ServerMessage),
}

impl Sample {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Sample::Client(m) => encode(m).unwrap(),
            Sample::Server(m) => encode(m).unwrap(),
        }
    }

    /// Decodes `bytes` as this sample's kind and says whether it equals the sample.
    pub fn decode_matches(&self, bytes: &[u8]) -> Result<bool, DecodeError> {
        Ok(match self {
            Sample::Client(m) => decode::<ClientMessage>(bytes)? == *m,
            Sample::Server(m) => decode::<ServerMessage>(bytes)? == *m,
        })
    }

    /// Decodes `bytes` as this sample's kind, discarding the message.
    pub fn decode_as_own_kind(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        match self {
            Sample::Client(_) => decode::<ClientMessage>(bytes).map(drop),
            Sample::Server(_) => decode::<ServerMessage>(bytes).map(drop),
        }
    }

    /// Decodes `bytes` as the other kind, discarding the message.
    pub fn decode_as_other_kind(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        match self {
            Sample::Client(_) => decode::<ServerMessage>(bytes).map(drop),
            Sample::Server(_) => decode::<ClientMessage>(bytes).map(drop),
        }
    }
}

/// A message sent in fragments (of `fragment_bytes`), and its committed name.
pub struct FragmentedGolden {
    pub name: &'static str,
    pub message: ServerMessage,
    pub fragment_bytes: usize,
}

/// The `ModelOpened` golden, in fragments of 64 bytes.
pub fn fragmented_golden() -> FragmentedGolden {
    let opened = goldens().into_iter().find(|g| g.name == "server_model_opened").unwrap();
    let Sample::Server(message) = opened.frame else { unreachable!("a server message") };
    FragmentedGolden { name: "server_model_opened_fragmented", message, fragment_bytes: 64 }
}

pub fn goldens() -> Vec<Golden> {
    let session = SessionId("s-42".into());
    vec![
        Golden {
            name: "client_handshake",
            frame: Sample::Client(ClientMessage::Request {
                id: RequestId(1),
                request: ClientRequest::Handshake {
                    protocol_version: PROTOCOL_VERSION,
                    client: ClientInfo { name: "concord-client".into(), version: "0.1.0".into() },
                    auth: Auth::Jwt("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
                },
            }),
        },
        Golden {
            name: "server_handshake_accepted",
            frame: Sample::Server(ServerMessage::Response {
                to: RequestId(1),
                response: ServerResponse::Handshake(HandshakeResult::Accepted(Session {
                    session: session.clone(),
                    user: User {
                        id: UserId("alice".into()),
                        display_name: Some("Alice".into()),
                        anonymous: false,
                    },
                    reconnect_token: ReconnectToken("rt-1".into()),
                    server_version: "0.1.0".into(),
                    limits: ServerLimits {
                        max_frame_bytes: 16 << 20,
                        max_message_bytes: 256 << 20,
                        max_open_models: 1_000,
                        max_subscriptions: 10_000,
                        max_shared_references: 256,
                        max_reference_bytes: 4_096,
                        max_model_bytes: 64 << 20,
                    },
                })),
            }),
        },
        Golden {
            name: "client_submit",
            frame: Sample::Client(ClientMessage::Notice(ClientNotice::Submit {
                model: model(),
                replica: ReplicaId(7),
                first_seq: 2,
                seq: 3,
                base_version: 12,
                operation: sample_operation(),
            })),
        },
        Golden {
            name: "server_ack",
            frame: Sample::Server(ServerMessage::Push(ServerPush::Ack {
                model: model(),
                seq: 3,
                version: 13,
                timestamp: Timestamp(1_767_225_600_123),
            })),
        },
        Golden {
            name: "server_remote_operation",
            frame: Sample::Server(ServerMessage::Push(ServerPush::RemoteOperation {
                model: model(),
                operation: CommittedOperation {
                    version: 14,
                    author: session.clone(),
                    timestamp: Timestamp(1_767_225_600_456),
                    operation: sample_operation(),
                },
            })),
        },
        Golden {
            name: "client_resync",
            frame: Sample::Client(ClientMessage::Request {
                id: RequestId(9),
                request: ClientRequest::Resync {
                    model: model(),
                    known_version: 12,
                    in_flight: Some(InFlight { replica: ReplicaId(7), seq: 3 }),
                },
            }),
        },
        Golden {
            name: "client_delete_own_creation",
            frame: Sample::Client(ClientMessage::Request {
                id: RequestId(11),
                request: ClientRequest::DeleteModel {
                    model: model(),
                    creation: Some(CreationNonce([5; 16])),
                },
            }),
        },
        Golden {
            name: "client_sync",
            frame: Sample::Client(ClientMessage::Request {
                id: RequestId(10),
                request: ClientRequest::Sync {
                    model: model(),
                    create: Some(Box::new(NewModel {
                        collection: CollectionId::new("notes").unwrap(),
                        data: sample_document(),
                        nonce: CreationNonce([5; 16]),
                        permissions: None,
                    })),
                    known_version: 0,
                    in_flight: None,
                    submission: Some(Box::new(SyncSubmission {
                        replica: ReplicaId(7),
                        first_seq: 1,
                        seq: 2,
                        base_version: 0,
                        operation: sample_operation(),
                    })),
                },
            }),
        },
        Golden {
            name: "server_model_opened",
            frame: Sample::Server(ServerMessage::Response {
                to: RequestId(2),
                response: ServerResponse::ModelOpened(OpenedModel {
                    model: model(),
                    snapshot: ModelSnapshot {
                        collection: CollectionId::new("notes").unwrap(),
                        version: 12,
                        created_at: Timestamp(1_767_225_000_000),
                        modified_at: Timestamp(1_767_225_600_000),
                        data: sample_document(),
                    },
                    permissions: Permissions {
                        read: true,
                        write: true,
                        remove: false,
                        manage: false,
                    },
                    collaborators: vec![Collaborator {
                        session: SessionId("s-7".into()),
                        user: UserId("bob".into()),
                        since: Timestamp(1_767_225_300_000),
                    }],
                    references: vec![SharedReference {
                        session: SessionId("s-7".into()),
                        reference: ReferenceKey {
                            element: Some(ElementId::new(7, 1)),
                            key: "cursor".into(),
                        },
                        value: Some(ReferenceValue::Index(vec![1])),
                    }],
                }),
            }),
        },
        Golden {
            name: "server_offline_snapshot",
            frame: Sample::Server(ServerMessage::Push(ServerPush::OfflineUpdate {
                model: model(),
                update: OfflineUpdate::Snapshot {
                    snapshot: ModelSnapshot {
                        collection: CollectionId::new("notes").unwrap(),
                        version: 12,
                        created_at: Timestamp(1_767_225_000_000),
                        modified_at: Timestamp(1_767_225_600_000),
                        data: sample_document(),
                    },
                    permissions: Permissions::ALL,
                },
            })),
        },
        Golden {
            name: "server_activity_state_changed",
            frame: Sample::Server(ServerMessage::Push(ServerPush::Activity {
                activity: ActivityId { kind: "viewing".into(), id: "page 12".into() },
                change: ActivityChange::StateChanged {
                    session: SessionId("s-7".into()),
                    user: UserId("bob".into()),
                    state: [("cursor".to_owned(), "4".to_owned())].into(),
                },
            })),
        },
        Golden {
            name: "server_error",
            frame: Sample::Server(ServerMessage::Error {
                to: Some(RequestId(5)),
                error: ErrorReply::new(ErrorCode::MODEL_ALREADY_EXISTS, "model exists")
                    .with_detail("created_at", "1767225000000"),
            }),
        },
    ]
}
