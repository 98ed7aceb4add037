// Drives the demo page, and pages using the JS API, in headless Chromium for crates/concord-web/tests/browser.rs.
// One command per stdin line, one answer per stdout line ("ok ...", or "error ...").
// The page comes from the Concord server itself; its service worker keeps the page's files
// so that it reloads while the server is down.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const context = await browser.newContext();
const tabs = new Map();
const logs = [];
const until = async (tab, predicate, what) => {
  const page = tabs.get(tab);
  await page.waitForFunction(predicate, undefined, { timeout: 30000 }).catch((e) => {
    throw new Error(`${what}: ${e.message.split("\n")[0]}; status "${logs.at(-1)}"`);
  });
};
const commands = {
  async open(tab, url) {
    const page = await context.newPage();
    page.on("console", (m) => logs.push(`${tab}: ${m.text()}`));
    page.on("pageerror", (e) => logs.push(`${tab}: ${e.message}`));
    tabs.set(tab, page);
    await page.goto(url);
    return "opened";
  },
  async ready(tab) {
    await until(tab, () => document.body.dataset.ready === "true", "the page never got ready");
    return "ready";
  },
  // The service worker controls the page: it can be reloaded without the server.
  async controlled(tab) {
    await until(tab, () => navigator.serviceWorker.controller !== null, "no service worker controls the page");
    return "controlled";
  },
  async status(tab) {
    return await tabs.get(tab).textContent("#status");
  },
  async waitStatus(tab, text) {
    const page = tabs.get(tab);
    await page.waitForFunction((t) => document.getElementById("status").textContent.includes(t), text, { timeout: 30000 })
      .catch(async () => { throw new Error(`status never said "${text}": "${await page.textContent("#status")}"`); });
    return "seen";
  },
  async add(tab, ...words) {
    const page = tabs.get(tab);
    const before = JSON.parse((await page.evaluate(() => document.body.dataset.items)) || "[]").length;
    await page.fill("#text", words.join(" "));
    await page.click("#add button");
    await page.waitForFunction((n) => JSON.parse(document.body.dataset.items || "[]").length > n, before, { timeout: 30000 });
    return "added";
  },
  async synced(tab) {
    await until(tab, () => document.body.dataset.unacknowledged === "0"
      && document.getElementById("status").textContent.endsWith("connected"), "the page never synced");
    return "synced";
  },
  async items(tab) {
    return await tabs.get(tab).evaluate(() => document.body.dataset.items || "[]");
  },
  async reload(tab) {
    await tabs.get(tab).reload();
    return "reloaded";
  },
  async close(tab) {
    await tabs.get(tab).close();
    tabs.delete(tab);
    return "closed";
  },
  // The tab's renderer crashes (Chrome DevTools Protocol `Page.crash`): no unload, no
  // pagehide; what it held (its Web Locks) goes with it.
  async crash(tab) {
    const page = tabs.get(tab);
    const session = await context.newCDPSession(page);
    session.send("Page.crash").catch(() => {});
    await page.waitForEvent("crash", { timeout: 30000 });
    await page.close().catch(() => {});
    tabs.delete(tab);
    return "crashed";
  },
  // A page of the server's origin with the bundle loaded as `window.concord`, for tests that
  // go through the JS API (`evaluate`), and `until(check, what)` to wait on a condition.
  async api(tab, url) {
    await commands.open(tab, url);
    await tabs.get(tab).evaluate(async () => {
      const concord = await import("/concord_web.js");
      await concord.default();
      window.concord = concord;
      window.until = async (check, what, ms = 30000) => {
        const end = Date.now() + ms;
        while (!(await check())) {
          if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      };
    });
    return "loaded";
  },
  // Runs an async function body in the tab; its result as JSON. A thrown error comes back
  // with its `code`.
  async evaluate(tab, body) {
    return await tabs.get(tab).evaluate(async (body) => {
      const run = new (Object.getPrototypeOf(async () => {}).constructor)(body);
      try {
        const value = await run();
        return JSON.stringify(value === undefined ? null : value);
      } catch (e) {
        throw new Error(`${e?.code ?? "no code"}: ${e?.message ?? e}`);
      }
    }, body);
  },
  async logs() {
    return JSON.stringify(logs.slice(-20));
  },
};
for await (const line of createInterface({ input: process.stdin })) {
  const [name, ...args] = line.trim().split(" ");
  if (name === "quit") break;
  // `evaluate <tab> <JSON string>`: the body is JSON so that it fits on one line.
  if (name === "evaluate") args.splice(1, args.length - 1, JSON.parse(args.slice(1).join(" ")));
  try {
    const answer = await commands[name](...args);
    console.log(`ok ${answer}`);
  } catch (e) {
    console.log(`error ${String(e.message || e).replaceAll("\n", " ")}`);
  }
}
await browser.close();
