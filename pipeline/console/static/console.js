// Live updates: poll the read model's version; when it moved, re-fetch this page and swap
// its live region. No inline script anywhere (the Content-Security-Policy forbids it).
"use strict";
(function () {
  var live = document.querySelector("[data-live]");
  if (!live) { return; }
  var seen = document.body.getAttribute("data-version");
  function refresh() {
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("[data-live]");
        var current = document.querySelector("[data-live]");
        if (fresh && current) { current.replaceWith(fresh); }
      });
  }
  function poll() {
    fetch("/version", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (v) {
        if (v && String(v.version) !== seen) { seen = String(v.version); refresh(); }
      })
      .catch(function () {})
      .finally(function () { window.setTimeout(poll, 2000); });
  }
  window.setTimeout(poll, 2000);
})();
