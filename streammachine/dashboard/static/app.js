// StreamMachine dashboard: polls api/status and api/history and redraws the page.
// The charts start from the dashboard's own history (the last minutes it recorded), so they
// have data at the first paint; later polls fetch only the points added since.
// Every value from the server is put in the page with textContent or as a computed number in
// an SVG attribute; never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const HISTORY = 60;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const token = new URLSearchParams(window.location.search).get("token");
  // Reads carry the operator token once the operator unlocked actions (ops.js), else the
  // read token of the address; never a cookie.
  function authHeaders() {
    const op = window.sessionStorage.getItem("sm-operator");
    const t = op || token;
    return t ? { Authorization: "Bearer " + t } : {};
  }
  const last = new Map(); // agent key -> {processed, at, rate}
  const history = new Map(); // agent key -> [rate, ...]
  const COLORS = { rate: "#2f7de1", lag: "#2f7de1", pending: "#d9822b", dead: "#cf222e" };
  // The server's history: kind -> Map(series key -> {meta, points}), and where it got to.
  const hist = { agents: new Map(), groups: new Map(), dead_letters: new Map() };
  const serverRates = new Map(); // instance + agent -> messages/s from the server's history
  let histSince = null;
  let histWindowMs = 900000;
  let historyLoads = 0;

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

  // Rates come from successive heartbeats of one instance (its own clock), not from polls;
  // until the page has seen two, the rate the server's history computed stands in.
  function rateOf(inst, agent) {
    const key = inst.id + "\u0000" + agent.name;
    const processed = (agent.stats && agent.stats.processed) || 0;
    const at = inst.heartbeat_at;
    const seen = last.get(key);
    if (!seen) {
      const known = serverRates.has(key) ? serverRates.get(key) : null;
      last.set(key, { processed, at, rate: known });
      history.set(key, known === null ? [] : [known]);
      return { rate: known, series: history.get(key) };
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
          cell(inst.app), cell(instanceLabel(inst)),
          cell(a.name + (a.paused ? " · paused" : "") +
            (st.overdue ? " · " + num(st.overdue) + " past timeout" : ""), st.overdue ? "bad" : ""),
          cell(a.stream), cell(a.group),
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
          cell(g && g.owner ? g.owner : "", "mono"),
          cell(g && g.paused_agents && g.paused_agents.length ? g.paused_agents.join(", ") : "", "warn"),
          cell(g && window.SMOps ? window.SMOps.groupButtons(s.stream, g.name) : ""),
        ], n === 0 ? "first" : "more"));
      });
    }
    fill("streams", rows, "No streams.");
    document.getElementById("truncated").hidden = !data.streams_truncated;
  }

  function renderDead(data) {
    fill("dead", data.dead_letters.map((d) => tr([
      cell(d.stream), cell(d.dead_stream), cell(num(d.count), d.count ? "num bad" : "num"),
      cell(window.SMOps ? window.SMOps.deadButton(d.stream) : ""),
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


  // --- charts from the history -------------------------------------------------------------

  function seriesKey(kind, meta) {
    if (kind === "agents") return meta.app + "\u0000" + meta.agent;
    if (kind === "groups") return meta.stream + "\u0000" + meta.group;
    return meta.dead_stream;
  }

  function mergeHistory(data) {
    histWindowMs = (data.window_s || 900) * 1000;
    for (const kind of ["agents", "groups", "dead_letters"]) {
      for (const s of data[kind] || []) {
        const key = seriesKey(kind, s);
        let entry = hist[kind].get(key);
        if (!entry) {
          entry = { meta: s, points: [] };
          hist[kind].set(key, entry);
        }
        const lastT = entry.points.length ? entry.points[entry.points.length - 1][0] : -1;
        for (const p of s.points) if (p[0] > lastT) entry.points.push(p);
      }
    }
    if (data.generated_at_ms !== null && data.generated_at_ms !== undefined) {
      histSince = data.generated_at_ms;
    }
    const oldest = (histSince || 0) - histWindowMs;
    for (const kind of Object.keys(hist)) {
      for (const [key, entry] of hist[kind]) {
        while (entry.points.length && entry.points[0][0] < oldest) entry.points.shift();
        if (!entry.points.length) hist[kind].delete(key);
      }
    }
    serverRates.clear();
    for (const r of data.instance_rates || []) serverRates.set(r.instance + "\u0000" + r.agent, r.rate);
    historyLoads += 1;
  }

  // A line chart of one or more series over the history window; values drawn from 0 up.
  function lineChart(lines, unit) {
    const w = 360, h = 120, left = 44, bottom = 16, top = 6;
    const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: "line", role: "img" });
    chart.appendChild(svg("rect", { x: left, y: top, width: w - left - 4, height: h - top - bottom, fill: "#fafbfc" }));
    const all = lines.flatMap((l) => l.points.filter((p) => p[1] !== null && p[1] !== undefined));
    const end = histSince || (all.length ? Math.max(...all.map((p) => p[0])) : Date.now());
    // The x axis spans the data kept (at least a minute), up to the whole window.
    const first = all.length ? Math.min(...all.map((p) => p[0])) : end;
    const span = Math.min(histWindowMs, Math.max(60000, end - first));
    const start = end - span;
    const highest = Math.max(0, ...all.map((p) => p[1]));
    const max = highest > 0 ? highest : 1; // all zero: an axis from 0 to 1, not 0 to 0
    const x = (t) => left + ((t - start) / span) * (w - left - 4);
    const y = (v) => top + (h - top - bottom) * (1 - v / max);
    for (const frac of [0, 0.5, 1]) {
      const yy = y(max * frac);
      chart.appendChild(svg("line", { x1: left, x2: w - 4, y1: yy, y2: yy, class: "grid" }));
      const label = svg("text", { x: left - 4, y: yy + 4, "text-anchor": "end", class: "axis" });
      label.textContent = num(max * frac);
      chart.appendChild(label);
    }
    const ago = span >= 120000 ? `-${Math.round(span / 60000)} min` : `-${Math.round(span / 1000)} s`;
    for (const [t, text, anchor] of [[start, ago, "start"], [end, "now", "end"]]) {
      const label = svg("text", { x: x(t), y: h - 3, "text-anchor": anchor, class: "axis" });
      label.textContent = text;
      chart.appendChild(label);
    }
    for (const l of lines) {
      const pts = l.points.filter((p) => p[1] !== null && p[1] !== undefined)
        .map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
      if (pts.length === 1) pts.push(`${(x(end)).toFixed(1)},${pts[0].split(",")[1]}`);
      if (!pts.length) continue;
      chart.appendChild(svg("polyline", {
        points: pts.join(" "), fill: "none", stroke: l.color, "stroke-width": 1.5, "data-series": l.name,
      }));
    }
    chart.setAttribute("aria-label", unit);
    return chart;
  }

  function figure(kind, caption, chart, points) {
    const fig = el("figure", null, "chart small " + kind);
    fig.appendChild(caption);
    fig.appendChild(chart);
    fig.dataset.points = String(points);
    return fig;
  }

  function lastValue(points, i) {
    for (let n = points.length - 1; n >= 0; n--) if (points[n][i] !== null) return points[n][i];
    return null;
  }

  function renderCharts() {
    const minutes = Math.round(histWindowMs / 60000);
    document.getElementById("window").textContent = `(messages/s; up to the last ${minutes} min)`;
    const tp = [...hist.agents.values()].map(({ meta, points }) => {
      const cap = el("figcaption", `${meta.app} · ${meta.agent} · ${meta.stream}/${meta.group} · ${num(lastValue(points, 1))}/s`);
      const line = points.map((p) => [p[0], p[1]]);
      return figure("throughput", cap, lineChart([{ name: "rate", color: COLORS.rate, points: line }], "messages/s"), points.length);
    });
    if (!tp.length) tp.push(el("p", "No agent has reported a rate yet.", "muted"));
    document.getElementById("throughput").replaceChildren(...tp);

    const lag = [...hist.groups.values()].map(({ meta, points }) => {
      const cap = el("figcaption", `${meta.stream} · ${meta.group} `);
      const legend = el("span", null, "legend");
      const l1 = el("span", `lag ${num(lastValue(points, 1))}`, "lag");
      const l2 = el("span", ` pending ${num(lastValue(points, 2))}`, "pending");
      legend.append(l1, l2);
      cap.appendChild(legend);
      const chart = lineChart([
        { name: "lag", color: COLORS.lag, points: points.map((p) => [p[0], p[1]]) },
        { name: "pending", color: COLORS.pending, points: points.map((p) => [p[0], p[2]]) },
      ], "entries");
      return figure("lag", cap, chart, points.length);
    });
    if (!lag.length) lag.push(el("p", "No consumer groups.", "muted"));
    document.getElementById("lag").replaceChildren(...lag);

    const dead = [...hist.dead_letters.values()].map(({ meta, points }) => {
      const cap = el("figcaption", `${meta.dead_stream} · ${num(lastValue(points, 1))} entries`);
      return figure("dead", cap, lineChart([{ name: "dead", color: COLORS.dead, points }], "entries"), points.length);
    });
    document.getElementById("dead-history").hidden = !dead.length;
    document.getElementById("dead-charts").replaceChildren(...dead);
    document.body.dataset.historyLoads = String(historyLoads);
    if (historyLoads === 1) {
      // What the first paint had (the browser test reads it; nothing else does).
      const fewest = (m) => (m.size ? Math.min(...[...m.values()].map((s) => s.points.length)) : 0);
      document.body.dataset.firstAgentPoints = String(fewest(hist.agents));
      document.body.dataset.firstGroupPoints = String(fewest(hist.groups));
    }
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
    if (window.SMOps) window.SMOps.render(data);
  }

  async function poll() {
    try {
      const since = histSince === null ? "" : "?since=" + histSince;
      const [response, past] = await Promise.all([
        fetch("api/status", { headers: authHeaders(), cache: "no-store" }),
        fetch("api/history" + since, { headers: authHeaders(), cache: "no-store" }),
      ]);
      if (response.status === 401) showError("401: this dashboard needs ?token=… in its address.");
      else {
        // History first: the agent table's first rates come from it.
        if (past.ok) {
          mergeHistory(await past.json());
          renderCharts();
        }
        render(await response.json());
      }
    } catch (err) {
      showError("cannot reach the dashboard server: " + err);
    } finally {
      window.setTimeout(poll, REFRESH_MS);
    }
  }

  // What ops.js shares of this page's helpers.
  window.SM = { authHeaders, el, cell, tr, fill, num, duration };
  poll();
})();
