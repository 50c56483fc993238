// The pairing page updates itself: each server-sent `devices` event brings
// the live part of the page (device list and QR code) again, without a reload.
// Without JavaScript the page still works; it just needs reloading by hand.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch) {
    return;
  }
  let busy = false;
  let again = false;

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const response = await fetch("devices", {credentials: "same-origin", cache: "no-store"});
      if (response.ok) {
        const html = await response.text();
        const parsed = new DOMParser().parseFromString(html, "text/html");
        live.replaceChildren(...parsed.body.childNodes);
        document.documentElement.dataset.updated = String(Date.now());
      }
    } catch (e) {
      // the next event or reconnect tries again
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  const events = new EventSource("events");
  events.addEventListener("devices", refresh);
  let opened = false;
  events.addEventListener("open", function () {
    // after a reconnect, catch up with what happened meanwhile
    if (opened) {
      refresh();
    }
    opened = true;
    document.documentElement.dataset.live = "yes";
  });

  // The pairing link is selected whole on focus, ready to copy.
  live.addEventListener("focusin", function (event) {
    if (event.target.id === "pairing-uri") {
      event.target.select();
    }
  });
})();
