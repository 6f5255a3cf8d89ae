// StreamMachine dashboard: polls api/status and redraws the page.
// Every value from the server is put in the page with textContent or as a computed number in
// an SVG attribute; never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const HISTORY = 60;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const token = new URLSearchParams(window.location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const last = new Map(); // agent key -> {processed, at, rate}
  const history = new Map(); // agent key -> [rate, ...]

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  }

  // A table cell: numbers right-aligned; a Node is appended as is.
  function cell(value, cls) {
    const td = el("td", null, cls);
    if (value instanceof Node) td.appendChild(value);
    else td.textContent = value === null || value === undefined ? "—" : String(value);
    return td;
  }

  function fill(id, rows, empty) {
    const body = document.querySelector("#" + id + " tbody");
    const width = document.querySelectorAll("#" + id + " thead th").length;
    if (!rows.length) {
      const td = el("td", empty, "muted");
      td.colSpan = width;
      const tr = el("tr");
      tr.appendChild(td);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...rows);
  }

  function tr(cells, cls) {
    const r = el("tr", null, cls);
    for (const c of cells) r.appendChild(c);
    return r;
  }

  function num(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return "—";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: 2 });
  }

  function duration(s) {
    if (s === null || s === undefined) return "—";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function intervalName(ms) {
    const units = [[86400000, "d"], [3600000, "h"], [60000, "m"], [1000, "s"]];
    for (const [size, unit] of units) if (ms % size === 0) return ms / size + unit;
    return ms + "ms";
  }

  function sparkline(values) {
    const w = 120, h = 24;
    const s = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "spark" });
    s.appendChild(svg("rect", { x: 0, y: 0, width: w, height: h, fill: "#f3f6fa" }));
    if (!values.length) return s;
    const max = Math.max(1e-9, ...values);
    const step = values.length > 1 ? w / (HISTORY - 1) : 0;
    const x0 = w - step * (values.length - 1);
    const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
    if (pts.length === 1) pts.push(`${w},${pts[0].split(",")[1]}`);
    s.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#2f7de1", "stroke-width": 1.5 }));
    return s;
  }

  // Rates come from successive heartbeats of one instance (its own clock), not from polls.
  function rateOf(inst, agent) {
    const key = inst.id + "\u0000" + agent.name;
    const processed = (agent.stats && agent.stats.processed) || 0;
    const at = inst.heartbeat_at;
    const seen = last.get(key);
    if (!seen) {
      last.set(key, { processed, at, rate: null });
      history.set(key, []);
      return { rate: null, series: [] };
    }
    if (at > seen.at) {
      seen.rate = Math.max(0, (processed - seen.processed) / (at - seen.at));
      seen.processed = processed;
      seen.at = at;
      const series = history.get(key);
      series.push(seen.rate);
      if (series.length > HISTORY) series.shift();
    }
    return { rate: seen.rate, series: history.get(key) };
  }

  function instanceLabel(inst) {
    return `${inst.host}:${inst.pid}`;
  }

  function renderInstances(data) {
    const now = data.generated_at_ms / 1000;
    fill("instances", data.instances.map((i) => tr([
      cell(i.app), cell(i.id), cell(i.host), cell(i.pid, "num"), cell(i.version),
      cell(duration(Math.max(0, now - i.started_at)), "num"),
      cell(duration(i.heartbeat_age_s) + " ago", "num"),
      cell(i.fresh ? "up" : "late", i.fresh ? "ok" : "bad"),
      cell((i.agents || []).length, "num"), cell((i.timers || []).length, "num"),
    ])), "No running instance is registered.");
  }

  function renderAgents(data) {
    const rows = [];
    for (const inst of data.instances) {
      for (const a of inst.agents || []) {
        const st = a.stats || {};
        const calls = (st.latency_buckets || []).reduce((x, y) => x + y, 0);
        const { rate, series } = rateOf(inst, a);
        rows.push(tr([
          cell(inst.app), cell(instanceLabel(inst)), cell(a.name), cell(a.stream), cell(a.group),
          cell(a.concurrency, "num"), cell(num(st.processed), "num"),
          cell(rate === null ? "…" : num(rate), "num"), cell(sparkline(series)),
          cell(num(st.failed), st.failed ? "num bad" : "num"), cell(num(st.retried), "num"),
          cell(num(st.dead), st.dead ? "num bad" : "num"),
          cell(calls ? duration(st.latency_s_total / calls) : "—", "num"),
        ]));
      }
    }
    fill("agents", rows, "No agents.");
  }

  function renderStreams(data) {
    const rows = [];
    const many = "> " + num(data.lag_scan_limit);
    for (const s of data.streams) {
      const groups = s.groups.length ? s.groups : [null];
      groups.forEach((g, n) => {
        const lag = g ? (g.lag === null ? many : num(g.lag)) : "—";
        rows.push(tr([
          cell(n === 0 ? s.stream : "", s.dead_letter ? "name dead" : "name"),
          cell(n === 0 ? num(s.length) : "", "num"), cell(n === 0 ? s.last_id : "", "mono"),
          cell(g ? g.name : "—"), cell(g ? g.consumers : "—", "num"),
          cell(g ? num(g.pending) : "—", g && g.pending ? "num warn" : "num"),
          cell(lag, g && g.lag !== 0 ? "num warn" : "num"),
          cell(g ? duration(g.oldest_pending_age_s) : "—", "num"),
        ], n === 0 ? "first" : "more"));
      });
    }
    fill("streams", rows, "No streams.");
    document.getElementById("truncated").hidden = !data.streams_truncated;
  }

  function renderDead(data) {
    fill("dead", data.dead_letters.map((d) => tr([
      cell(d.stream), cell(d.dead_stream), cell(num(d.count), d.count ? "num bad" : "num"),
    ])), "No dead-letter streams.");
  }

  function renderTimers(data) {
    const rows = [];
    for (const inst of data.instances) {
      for (const t of inst.timers || []) {
        rows.push(tr([
          cell(inst.app), cell(instanceLabel(inst)), cell(t.name), cell(duration(t.interval_s), "num"),
          cell(num(t.runs), "num"), cell(num(t.failures), t.failures ? "num bad" : "num"),
        ]));
      }
    }
    fill("timers", rows, "No timers.");
  }

  function candleChart(series) {
    const w = 640, h = 200, pad = 48;
    const cs = series.candles;
    const lo = Math.min(...cs.map((c) => c.low));
    const hi = Math.max(...cs.map((c) => c.high));
    const span = hi - lo || Math.abs(hi) || 1;
    const y = (p) => 8 + (h - 16) * (1 - (p - lo) / span);
    const step = (w - pad) / Math.max(cs.length, 20);
    const body = Math.max(1, step * 0.6);
    const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: "candles", role: "img" });
    chart.appendChild(svg("rect", { x: 0, y: 0, width: w - pad, height: h, fill: "#fafbfc" }));
    cs.forEach((c, i) => {
      const x = i * step + step / 2;
      const up = c.close >= c.open;
      const color = up ? "#1a9850" : "#d73027";
      chart.appendChild(svg("line", { x1: x, x2: x, y1: y(c.high), y2: y(c.low), stroke: color }));
      const top = y(Math.max(c.open, c.close));
      chart.appendChild(svg("rect", {
        x: x - body / 2, y: top, width: body, height: Math.max(1, y(Math.min(c.open, c.close)) - top), fill: color,
      }));
    });
    for (const [p, yy] of [[hi, 14], [lo, h - 4]]) {
      const t = svg("text", { x: w - pad + 4, y: yy, class: "axis" });
      t.textContent = num(p);
      chart.appendChild(t);
    }
    return chart;
  }

  function renderCandles(data) {
    const box = document.getElementById("candles");
    const figures = data.candles.filter((s) => s.candles.length).map((s) => {
      const fig = el("figure", null, "chart");
      const lastC = s.candles[s.candles.length - 1];
      fig.appendChild(el("figcaption", `${s.symbol} · ${intervalName(s.interval_ms)} · ${s.stream} · close ${num(lastC.close)}`));
      fig.appendChild(candleChart(s));
      return fig;
    });
    if (!figures.length) figures.push(el("p", "No candle streams.", "muted"));
    box.replaceChildren(...figures);
  }

  function showError(text) {
    const box = document.getElementById("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function render(data) {
    const redis = document.getElementById("redis");
    redis.textContent = data.redis.ok ? "Redis up" : "Redis down";
    redis.className = "badge " + (data.redis.ok ? "ok" : "bad");
    showError(data.redis.ok ? "" : data.redis.error);
    if (!data.redis.ok) return;
    document.getElementById("summary").textContent =
      `${data.instances.length} instances · ${data.streams.length} streams · updated ` +
      new Date(data.generated_at_ms).toLocaleTimeString();
    renderInstances(data);
    renderAgents(data);
    renderStreams(data);
    renderDead(data);
    renderTimers(data);
    renderCandles(data);
  }

  async function poll() {
    try {
      const response = await fetch("api/status", { headers, cache: "no-store" });
      if (response.status === 401) showError("401: this dashboard needs ?token=… in its address.");
      else render(await response.json());
    } catch (err) {
      showError("cannot reach the dashboard server: " + err);
    } finally {
      window.setTimeout(poll, REFRESH_MS);
    }
  }

  poll();
})();
