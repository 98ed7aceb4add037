// Types of concord_tabs.js: the wasm classes' methods, through a tab. Every call returns a
// promise, except the few that only name a handle or read what the handle knows.
import type * as Concord from "./concord_web.js";

/** The wasm classes whose objects cross tabs as handles. */
type Handled =
  | Concord.Domain
  | Concord.ModelService
  | Concord.RealTimeModel
  | Concord.RealTimeElement
  | Concord.PresenceService
  | Concord.IdentityService
  | Concord.ActivityService;

/** A value as a tab receives it: a wasm object becomes its tab handle. */
export type Received<T> = T extends Handled ? Tab<T> : T;

/** Calls that stay synchronous through a tab. */
type Synchronous =
  | "id" | "kind" | "collection" | "root" | "models" | "presence" | "identity" | "activities" | "onEvent";

/**
 * What does not cross tabs: wasm-bindgen's own methods, and what would end or restart the
 * Domain all the tabs share.
 */
type Local = "free" | "close" | "initializeOffline" | typeof Symbol.dispose;

/**
 * Calls whose result is a wasm object bound to one tab's session (a history, this client's
 * references, an activity joined): through a tab they reject with `not_available_in_tab`
 * (the owner tab's too), so they are not part of a tab handle. Other sessions' references
 * (`reference`, `references`) and query results are plain values and cross tabs.
 */
type NotInTabs =
  | "history" | "elementReference" | "indexReference" | "rangeReference" | "propertyReference" | "join";

/** `T`'s methods through a tab (see concord_tabs.js). */
export type Tab<T> = {
  [K in Exclude<keyof T, Local | NotInTabs> as T[K] extends (...args: never[]) => unknown ? K : never]:
    T[K] extends (...args: infer A) => infer R
      ? K extends Synchronous
        ? (...args: A) => Received<R>
        : (...args: A) => Promise<Received<Awaited<R>>>
      : never;
};

export type TabDomain = Tab<Concord.Domain>;
export type TabModel = Tab<Concord.RealTimeModel>;
export type TabElement = Tab<Concord.RealTimeElement>;

export interface TabsOptions {
  /** The user whose store the tabs share. */
  user: string;
  /** A JWT: the owner tab connects with its own tab's token; `null`: the store only. */
  token?: string | null;
  /** Told whether this tab owns the store or goes through the tab that does. */
  onRole?: (role: "owner" | "follower") => void;
}

/** Opens `url` for `options.user` in this tab, sharing one store with the user's other tabs. */
export function openTabs(
  concord: typeof import("./concord_web.js"),
  url: string,
  options: TabsOptions,
): Promise<TabDomain>;
