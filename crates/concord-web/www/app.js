// The Concord browser demo: one shared todo list, `{ items: [{ text, done }] }`.
// Query parameters: `user` and `token` (a JWT from `concord token --user <user>`), and
// optionally `model` (default "todos") and `ws` (default: this server, domain demo/todos).
import init, { Domain, IdbStorageAdapter } from "./concord_web.js";

const params = new URLSearchParams(location.search);
const user = params.get("user") || "guest";
const token = params.get("token");
const modelId = params.get("model") || "todos";
const url = params.get("ws") || `ws://${location.host}/demo/todos`;

const status = document.getElementById("status");
const sync = document.getElementById("sync");
const pending = document.getElementById("pending");
const progress = document.getElementById("progress");
const list = document.getElementById("items");
let model = null;

function show(text, offline) {
  status.textContent = text;
  status.className = offline ? "offline" : "";
}

async function render() {
  if (!model) return;
  const value = await model.value();
  const marks = model.watermarks();
  list.replaceChildren(...value.items.map((item, index) => {
    const li = document.createElement("li");
    li.className = item.done ? "done" : "";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = item.done;
    box.onchange = async () => {
      const entry = await (await model.root().get("items")).get(index);
      await (await entry.get("done")).setValue(box.checked);
    };
    const text = document.createElement("span");
    text.textContent = item.text;
    const remove = document.createElement("button");
    remove.className = "remove";
    remove.textContent = "×";
    remove.onclick = async () => (await model.root().get("items")).remove(index);
    li.append(box, " ", text, remove);
    return li;
  }));
  document.body.dataset.items = JSON.stringify(value.items.map((i) => i.text));
  // Local changes the server has not acknowledged yet (each is in this browser's store once
  // `stored` passed it).
  const waiting = marks.last - marks.acknowledged;
  document.body.dataset.unacknowledged = String(waiting);
  pending.textContent = waiting === 0
    ? "every change is on the server"
    : `${waiting} local change${waiting === 1 ? "" : "s"} not on the server yet`;
  sync.className = waiting === 0 ? "" : "pending";
}

// After a reconnection: how many stored models with local changes have synced.
function showProgress(event) {
  const failed = event.failed ? `, ${event.failed} failed` : "";
  progress.textContent = event.done + event.failed >= event.total
    ? `synced ${event.done} of ${event.total} model${event.total === 1 ? "" : "s"}${failed}`
    : `syncing ${event.done} of ${event.total} model${event.total === 1 ? "" : "s"}${failed}…`;
}

async function main() {
  // The page's files, for loading it while the server is unreachable (see sw.js).
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js").catch((e) => console.warn("no service worker:", e));
  }
  await init();
  const domain = new Domain(url, { offline: { storage: new IdbStorageAdapter() } });
  window.concordDomain = domain;
  await domain.initializeOffline(user);
  domain.onEvent((event) => {
    if (event.type === "state") show(`${user}: ${event.state}`, event.state !== "connected");
    if (event.type === "syncProgress") showProgress(event);
    render();
  });
  // The store first: it works without a network.
  try {
    model = await domain.models().open(modelId);
  } catch (e) {
    model = null;
  }
  const connect = async () => {
    try {
      await domain.connectWithJwt(token);
      show(`${user}: connected`, false);
      return true;
    } catch (e) {
      show(`${user}: offline (${e.message}); retrying`, true);
      return false;
    }
  };
  // A page that starts offline retries; once connected, the client reconnects by itself.
  while (!(await connect())) {
    if (model) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  if (!model) {
    model = await domain.models().openAutoCreate(modelId, "todos", { items: [] });
  }
  if (domain.state() !== "connected") {
    (async () => { while (!(await connect())) await new Promise((r) => setTimeout(r, 1000)); })();
  }
  model.onEvent(() => render());
  document.getElementById("add").onsubmit = async (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    if (!input.value) return;
    await (await model.root().get("items")).push({ text: input.value, done: false });
    input.value = "";
    render();
  };
  document.body.dataset.ready = "true";
  render();
}

main().catch((e) => show(`error: ${e.message || e}`, true));
