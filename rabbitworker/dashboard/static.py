"""The dashboard's own stylesheet and script, served from memory: no CDN, no
third-party files. The script polls `/api/status` and redraws the queue table and
its charts (SVG polylines of depth and handled rate)."""

from __future__ import annotations

__all__ = ["SCRIPT", "STYLE"]

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
header { background: #243447; color: #fff; padding: 8px 16px; display: flex; gap: 18px;
  align-items: baseline; }
header a { color: #cfe3ff; text-decoration: none; } header a:hover { text-decoration: underline; }
header .app { font-weight: 600; } header .broker { margin-left: auto; opacity: .7; }
main { padding: 16px; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e3e6ea; text-align: right; }
th { background: #eef1f4; font-weight: 600; }
td.name, th.name, td.text { text-align: left; }
td.when { white-space: nowrap; }
td.bad { color: #b3261e; font-weight: 600; }
pre { margin: 4px 0; white-space: pre-wrap; max-width: 70ch; }
.note { padding: 6px 10px; background: #e6f4ea; border: 1px solid #b7dfc2; margin-bottom: 12px; }
.error { padding: 6px 10px; background: #fdecea; border: 1px solid #f5c2bd; margin-bottom: 12px; }
.muted { color: #68737d; }
svg.chart { width: 180px; height: 40px; background: #fafbfc; border: 1px solid #e3e6ea; }
svg .depth { fill: none; stroke: #2f6fde; stroke-width: 1.5; }
svg .rate { fill: none; stroke: #1e8e3e; stroke-width: 1.5; stroke-dasharray: 3 2; }
.legend .depth { color: #2f6fde; } .legend .rate { color: #1e8e3e; }
button { padding: 4px 10px; margin-right: 6px; }
button.danger { color: #fff; background: #b3261e; border: 1px solid #8c1d18; }
form.inline { display: inline; }
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("queues");
  if (!table) { return; }
  var period = Number(table.dataset.interval || "2") * 1000;
  var keys = ["ready", "unacked", "consumers", "retrying", "suspects", "dead_letters",
              "deliver_rate"];

  function show(value) {
    if (value === null || value === undefined) { return "-"; }
    return typeof value === "number" && !Number.isInteger(value) ? value.toFixed(1) : String(value);
  }

  function line(points, index, width, height) {
    var usable = points.filter(function (p) { return p[index] !== null; });
    if (usable.length === 0) { return ""; }
    var t0 = points[0][0], span = Math.max(1, points[points.length - 1][0] - t0);
    var top = Math.max(1, Math.max.apply(null, usable.map(function (p) { return p[index]; })));
    return usable.map(function (p) {
      var x = (p[0] - t0) / span * width, y = height - 2 - p[index] / top * (height - 4);
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
  }

  function draw(svg, points) {
    if (!svg || !points || points.length === 0) { return; }
    svg.querySelector(".depth").setAttribute("points", line(points, 1, 180, 40));
    svg.querySelector(".rate").setAttribute("points", line(points, 2, 180, 40));
    var last = points[points.length - 1];
    svg.querySelector("title").textContent =
      "ready now " + show(last[1]) + ", handled/s " + show(last[2]) +
      " (last " + Math.round((last[0] - points[0][0]) / 60) + " min)";
  }

  function update(data) {
    var rows = {};
    table.querySelectorAll("tr[data-queue]").forEach(function (tr) {
      rows[tr.dataset.queue] = tr;
    });
    if (data.rows.some(function (row) { return !rows[row.queue]; })) {
      window.location.reload();  // the page was drawn before the broker answered
      return;
    }
    data.rows.forEach(function (row) {
      var tr = rows[row.queue];
      keys.forEach(function (key) {
        var cell = tr.querySelector("[data-key='" + key + "']");
        if (cell) { cell.textContent = show(row[key]); }
      });
      tr.querySelector("[data-key='dead_letters']").classList.toggle("bad", row.dead_letters > 0);
      draw(tr.querySelector("svg.chart"), data.history[row.queue]);
    });
    var state = document.getElementById("updated");
    state.textContent = data.error ? "error: " + data.error : "updated " +
      new Date(data.time * 1000).toLocaleTimeString();
    state.className = data.error ? "error" : "muted";
  }

  function refresh() {
    fetch("/api/status", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(update)
      .catch(function (e) { document.getElementById("updated").textContent = "offline: " + e; })
      .finally(function () { setTimeout(refresh, period); });
  }
  refresh();
})();
"""
