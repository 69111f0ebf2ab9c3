// Kairos dashboard: live charts and counters. No inline script anywhere (the CSP has
// script-src 'self'); everything the page needs comes from this origin.
(function () {
  "use strict";
  var base = document.body.dataset.base || "";
  var banner = document.getElementById("banner");

  function reachable(ok) {
    if (banner) { banner.hidden = ok; }
  }

  function dark() {
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function chartSize(el) {
    return { width: Math.max(280, el.clientWidth || 600), height: 180 };
  }

  function lineChart(el, labels, colors) {
    var axis = dark() ? "#a3aab6" : "#5b6270";
    var series = [{}].concat(labels.map(function (label, i) {
      return { label: label, stroke: colors[i], width: 2, spanGaps: true };
    }));
    var size = chartSize(el);
    var data = [[]].concat(labels.map(function () { return []; }));
    var plot = new uPlot({
      width: size.width, height: size.height, series: series,
      axes: [{ stroke: axis }, { stroke: axis }],
      legend: { live: false }
    }, data, el);
    window.addEventListener("resize", function () { plot.setSize(chartSize(el)); });
    return { plot: plot, data: data };
  }

  function text(node, value) { if (node) { node.textContent = value; } }

  // Overview: one SSE frame a second.
  var live = document.getElementById("live");
  if (live && window.EventSource && window.uPlot) {
    var rps = lineChart(document.getElementById("chart-rps"), ["req/s", "errors %"], ["#1f5fd1", "#b3261e"]);
    var lat = lineChart(document.getElementById("chart-latency"), ["p50 ms", "p95 ms", "p99 ms"], ["#16794a", "#9a6200", "#b3261e"]);
    var keep = 300;
    var source = new EventSource(live.dataset.events);
    source.onmessage = function (event) {
      var f = JSON.parse(event.data);
      reachable(true);
      text(live.querySelector('[data-stat="rps"]'), f.rps.toFixed(1));
      ["p50", "p95", "p99"].forEach(function (k) {
        text(live.querySelector('[data-stat="' + k + '"]'), f[k] === null ? "–" : f[k].toFixed(2));
      });
      text(live.querySelector('[data-stat="error_rate"]'), (f.error_rate * 100).toFixed(2) + "%");
      text(live.querySelector('[data-stat="in_flight"]'), String(Math.round(f.in_flight)));
      text(live.querySelector('[data-stat="requests"]'), String(Math.round(f.requests)));
      push(rps, f.t, [f.rps, f.error_rate * 100]);
      push(lat, f.t, [f.p50, f.p95, f.p99]);
      var body = document.getElementById("top-routes");
      if (body) {
        body.replaceChildren.apply(body, f.top.map(function (r) {
          var tr = document.createElement("tr");
          [r.route, r.requests, r.errors, r.p50 === null ? "–" : r.p50, r.p99 === null ? "–" : r.p99].forEach(function (v) {
            var td = document.createElement("td"); td.textContent = String(v); tr.appendChild(td);
          });
          return tr;
        }));
      }
    };
    source.addEventListener("unreachable", function () { reachable(false); });
    source.onerror = function () { reachable(false); };

    function push(chart, t, values) {
      chart.data[0].push(t);
      values.forEach(function (v, i) { chart.data[i + 1].push(v); });
      if (chart.data[0].length > keep) { chart.data.forEach(function (col) { col.shift(); }); }
      chart.plot.setData(chart.data);
    }
  }

  // Metrics history: one chart from /metrics/data.
  var history = document.getElementById("history-chart");
  if (history && window.uPlot) {
    fetch(history.dataset.source, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) { throw new Error(String(response.status)); }
      reachable(true);
      return response.json();
    }).then(function (series) {
      text(document.getElementById("history-note"), series.x.length + " points");
      var chart = lineChart(history, [series.name], ["#1f5fd1"]);
      chart.plot.setData([series.x, series.y]);
    }).catch(function () { reachable(false); });
  }

  // htmx: a failed request means the gateway (or the dashboard) is unreachable.
  document.body.addEventListener("htmx:sendError", function () { reachable(false); });
  document.body.addEventListener("htmx:responseError", function (event) {
    if (event.detail.xhr && event.detail.xhr.status >= 502) { reachable(false); }
  });
  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) { reachable(true); }
  });
})();
