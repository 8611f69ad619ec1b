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
