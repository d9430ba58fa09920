// The execution page's live view: polls the dashboard's JSON twin of GET /api/executions/<id>
// until the execution ends, then reloads once so the page shows its finished state and buttons.
"use strict";
(function () {
  var section = document.getElementById("execution");
  if (!section || section.dataset.finished === "true") return;
  var FINISHED = ["Success", "Failed", "Cancelled"];
  var url = section.dataset.liveUrl;
  var shownLogs = document.getElementById("logs").children.length;

  function show(data) {
    var badge = document.querySelector("#status .status");
    badge.textContent = data.status;
    badge.className = "status status-" + data.status.toLowerCase();
    document.getElementById("stage").textContent = data.stage || "";
    document.getElementById("progress").value = data.progress;
    document.getElementById("progress-text").textContent = data.progress;
    var list = document.getElementById("logs");
    (data.logs || []).slice(shownLogs).forEach(function (line) {
      var item = document.createElement("li");
      item.className = "log-" + line.level;
      var time = document.createElement("time");
      time.textContent = line.timestamp.slice(11, 19);
      var stage = document.createElement("span");
      stage.className = "stage";
      stage.textContent = line.stage || "";
      item.append(time, " ", stage, " " + line.message);
      list.appendChild(item);
    });
    shownLogs = Math.max(shownLogs, (data.logs || []).length);
    if (data.error) {
      var error = document.getElementById("error");
      error.textContent = data.error;
      error.hidden = false;
    }
  }

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
        return response.json();
      })
      .then(function (answer) {
        show(answer.data);
        // A backup is Success before its worker has applied retention: wait for that too.
        if (FINISHED.indexOf(answer.data.status) >= 0 && answer.data.stage !== "Applying Retention") {
          window.location.reload();
        } else {
          window.setTimeout(poll, 1000);
        }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  window.setTimeout(poll, 500);
})();
