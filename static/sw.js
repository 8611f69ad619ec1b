/* LoRA Lab's service worker: the site offline after one visit, on any static host.
 *
 * build.py copies this file to dist/sw.js with `self.LORALAB_BUILD = {version, files}` added:
 * every file of the app shell and runtime with its sha256 (never a hand-kept list). Installing a
 * build fetches each file with its integrity checked into the cache "loralab-shell-<version>";
 * activating it deletes the caches of older builds. Every same-origin response gets
 * Cross-Origin-Opener-Policy / -Embedder-Policy (and a resource policy), so the page is
 * cross-origin isolated (PyScript workers, threaded wasm) even where the host sets no headers.
 * Models and datasets live in the engine's own cache (Cache Storage "loralab-data"), not here.
 */
"use strict";

const BUILD = self.LORALAB_BUILD;
const SHELL = `loralab-shell-${BUILD.version}`;
const MIME = { wasm: "application/wasm", mjs: "text/javascript", js: "text/javascript", json: "application/json",
               html: "text/html; charset=utf-8", css: "text/css", svg: "image/svg+xml", wgsl: "text/plain; charset=utf-8",
               zip: "application/zip", gguf: "application/octet-stream" };

const scoped = (path) => new URL(path, self.registration.scope).href;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL);
    await Promise.all(Object.entries(BUILD.files).map(async ([path, integrity]) => {
      const response = await fetch(scoped(path), { cache: "no-store", integrity });
      if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
      await cache.put(scoped(path), response);
    }));
    if (!self.registration.active) await self.skipWaiting();  // the first install takes over at once
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("loralab-shell-") && name !== SHELL) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("message", (event) => {
  if (event.data && event.data.type === "skip-waiting") self.skipWaiting();
});

function isolated(response, path) {
  if (response.type === "opaque" || response.status === 0) return response;
  const headers = new Headers(response.headers);
  headers.set("Cross-Origin-Opener-Policy", "same-origin");
  headers.set("Cross-Origin-Embedder-Policy", "require-corp");
  headers.set("Cross-Origin-Resource-Policy", "same-origin");
  const ext = path.split(".").pop();
  if (MIME[ext]) headers.set("Content-Type", MIME[ext]);  // plain hosts often get wasm/mjs wrong
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  let path = url.href.startsWith(self.registration.scope) ? url.pathname.slice(new URL(self.registration.scope).pathname.length) : null;
  if (path === null) return;
  if (request.mode === "navigate" && (path === "" || path === "index.html")) path = "index.html";
  event.respondWith((async () => {
    if (path in BUILD.files) {
      const cached = await caches.match(scoped(path), { cacheName: SHELL });
      if (cached) return isolated(cached, path);
    }
    return isolated(await fetch(request), path);
  })());
});
