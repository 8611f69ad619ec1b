/* Starts LoRA Lab: registers the service worker (offline use, cross-origin isolation on hosts
 * that set no headers, update notices), then loads PyScript, which runs the Python app.
 *
 * PyScript's workers need a cross-origin isolated page. Where the host does not send the
 * headers, the page waits for the service worker to control it and reloads once (the service
 * worker adds them); a session flag keeps that to one reload.
 */
"use strict";
(() => {
  const startPython = () => {
    const script = document.createElement("script");
    script.type = "module";
    script.src = "./pyscript/core.js";
    document.head.append(script);
  };
  const status = (text) => {
    const node = document.querySelector('[data-testid="status"]');
    if (node) node.textContent = text;
  };
  // Drops anywhere on the page: the files (folders walked) go to the app's Python, which
  // decides what they are. They must be taken while the event runs, so this is JavaScript.
  const walk = async (entry, out) => {
    if (entry.isFile) {
      out.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, out);
      }
    }
  };
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = [...event.dataTransfer.files];
    const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry ? item.webkitGetAsEntry() : null);
    const folder = entries.find((entry) => entry && entry.isDirectory);  // (its name names the model)
    const folders = Boolean(folder);
    const gathered = folders
      ? (async () => { const out = []; for (const e of entries) if (e) await walk(e, out); return out; })()
      : Promise.resolve(files);
    gathered.then((all) => { if (window.loralabOnDrop) window.loralabOnDrop(all, folder ? folder.name : null); },
                  (error) => console.warn("LoRA Lab: could not read the dropped folder", error));
  });
  if (!("serviceWorker" in navigator)) {  // (http on a LAN address, or disabled): no offline use
    startPython();
    return;
  }
  const offerUpdate = (registration) => {
    const notice = document.querySelector('[data-testid="update-ready"]');
    if (!notice || !registration.waiting || !navigator.serviceWorker.controller) return;
    notice.hidden = false;
    notice.querySelector("button").onclick = () => registration.waiting.postMessage({ type: "skip-waiting" });
  };
  navigator.serviceWorker.register("./sw.js").then((registration) => {
    offerUpdate(registration);
    registration.addEventListener("updatefound", () => {
      const incoming = registration.installing;
      incoming.addEventListener("statechange", () => {
        if (incoming.state === "installed") offerUpdate(registration);
      });
    });
  }, (error) => console.warn("LoRA Lab: the service worker did not register; no offline use", error));

  let refreshing = false;
  const hadController = Boolean(navigator.serviceWorker.controller);
  navigator.serviceWorker.addEventListener("controllerchange", () => {
    // An update the person accepted, or the first take-over of a page that still needs the headers.
    if (refreshing || (!hadController && window.crossOriginIsolated)) return;
    refreshing = true;
    window.location.reload();
  });
  if (window.crossOriginIsolated) {
    sessionStorage.removeItem("loralab.isolation-reload");
    startPython();
  } else if (navigator.serviceWorker.controller && sessionStorage.getItem("loralab.isolation-reload")) {
    startPython();  // reloaded once and still not isolated: let the app say what is missing
  } else {
    sessionStorage.setItem("loralab.isolation-reload", "1");
    status("Setting up offline use…");
    if (navigator.serviceWorker.controller) window.location.reload();
  }
})();
