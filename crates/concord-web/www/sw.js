// The demo page's service worker: it keeps the page's own files (the HTML, the scripts,
// the wasm) so that the page loads while the server is unreachable. Network first, so a
// reachable server always serves the current files; the cache answers only when it is not.
// The data never goes through here: it lives in IndexedDB.
const CACHE = "concord-demo-v2";
const SHELL = ["./", "./index.html", "./app.js", "./concord_tabs.js", "./concord_web.js", "./concord_web_bg.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== location.origin) return;
  event.respondWith(
    fetch(request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(request, copy));
        }
        return response;
      })
      .catch(() => caches.match(request, { ignoreSearch: true })),
  );
});
