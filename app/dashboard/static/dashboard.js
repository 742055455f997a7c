// Lethe dashboard: keeps pages current while work runs. Pages are complete without this script.
(function () {
  "use strict";

  var REQUEST_POLL_MS = 2000;
  var LIST_POLL_MS = 5000;
  var LOGIN_PATH = "/dashboard/login";

  function fetchCurrent(url, accept) {
    return fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: accept } })
      .then(function (response) {
        if (response.redirected && new URL(response.url).pathname === LOGIN_PATH) {
          window.location.reload(); // the session ended: the reload lands on the login page
          return null;
        }
        return response.ok ? response : null;
      })
      .catch(function () { return null; }); // a network blip: try again on the next tick
  }

  function updateModel(section, model) {
    var boxes = section.querySelectorAll("[data-model]");
    for (var i = 0; i < boxes.length; i++) {
      if (boxes[i].getAttribute("data-model") !== model.model) continue;
      var bar = boxes[i].querySelector("progress");
      var text = boxes[i].querySelector("[data-role=progress-text]");
      var value = model.progress;
      if (bar && Number(bar.value) !== value) {
        bar.value = value;
        bar.textContent = value + " %";
      }
      var label = model.text; // worded by the server, as on the page
      // Only a changed text is written, so screen readers announce changes, not every poll.
      if (text && text.textContent !== label) text.textContent = label;
    }
  }

  function followRequest(section) {
    var url = section.getAttribute("data-live-url");
    var token = section.getAttribute("data-live-token");
    function tick() {
      fetchCurrent(url, "application/json").then(function (response) {
        return response ? response.json() : null;
      }).then(function (state) {
        if (state) {
          // A new status, attempt, verdict or report changes the page's structure: draw it again.
          if (state.token !== token) { window.location.reload(); return; }
          state.models.forEach(function (model) { updateModel(section, model); });
          if (!state.open) return;
        }
        window.setTimeout(tick, REQUEST_POLL_MS);
      });
    }
    window.setTimeout(tick, REQUEST_POLL_MS);
  }

  function followList(rows) {
    function tick() {
      if (document.hidden) { window.setTimeout(tick, LIST_POLL_MS); return; }
      fetchCurrent(window.location.href, "text/html").then(function (response) {
        return response ? response.text() : null;
      }).then(function (html) {
        if (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("request-rows");
          if (!fresh) return;
          // Never pull the rows from under the keyboard focus.
          if (!rows.contains(document.activeElement)) {
            rows.innerHTML = fresh.innerHTML;
            rows.setAttribute("data-open", fresh.getAttribute("data-open"));
          }
          if (fresh.getAttribute("data-open") !== "true") return;
        }
        window.setTimeout(tick, LIST_POLL_MS);
      });
    }
    window.setTimeout(tick, LIST_POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelector("[data-live-url]");
    if (live && live.getAttribute("data-open") === "true") followRequest(live);
    var rows = document.getElementById("request-rows");
    if (rows && rows.getAttribute("data-open") === "true") followList(rows);
    var printButtons = document.querySelectorAll("[data-print]");
    for (var i = 0; i < printButtons.length; i++) {
      printButtons[i].hidden = false;
      printButtons[i].addEventListener("click", function () { window.print(); });
    }
  });
})();
