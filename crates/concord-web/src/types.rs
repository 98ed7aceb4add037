//! The TypeScript types of the values, options, events and errors that cross the boundary
//! as plain JS objects. wasm-bindgen writes this section into `concord_web.d.ts`; the
//! methods name these types with `unchecked_param_type` / `unchecked_return_type`, so that
//! nothing in the declarations is `any`. Keep it in step with `events.rs` and `docs/web.md`.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** A model's data: JSON. Dates read as `{ "$date": milliseconds }`. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** Codes made here; other codes are the server's, by name (`"model_not_found"`, …). */
export type LocalErrorCode =
  | "invalid_argument" | "invalid_query" | "busy" | "not_initialized" | "other_user" | "connect_failed"
  | "not_available_offline" | "not_open" | "already_open" | "deletion_pending" | "offline"
  | "too_many_open" | "connection_lost" | "not_joined" | "timeout" | "wrong_kind"
  | "no_such_element" | "invalid_value" | "invalid_change" | "invalid_reference"
  | "storage_failed" | "history" | "closed" | "engine_error" | "client_error"
  /** `concord_tabs.js`: a call whose result cannot cross tabs. */
  | "not_available_in_tab";
export type ServerErrorCode =
  | "malformed_frame" | "unsupported_version" | "frame_too_large" | "unexpected_message"
  | "invalid_argument" | "timeout" | "not_authenticated" | "authentication_failed"
  | "token_expired" | "anonymous_disabled" | "permission_denied" | "model_not_found"
  | "model_already_exists" | "model_not_open" | "model_already_open" | "model_deleted"
  | "collection_not_found" | "permission_revoked" | "model_too_large" | "invalid_operation"
  | "version_out_of_range" | "seq_out_of_order" | "invalid_reference" | "operation_failed"
  | "internal" | "unavailable" | "overloaded" | `unknown_${number}`;
export type ErrorCode = LocalErrorCode | ServerErrorCode;
/** What every rejected promise and thrown call of this API carries. */
export interface ConcordError extends Error {
  name: "ConcordError"; code: ErrorCode;
  /** With `invalid_query`: where in the query's text (when known). */
  position?: { line: number; column: number };
}
/** An error the server reported, inside an event. */
export interface ErrorInfo { code: ServerErrorCode; message: string }

export interface DomainOptions {
  /** Without it the store lives in memory and dies with the page. */
  offline?: { storage?: IdbStorageAdapter };
  /** More nodes serving the domain, tried in turn after the first URL. */
  fallbackUrls?: string[];
  /** How often the client pings; three silent intervals count as a lost connection. */
  heartbeatMs?: number;
  /** How long a connection attempt, request or submission waits before the connection counts as broken. */
  requestTimeoutMs?: number;
  /** The wait before the first reconnection attempt, and the most it doubles to. */
  reconnectBackoff?: { firstMs: number; maxMs: number };
}
export interface SessionInfo { session: string; user: string }
export type ConnectionState = "disconnected" | "connecting" | "connected" | "reconnecting";
/** Ends a subscription; calling it again does nothing. */
export type Unsubscribe = () => void;
/** `"replica:counter"`. */
export type ElementRef = string;
export type ElementKind = "object" | "array" | "string" | "number" | "boolean" | "date" | "null";
/** Keys (objects) and indices (arrays). */
export type Path = (string | number)[];

export interface Watermarks { last: number; stored: number; acknowledged: number }
export interface ModelInfo { id: string; collection: string; version: number; createdAt: number; modifiedAt: number }
export interface StoredModel {
  id: string; collection: string; available: boolean; subscribed: boolean;
  hasPendingChanges: boolean; createdLocally: boolean; deletedLocally: boolean; version: number;
}

export type DomainEvent =
  | { type: "state"; state: ConnectionState }
  | { type: "syncProgress"; done: number; failed: number; total: number }
  | { type: "created"; model: string }
  | { type: "creationRefused"; model: string; error: ErrorInfo }
  | { type: "deleted"; model: string }
  | { type: "deletionRefused"; model: string; error: ErrorInfo }
  | { type: "modelGone"; model: string; error: ErrorInfo }
  | { type: "downloaded"; model: string }
  | { type: "opened"; model: string }
  | { type: "openFailed"; model: string; reason: "refused" | "connectionLost" | "timedOut"; error: ErrorInfo | null }
  | { type: "changesRejected"; model: string; error: ErrorInfo }
  | { type: "serverFault"; model: string; error: ErrorInfo }
  | { type: "protocolViolation"; model: string; message: string }
  | { type: "connectionRefused"; error: ErrorInfo; retryAllowed: boolean }
  | { type: "storageFailed"; message: string };

export interface Permissions { read: boolean; write: boolean; remove: boolean; manage: boolean }
export interface PermissionGrants {
  overrideCollection?: boolean; world?: Partial<Permissions>;
  users?: { [user: string]: Partial<Permissions> };
}

/** Index references: positions; range references: ranges; property: keys; element: ids. All positions in UTF-16 code units. */
export type ReferenceValue = number[] | { start: number; end: number }[] | string[];
/** What `LocalReference.set` takes: one of `ReferenceValue`'s items, or a list of them. */
export type ReferenceInput = number | { start: number; end: number } | string | ReferenceValue;
export interface SharedReference { session: string; element: ElementRef | null; key: string; value: ReferenceValue | null }
/** `since`: when the session opened the model, in milliseconds since the epoch (server time). */
export interface Collaborator { session: string; user: string; since: number }

export type ModelEvent =
  | { type: "changed"; element: ElementRef; local: boolean; author: string | null; user: string | null }
  | { type: "modified" }
  | { type: "stored"; seq: number }
  | { type: "acknowledged"; seq: number; version: number }
  | { type: "committed" }
  | { type: "neutralised"; seqs: number[] }
  | { type: "rejected"; seqs: number[]; error: ErrorInfo }
  | { type: "resyncStarted" }
  | { type: "resyncCompleted" }
  | { type: "online" }
  | { type: "offline" }
  | { type: "collaboratorOpened"; session: string; user: string; since: number }
  | { type: "collaboratorClosed"; session: string; user: string }
  | { type: "referenceRefused"; element: ElementRef | null; key: string; error: ErrorInfo }
  | { type: "permissionsChanged"; permissions: Permissions }
  | { type: "remoteReference"; session: string; user: string | null; element: ElementRef | null; key: string;
      change: "shared" | "set" | "cleared" | "unshared"; value: ReferenceValue | null }
  | { type: "gone"; error: ErrorInfo }
  | { type: "released" };

/** A change of one element, by the operation that made it (`author` null: this client; `user`: the author's user when known). String changes carry no positions: read the value. */
export type ElementEvent = { local: boolean; author: string | null; user: string | null } & (
  | { type: "stringSplice" }
  | { type: "stringSet" }
  | { type: "arrayInsert"; index: number }
  | { type: "arrayRemove"; index: number }
  | { type: "arrayReplace"; index: number }
  | { type: "arrayMove"; from: number; to: number }
  | { type: "arraySet" }
  | { type: "objectAddProperty"; key: string }
  | { type: "objectSetProperty"; key: string }
  | { type: "objectRemoveProperty"; key: string }
  | { type: "objectSet" }
  | { type: "numberDelta"; delta: number }
  | { type: "numberSet"; value: number }
  | { type: "booleanSet"; value: boolean }
  | { type: "dateSet"; value: number });

/** One change of `RealTimeModel.batch`, on the element `element` (`RealTimeElement.id()`). String positions in UTF-16 code units. */
export type BatchEdit = { element: ElementRef } & (
  | { op: "set"; key: string; value: JsonValue }
  | { op: "remove"; key: string }
  | { op: "insert"; index: number; value: JsonValue }
  | { op: "removeAt"; index: number }
  | { op: "replace"; index: number; value: JsonValue }
  | { op: "move"; from: number; to: number }
  | { op: "splice"; index: number; deleteCount: number; text: string }
  | { op: "setValue"; value: JsonValue }
  | { op: "add"; delta: number });

export interface UserPresence { user: string; available: boolean; state: JsonObject }
/** A user's name and email from their token; `email` is null unless it is the asker's own, or the asker is an administrator. */
export interface Identity { user: string; displayName: string | null; email: string | null }
export interface Participant { session: string; user: string; state: JsonObject }
export interface ActivityRef { kind: string; id: string }
export type ActivityEvent =
  | { type: "joined"; activity: ActivityRef; participant: Participant }
  | { type: "left"; activity: ActivityRef; session: string; user: string }
  | { type: "stateChanged"; activity: ActivityRef; session: string; user: string; state: JsonObject };

/** Where a query is answered: the server when connected else the store (`"auto"`), or only one of them. */
export type QueryMode = "auto" | "server" | "store";
/** One model a query selected: the whole root (`SELECT *`) or the value at each selected path, `undefined` where missing. */
export type QueryRow = { model: string; collection: string; version: number; createdAt: number; modifiedAt: number } & (
  | { select: "all"; data: JsonObject }
  | { select: "paths"; values: (JsonValue | undefined)[] });
/** A page of results; `total` counts every match before LIMIT and OFFSET; `scanned` and `index` say how the answerer found them. */
export interface QueryResult { rows: QueryRow[]; total: number; origin: "server" | "store"; scanned: number; index: string | null }

export interface HistoryStep { version: number; session: string; user: string | null; timestamp: number; operation: JsonValue }
"#;
