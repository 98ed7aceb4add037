// The Concord browser demo: one shared todo list, `{ items: [{ text, done }] }`.
// Query parameters: `user` and `token` (a JWT from `concord token --user <user>`), and
// optionally `model` (default "todos") and `ws` (default: this server, domain demo/todos).
// Every tab of the same user works: one tab owns the store and the connection, the others
// go through it (concord_tabs.js), and the same code runs in all of them.
import init, * as concord from "./concord_web.js";
import { openTabs } from "./concord_tabs.js";

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
  const marks = await model.watermarks();
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
  // The tab that owns the store connects with its token and reconnects by itself.
  const domain = await openTabs(concord, url, {
    user,
    token,
    onRole: (role) => {
      document.body.dataset.role = role;
      document.getElementById("role").textContent = role === "owner"
        ? "this tab keeps the store and the connection"
        : "this tab works through another tab of yours";
    },
  });
  window.concordDomain = domain;
  domain.onEvent((event) => {
    if (event.type === "state") show(`${user}: ${event.state}`, event.state !== "connected");
    if (event.type === "syncProgress") showProgress(event);
    render();
  });
  const state = await domain.state();
  show(`${user}: ${state}`, state !== "connected");
  // The store first: it works without a network; a model the store does not have yet is
  // created (or fetched) once connected.
  while (!model) {
    try {
      model = await domain.models().open(modelId);
    } catch (e) {
      if ((await domain.state()) === "connected") {
        model = await domain.models().openAutoCreate(modelId, "todos", { items: [] }).catch(() => null);
      }
      if (!model) await new Promise((r) => setTimeout(r, 1000));
    }
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
