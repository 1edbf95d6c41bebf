/* pyrecover dashboard: live updates by polling, charts with the vendored uPlot, run actions.
 *
 * No build step. Everything the server renders works without this file; the script only keeps
 * pages fresh (it swaps server-rendered fragments marked data-live), draws the charts and sends
 * actions with the page's CSRF token. window.pyrecover exposes the charts' data for tests.
 */
(function () {
  "use strict";

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrfToken = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var state = { charts: {}, series: null, polls: 0 };
  window.pyrecover = state;

  /* Replace every [data-live] element of the page by its fresh copy (matched by id). */
  function swapFragments(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll("[data-live]").forEach(function (fresh) {
      var old = document.getElementById(fresh.id);
      if (old) old.replaceWith(document.importNode(fresh, true));
    });
  }

  function refreshFragments(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(function (resp) {
      if (resp.status === 401 || resp.status === 403) { window.location.reload(); return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.text().then(swapFragments);
    });
  }

  /* Call fn every ms milliseconds while the tab is visible; back off (up to 60 s) on errors. */
  function every(ms, fn) {
    var delay = ms;
    function tick() {
      if (document.hidden) { setTimeout(tick, ms); return; }
      Promise.resolve().then(fn).then(function () { delay = ms; }, function () {
        delay = Math.min(delay * 2, 60000);
      }).then(function () { setTimeout(tick, delay); });
    }
    setTimeout(tick, ms);
  }

  /* ---- charts ---------------------------------------------------------------------------- */

  var COLORS = { loss: "#dc2626", lr: "#059669", tokens_per_s: "#2563eb", mfu: "#7c3aed" };

  /* Attempt boundaries: a dashed vertical line and its label ("#4", or "#9–#13" for resumes too close
   * to tell apart, merged by the server) where attempts resumed; labels alternate between two rows
   * so that neighbours do not overprint each other. */
  function boundaryPlugin() {
    return {
      hooks: {
        draw: [function (u) {
          var series = state.series;
          if (!series || !series.markers) return;
          var ctx = u.ctx;
          var px = devicePixelRatio;
          ctx.save();
          ctx.strokeStyle = "rgba(55, 65, 81, 0.6)";
          ctx.fillStyle = "#1f2937";
          ctx.setLineDash([4, 4]);
          ctx.lineWidth = 1;
          ctx.font = 11 * px + "px sans-serif";
          series.markers.forEach(function (m, i) {
            var x = Math.round(u.valToPos(m.step, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(m.label, x + 3 * px, u.bbox.top + (i % 2 ? 24 : 12) * px);
          });
          ctx.restore();
        }],
      },
    };
  }

  /* The legend shows the last point whenever the cursor is not over the chart (uPlot's own legend
   * would read "--" until the first hover). */
  function lastValueLegend(u) {
    if (u.cursor.idx == null && u.data[0].length) u.setLegend({ idx: u.data[0].length - 1 });
  }

  /* Axis labels that stay readable for a learning rate (3e-4) as well as for tokens/s (41,000). */
  function tick(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a < 0.01 || a >= 1e6) return v.toExponential(1);
    return Number(v.toPrecision(4)).toLocaleString();
  }

  /* Four significant digits in the legend: uPlot's default rounds a learning rate of 4e-5 to 0. */
  function legendValue(v) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e6)) return v.toExponential(3);
    return Number(v.toPrecision(4)).toLocaleString();
  }

  function chartWidth(el) { return Math.max(280, el.clientWidth - 8); }

  function drawChart(key, points) {
    var box = document.getElementById("chart-" + key);
    if (!box || typeof uPlot === "undefined") return;
    var plot = box.querySelector(".plot");
    var data = [points.x, points.y];
    var chart = state.charts[key];
    if (!points.x.length) {
      if (!chart) plot.innerHTML = '<div class="empty">no data yet</div>';
      return;
    }
    if (box.hidden) {  // MFU hidden as "not measured" until a point carries one
      box.hidden = false;
      var note = document.getElementById("mfu-note");
      if (note) note.remove();
    }
    if (chart) { chart.setData(data); lastValueLegend(chart); return; }
    plot.innerHTML = "";
    var toggle = box.querySelector("input[data-log-scale]");
    // A log axis needs every value above zero; otherwise the box is unticked and disabled.
    var positive = points.y.every(function (v) { return v > 0; });
    if (toggle && !positive) { toggle.checked = false; toggle.disabled = true; }
    var log = Boolean(toggle && toggle.checked);
    chart = new uPlot({
      width: chartWidth(box), height: 220,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      axes: [{ label: "step" }, { size: 64, values: function (u, vals) { return vals.map(tick); } }],
      series: [{ label: "step" }, {
        label: key, stroke: COLORS[key] || "#111", width: 1.25, points: { show: false },
        value: function (u, v) { return v == null ? "--" : legendValue(v); },
      }],
      plugins: [boundaryPlugin()],
      hooks: { setCursor: [lastValueLegend] },
    }, data, plot);
    lastValueLegend(chart);
    state.charts[key] = chart;
  }

  /* "log scale" boxes: redraw that chart on the other axis with the data it already has. */
  function bindLogToggles(container) {
    container.addEventListener("change", function (event) {
      var key = event.target.dataset ? event.target.dataset.logScale : undefined;
      if (!key || !state.charts[key] || !state.series) return;
      state.charts[key].destroy();
      delete state.charts[key];
      drawChart(key, state.series.metrics[key]);
    });
  }

  function refreshCharts(container) {
    return fetch(container.dataset.seriesUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.json();
      }).then(function (series) {
        state.series = series;
        Object.keys(series.metrics).forEach(function (key) { drawChart(key, series.metrics[key]); });
        state.polls += 1;
        container.dataset.loaded = String(state.polls);
      });
  }

  /* ---- actions --------------------------------------------------------------------------- */

  function showMessage(text, ok) {
    var box = document.getElementById("action-message");
    if (!box) return;
    box.textContent = text;
    box.className = "flash " + (ok ? "ok" : "error");
    box.hidden = false;
  }

  function bindActions(live) {
    live.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button) return;
      var action = button.dataset.action;
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      fetch(live.dataset.actionUrl.replace("ACTION", action), {
        method: "POST", credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrfToken },
      }).then(function (resp) {
        return resp.json().catch(function () { return { message: "HTTP " + resp.status }; }).then(function (body) {
          showMessage(body.message || (resp.ok ? "done" : "HTTP " + resp.status), resp.ok);
        });
      }).catch(function (err) { showMessage(String(err), false); })
        .then(function () { return refreshFragments(live.dataset.pollUrl); })
        .finally(function () { button.disabled = false; });
    });
  }

  /* ---- pages ----------------------------------------------------------------------------- */

  var runsLive = document.getElementById("runs-live");
  if (runsLive) {
    every(Number(runsLive.dataset.pollMs), function () { return refreshFragments(runsLive.dataset.pollUrl); });
  }

  var runLive = document.getElementById("run-live");
  if (runLive) {
    bindActions(runLive);
    var pollMs = Number(runLive.dataset.pollMs);
    every(pollMs, function () { return refreshFragments(runLive.dataset.pollUrl); });
    var charts = document.getElementById("charts");
    bindLogToggles(charts);
    refreshCharts(charts).catch(function (err) { showMessage("cannot load metrics: " + err, false); });
    every(pollMs, function () { return refreshCharts(charts); });
    window.addEventListener("resize", function () {
      Object.keys(state.charts).forEach(function (key) {
        var box = document.getElementById("chart-" + key);
        state.charts[key].setSize({ width: chartWidth(box), height: 220 });
      });
    });
  }
})();
