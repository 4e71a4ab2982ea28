// Herald console: keeps a watched page fresh without a reload, and
// counts retries down between refreshes. No framework: the server renders
// every page; this only swaps <main> for the server's newer copy.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main) return;

  function human(s) {
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  }
  function countDown() {
    var now = Date.now();
    document.querySelectorAll("time[data-until]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("data-until"));
      if (isNaN(at)) return;
      var s = Math.round((at - now) / 1000);
      t.textContent = s > 0 ? "in " + human(s) : "due";
    });
  }

  // The key of a row or a section: a patched node keeps its identity, so
  // a button never changes under the pointer to another event's.
  function key(n) {
    return n.nodeType === 1 ? (n.getAttribute("data-event") || n.getAttribute("data-endpoint") || n.id || "") : "";
  }
  // morph patches the page in place to the server's newer copy, node by
  // node, instead of replacing it: focus, scroll and a half-made click
  // survive a refresh.
  function morph(old, neu) {
    if (old.nodeType !== neu.nodeType || old.nodeName !== neu.nodeName || key(old) !== key(neu)) {
      old.replaceWith(neu.cloneNode(true));
      return;
    }
    if (old.nodeType === 3 || old.nodeType === 8) {
      if (old.nodeValue !== neu.nodeValue) old.nodeValue = neu.nodeValue;
      return;
    }
    if (old.nodeType !== 1) return;
    Array.from(old.attributes).forEach(function (a) {
      if (!neu.hasAttribute(a.name)) old.removeAttribute(a.name);
    });
    Array.from(neu.attributes).forEach(function (a) {
      if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
    });
    morphChildren(old, neu);
  }
  function morphChildren(old, neu) {
    var oc = Array.from(old.childNodes), nc = Array.from(neu.childNodes);
    nc.forEach(function (n, i) {
      if (i < oc.length) morph(oc[i], n); else old.appendChild(n.cloneNode(true));
    });
    oc.slice(nc.length).forEach(function (n) { n.remove(); });
  }

  var busy = false;
  function refresh() {
    var every = parseInt(main.getAttribute("data-refresh"), 10);
    if (!every || busy || document.hidden) return;
    // Someone typing or choosing keeps what they see.
    if (main.contains(document.activeElement) && document.activeElement !== document.body) return;
    busy = true;
    fetch(location.href, { headers: { "X-Herald-Refresh": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) return null; // a failed read: keep the page, try again
        // The server says when a page stops changing (a replay that ended).
        var next = r.headers.get("X-Herald-Refresh");
        if (next !== null) main.setAttribute("data-refresh", next);
        return r.text();
      })
      .then(function (html) {
        if (html !== null) {
          var t = document.createElement("template");
          t.innerHTML = html;
          morphChildren(main, t.content);
          countDown();
          main.setAttribute("data-updated", new Date().toISOString());
        }
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }

  countDown();
  setInterval(countDown, 1000);
  var every = parseInt(main.getAttribute("data-refresh"), 10);
  if (every) setInterval(refresh, every); // a page that starts still stays still
})();
