// Concord in several tabs of one browser: one store, one connection, every tab working.
//
//   import init, * as concord from "./concord_web.js";
//   import { openTabs } from "./concord_tabs.js";
//   await init();
//   const domain = await openTabs(concord, url, { user: "alice", token });
//
// One tab of a (server, user) is the owner: it holds a Web Lock named after them, and in it
// the wasm `Domain` with its IndexedDB store and WebSocket. The others are followers: every
// call they make travels to the owner over a BroadcastChannel and its answer comes back;
// every event subscription is forwarded. The owner's own page uses the same handles, so the
// same code runs in every tab. When the owner's tab closes, reloads or crashes, the browser
// releases its lock and the next tab waiting on it becomes the owner: it opens the store
// (which holds everything reported stored), and every follower sends again what was not
// answered and subscribes again.
//
// Exactly once: a change is reported to its caller only once the owner's store has it. A
// change resent after an owner died must not be applied twice, so the owner, before applying
// a change, writes a durable intent `{ rid, model, after }` (`after`: the model's last local
// change seq) into a small IndexedDB database of its own, and applies changes one at a time.
// A new owner judges every intent left before it applies anything: the first change made
// after `after` was that request's, so if the store has it (`watermarks().stored > after`;
// the store never reuses a seq) the resent request is answered without being applied again;
// if not, the change was lost with the old owner before it was reported stored, and the
// resent request is applied as new. (Intents need only relaxed durability: a resend needs a
// follower alive, so the browser did not crash.)
//
// Through these handles every call returns a promise (also the ones that are synchronous on
// the wasm classes, such as `watermarks()`), except `id()`, `kind()`, `collection()`,
// `root()`, `models()`, `presence()`, `identity()` and `activities()`, and changes resolve
// once stored. `onEvent(cb)` returns the unsubscribe function. Calls whose result is a wasm
// object bound to the owner tab's session (a history, a reference of this client, an
// activity joined) are refused in every tab with `not_available_in_tab`, before they run;
// plain results (query results, other sessions' references) cross tabs (see docs/web.md).

const MUTATIONS = {
  model: new Set(["batch", "setValue"]),
  element: new Set(["set", "remove", "push", "insert", "replace", "move", "splice", "add", "setValue"]),
  models: new Set(["create", "createWithId", "remove"]),
};
/// Calls that make a wasm object of the owner tab (its session's history cursor, reference
/// or activity membership), which cannot cross to another tab and would not survive a change
/// of owner: refused in every tab, the owner's too, before anything runs.
const NOT_IN_TABS = {
  models: new Set(["history"]),
  model: new Set(["elementReference"]),
  element: new Set(["indexReference", "rangeReference", "propertyReference"]),
  activities: new Set(["join"]),
};
/// What would end or restart the owner's Domain for every tab.
const SHARED_LIFE = new Set(["close", "free", "initializeOffline", "constructor"]);
/// Navigation that needs no round trip: it only names a handle.
const LOCAL = {
  domain: {
    models: () => ({ kind: "models" }),
    presence: () => ({ kind: "presence" }),
    identity: () => ({ kind: "identity" }),
    activities: () => ({ kind: "activities" }),
  },
  model: { root: (d) => ({ kind: "element", model: d.id, element: d.root, type: "object" }) },
};
const IDENTITY = {
  model: { id: (d) => d.id, collection: (d) => d.collection },
  element: { id: (d) => d.element, kind: (d) => d.type },
};

function concordError(e) {
  const error = new Error(e.message);
  error.name = "ConcordError";
  error.code = e.code;
  if (e.position) error.position = e.position;
  return error;
}

const plainError = (e) => ({ code: e?.code ?? "internal", message: String(e?.message ?? e), position: e?.position });

/// The small database of intents, beside the store, named as the lock and the channel.
async function intentDatabase(name) {
  const request = indexedDB.open(name, 1);
  request.onupgradeneeded = () => request.result.createObjectStore("intents", { keyPath: "rid" });
  const db = await new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const run = (mode, work) => new Promise((resolve, reject) => {
    // Relaxed is enough: a resend needs a follower alive, so the browser did not crash, and
    // a committed transaction outlives the tab that made it.
    const tx = db.transaction("intents", mode, { durability: "relaxed" });
    const result = work(tx.objectStore("intents"));
    tx.oncomplete = () => resolve(result.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
  return {
    all: () => run("readonly", (s) => s.getAll()),
    put: (intent) => run("readwrite", (s) => s.put(intent)),
    remove: (rid) => run("readwrite", (s) => s.delete(rid)),
    // Intents of followers that never confirmed their answer (closed tabs): a day is plenty.
    prune: () => run("readwrite", (s) => {
      const old = Date.now() - 24 * 3600 * 1000;
      const cursor = s.openCursor();
      cursor.onsuccess = () => {
        const c = cursor.result;
        if (!c) return;
        if ((c.value.at ?? 0) < old) c.delete();
        c.continue();
      };
      return cursor;
    }),
  };
}

/// The owner: the wasm Domain and what followers ask of it.
class Owner {
  constructor(concord, domain, intents) {
    this.concord = concord;
    this.domain = domain;
    this.intents = intents;
    this.models = new Map();       // model id → Promise<RealTimeModel>
    this.running = new Map();      // rid → Promise of its answer, while this owner lives
    this.subscriptions = new Map(); // `${tab} ${sub}` → unsubscribe
    this.queue = Promise.resolve(); // changes apply one at a time (see the intents)
    this.verdicts = new Map();     // rid → the answer of a change an earlier owner stored
  }

  /// Before applying anything, judges every intent an earlier owner left: was its change
  /// stored? (Later, a change of this owner could take the seq of one that was lost.)
  async recover() {
    const models = this.domain.models();
    const stored = new Map((await models.storedModels()).map((m) => [m.id, m]));
    for (const intent of await this.intents.all()) {
      let applied = false;
      let value;
      if (intent.model !== undefined) {
        const model = await this.model(intent.model).catch(() => null);
        applied = model !== null && model.watermarks().stored > intent.after;
        value = intent.seq ?? intent.after + 1;
      } else if (intent.created !== undefined) {
        applied = stored.has(intent.created);
        value = intent.created;
      } else if (intent.removed !== undefined) {
        const model = stored.get(intent.removed);
        applied = !model || model.deletedLocally;
      } else if (intent.createdWithId !== undefined) {
        applied = stored.has(intent.createdWithId);
      }
      if (applied) this.verdicts.set(intent.rid, { value });
      else await this.intents.remove(intent.rid);
    }
  }

  model(id) {
    if (!this.models.has(id)) {
      const opening = this.domain.models().open(id);
      this.models.set(id, opening);
      opening.catch(() => this.models.delete(id));
    }
    return this.models.get(id);
  }

  async resolve(target) {
    switch (target.kind) {
      case "domain": return this.domain;
      case "models": return this.domain.models();
      case "presence": return this.domain.presence();
      case "identity": return this.domain.identity();
      case "activities": return this.domain.activities();
      case "model": return this.model(target.id);
      case "element": {
        const model = await this.model(target.model);
        if (target.element === null || target.element === undefined) return model.root();
        const element = await model.element(target.element);
        if (!element) throw { code: "no_such_element", message: `no element ${target.element} in ${target.model}` };
        return element;
      }
      default: throw { code: "invalid_argument", message: `no handle kind ${target.kind}` };
    }
  }

  /// A result as it crosses to a tab: handles become descriptors.
  describe(value, target) {
    const { RealTimeModel, RealTimeElement } = this.concord;
    if (value instanceof RealTimeModel) {
      const id = value.id();
      if (!this.models.has(id)) this.models.set(id, Promise.resolve(value));
      return { $handle: { kind: "model", id, collection: value.collection(), root: value.root().id() } };
    }
    if (value instanceof RealTimeElement) {
      return { $handle: { kind: "element", model: target.model ?? target.id, element: value.id(), type: value.kind() } };
    }
    if (value && typeof value === "object" && "__wbg_ptr" in value) {
      throw { code: "not_available_in_tab", message: `a ${value.constructor.name} does not cross tabs` };
    }
    return value;
  }

  /// One request, at most once per rid while this owner lives. `local`: made in this tab,
  /// so never resent to another owner: it needs no intent.
  handle(request, local = false) {
    if (!this.running.has(request.rid)) {
      const answer = this.answer(request, local);
      this.running.set(request.rid, answer);
      answer.catch(() => {});
    }
    return this.running.get(request.rid);
  }

  async answer({ rid, target, method, args }, local) {
    if (SHARED_LIFE.has(method)) {
      throw { code: "invalid_argument", message: `${method}() is not for one tab: the store is shared by the user's tabs, and a tab leaves by closing` };
    }
    if (NOT_IN_TABS[target.kind]?.has(method)) {
      throw { code: "not_available_in_tab", message: `${method}() does not work through openTabs: its result belongs to one tab's session` };
    }
    const object = await this.resolve(target);
    if (typeof object[method] !== "function") {
      throw { code: "invalid_argument", message: `no method ${method} on ${target.kind}` };
    }
    if (!MUTATIONS[target.kind]?.has(method)) {
      return this.describe(await object[method](...args), target);
    }
    const turn = this.queue.then(() => this.apply(rid, target, object, method, args, local));
    this.queue = turn.catch(() => {});
    const { value, durable } = await turn;
    await durable;
    return this.describe(value, target);
  }

  /// Applies one change unless an earlier owner already stored it; `durable` settles when
  /// the store has it.
  async apply(rid, target, object, method, args, local) {
    const verdict = this.verdicts.get(rid);
    if (verdict) return { value: verdict.value, durable: Promise.resolve() };
    const intents = local ? { put: async () => {}, remove: async () => {} } : this.intents;
    if (target.kind === "models") return this.applyToModels(rid, intents, object, method, args);
    const model = await this.model(target.kind === "model" ? target.id : target.model);
    const after = model.watermarks().last;
    await intents.put({ rid, model: model.id(), after, at: Date.now() });
    let seq;
    try {
      seq = await object[method](...args);
    } catch (e) {
      // Nothing applied: a resend must try again, not find this intent.
      await intents.remove(rid);
      throw e;
    }
    intents.put({ rid, model: model.id(), after, seq, at: Date.now() }).catch(() => {});
    return { value: seq, durable: model.stored(seq) };
  }

  /// Creations and deletions: the intent names the model; the store says whether it happened.
  async applyToModels(rid, intents, models, method, args) {
    if (method === "create") {
      const id = crypto.randomUUID();
      await intents.put({ rid, created: id, at: Date.now() });
      await models.createWithId(id, ...args);
      return { value: id, durable: this.inStore(models, id, true) };
    }
    if (method === "createWithId") await intents.put({ rid, createdWithId: args[0], at: Date.now() });
    if (method === "remove") await intents.put({ rid, removed: args[0], at: Date.now() });
    let value;
    try {
      value = await models[method](...args);
    } catch (e) {
      await intents.remove(rid);
      throw e;
    }
    return { value, durable: this.inStore(models, args[0], method !== "remove") };
  }

  /// Settles once the store has model `id` (`present`) or its deletion: what `recover`
  /// judges by. A creation or deletion resolves before the store has it (the domain commits
  /// it with the next group commit), and a command other than an edit is answered only after
  /// that commit, so the first read normally shows it; the reads repeat in case it does not.
  async inStore(models, id, present) {
    for (let read = 0; ; read++) {
      const model = (await models.storedModels()).find((m) => m.id === id);
      if (present ? model && !model.deletedLocally : !model || model.deletedLocally) return;
      if (read === 100) throw { code: "internal", message: `the store never showed ${id} ${present ? "created" : "deleted"}` };
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async subscribe(tab, sub, target, send) {
    const object = await this.resolve(target);
    const key = `${tab} ${sub}`;
    this.subscriptions.get(key)?.();
    this.subscriptions.set(key, object.onEvent((event) => send(event)));
  }

  unsubscribe(tab, sub) {
    const key = `${tab} ${sub}`;
    this.subscriptions.get(key)?.();
    this.subscriptions.delete(key);
  }

  forget(tab) {
    for (const [key, stop] of this.subscriptions) {
      if (key.startsWith(`${tab} `)) {
        stop();
        this.subscriptions.delete(key);
      }
    }
  }
}

/// Opens `url` for `options.user` in this tab: resolves to a domain handle once this tab
/// owns the store or has found its owner. `options.token`: a JWT; the owner connects with
/// its own tab's token and reconnects by itself. `options.onRole(role)` is told
/// `"owner"` / `"follower"`.
export async function openTabs(concord, url, options) {
  const { user, token = null, onRole = () => {} } = options;
  // Per (server, user), as the store is: two users of one browser share nothing.
  const name = `concord-tabs ${JSON.stringify([url, user])}`;
  const tab = crypto.randomUUID();
  const channel = new BroadcastChannel(name);
  let owner = null;          // an Owner once this tab owns the store
  let ownerTab = null;       // the owning tab, as last announced
  let counter = 0;
  const pending = new Map(); // rid → { request, resolve, reject }
  const subs = new Map();    // sub → { target, callback }
  let announced, failed;
  const found = new Promise((resolve, reject) => ((announced = resolve), (failed = reject)));

  const post = (message) => channel.postMessage(message);
  const settle = (rid, ok, value) => {
    const call = pending.get(rid);
    if (!call) return; // a duplicate answer
    pending.delete(rid);
    if (ok) call.resolve(value); else call.reject(concordError(value));
    // The answer arrived: its intent (if a change) is no longer needed.
    if (owner) {
      owner.running.delete(rid);
      owner.intents.remove(rid).catch(() => {});
    } else post({ t: "done", rid });
  };
  const dispatch = (request) => {
    if (owner) {
      owner.handle(request, true).then(
        (value) => settle(request.rid, true, value),
        (error) => settle(request.rid, false, plainError(error)),
      );
    } else if (ownerTab) {
      post({ t: "req", from: tab, ...request });
    } // else: held until an owner announces itself, then sent
  };
  const resendAll = () => {
    for (const { request } of pending.values()) dispatch(request);
    for (const [sub, { target }] of subs) subscribeAt(sub, target);
  };
  const subscribeAt = (sub, target) => {
    if (owner) {
      owner.subscribe(tab, sub, target, (event) => subs.get(sub)?.callback(event))
        .catch((e) => console.warn("concord tabs: subscription failed", e));
    } else if (ownerTab) {
      post({ t: "sub", from: tab, sub, target });
    }
  };

  const call = (target, method, args) => new Promise((resolve, reject) => {
    const request = { rid: `${tab}:${++counter}`, target, method, args };
    pending.set(request.rid, {
      request,
      resolve: (value) => resolve(value && typeof value === "object" && value.$handle ? handle(value.$handle) : value),
      reject,
    });
    dispatch(request);
  });
  const subscribe = (target, callback) => {
    const sub = `s${++counter}`;
    subs.set(sub, { target, callback });
    subscribeAt(sub, target);
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      subs.delete(sub);
      if (owner) owner.unsubscribe(tab, sub); else post({ t: "unsub", from: tab, sub });
    };
  };
  function handle(descriptor) {
    return new Proxy({}, {
      get(_, property) {
        if (property === "then" || typeof property !== "string") return undefined;
        if (property === "descriptor") return descriptor;
        if (property === "onEvent") return (callback) => subscribe(descriptor, callback);
        const local = LOCAL[descriptor.kind]?.[property];
        if (local) return () => handle(local(descriptor));
        const known = IDENTITY[descriptor.kind]?.[property];
        if (known) return () => known(descriptor);
        return (...args) => call(descriptor, property, args);
      },
    });
  }

  channel.onmessage = async ({ data: m }) => {
    if (m.t === "leader") {
      if (m.tab === ownerTab) return;
      ownerTab = m.tab;
      announced();
      resendAll();
    } else if (m.t === "res" && m.to === tab) {
      settle(m.rid, m.ok, m.value);
    } else if (m.t === "event" && m.to === tab) {
      subs.get(m.sub)?.callback(m.event);
    } else if (owner) {
      if (m.t === "hello") post({ t: "leader", tab });
      else if (m.t === "req") {
        owner.handle(m).then(
          (value) => post({ t: "res", to: m.from, rid: m.rid, ok: true, value }),
          (error) => post({ t: "res", to: m.from, rid: m.rid, ok: false, value: plainError(error) }),
        );
      } else if (m.t === "done") {
        owner.running.delete(m.rid);
        owner.intents.remove(m.rid).catch(() => {});
      } else if (m.t === "sub") {
        owner.subscribe(m.from, m.sub, m.target, (event) => post({ t: "event", to: m.from, sub: m.sub, event }))
          .catch((e) => console.warn("concord tabs: subscription failed", e));
      } else if (m.t === "unsub") owner.unsubscribe(m.from, m.sub);
      else if (m.t === "bye") owner.forget(m.from);
    }
  };
  addEventListener("pagehide", () => post({ t: "bye", from: tab }));

  // Waits for the lock for as long as the tab lives; holds it until the tab goes.
  navigator.locks.request(name, async () => {
    const domain = new concord.Domain(url, { offline: { storage: new concord.IdbStorageAdapter() } });
    // The previous owner's store lock and database connection go with its tab, a moment
    // after its tab lock.
    for (let attempt = 0; ; attempt++) {
      try {
        await domain.initializeOffline(user);
        break;
      } catch (e) {
        if (attempt > 100) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const intents = await intentDatabase(name);
    intents.prune().catch(() => {});
    const candidate = new Owner(concord, domain, intents);
    await candidate.recover();
    owner = candidate;
    ownerTab = tab;
    onRole("owner");
    post({ t: "leader", tab });
    announced();
    resendAll();
    if (token) {
      (async () => {
        while (true) {
          try {
            await domain.connectWithJwt(token);
            return; // from here the client reconnects by itself
          } catch (e) {
            if (e?.code === "closed") return;
            await new Promise((r) => setTimeout(r, 1000));
          }
        }
      })();
    }
    await new Promise(() => {}); // the lock goes with the tab
  }).catch((e) => {
    console.error("concord tabs: could not open the store", e);
    failed(e);
  });

  post({ t: "hello", from: tab });
  await found;
  if (!owner) onRole("follower");
  return handle({ kind: "domain" });
}
