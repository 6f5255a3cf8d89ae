// StreamMachine dashboard: the State panel. Reads the state API (read-only): api/tables (the
// app's tables), api/tables/<name> (one page of keys and values, by prefix and cursor),
// api/windows (each window agent's watermark, lag, open windows and late entries per partition)
// and api/windows/<name> (its open windows with their current values).
// Values come from Redis and may hold anything: they are put in the page with textContent,
// never as HTML.
"use strict";

(function () {
  const SM = window.SM;
  const REFRESH_MS = 5000;
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => SM.el(tag, text, cls);
  // The table browser: which table, the prefix, the cursors of the pages before this one.
  const browse = { table: null, prefix: "", cursor: null, back: [], next: null };
  let windowName = null;

  function showError(text) {
    const box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  async function getJSON(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined && v !== "") q.append(k, v);
    }
    const url = path + (q.toString() ? "?" + q.toString() : "");
    const r = await fetch(url, { headers: SM.authHeaders(), cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status);
    return body;
  }

  async function guarded(fn) {
    try {
      await fn();
    } catch (err) {
      showError(String(err.message || err));
    }
  }

  function button(label, onClick) {
    const b = el("button", label, "browse");
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  // Event times are ms since the epoch when they look like one; else shown as the number.
  function when(ms) {
    if (ms === null || ms === undefined) return "—";
    return ms > 1e12 ? new Date(ms).toISOString() : SM.num(ms) + " ms";
  }

  function seconds(ms) {
    return ms === null || ms === undefined ? "—" : SM.duration(ms / 1000);
  }

  function json(value) {
    const text = JSON.stringify(value);
    return text === undefined ? "—" : text;
  }

  // --- tables -------------------------------------------------------------------------------

  function renderTables(tables) {
    const pick = $("table-pick");
    const chosen = pick.value || browse.table;
    pick.replaceChildren(...tables.map((t) => {
      const o = el("option", t.table);
      o.value = t.table;
      return o;
    }));
    if (chosen) pick.value = chosen;
    const rows = tables.map((t) => SM.tr([
      SM.cell(t.table, "mono"),
      SM.cell(t.partitioned ? "yes" : "no"),
      SM.cell(t.shards, "num"),
      SM.cell(SM.num(t.keys), "num"),
      SM.cell(t.ttl_ms !== null ? seconds(t.ttl_ms) : t.ttl_keys ? `${t.ttl_keys} keys expire` : "—"),
      SM.cell(t.stream, "mono"),
      SM.cell(button("Browse", () => {
        pick.value = t.table;
        open(t.table, "");
      })),
    ]));
    SM.fill("tables", rows, "No tables.");
  }

  function open(table, prefix) {
    Object.assign(browse, { table, prefix, cursor: null, back: [], next: null });
    $("table-panel").hidden = false;
    $("table-form").elements.prefix.value = prefix;
    guarded(loadPage);
  }

  async function loadPage() {
    if (!browse.table) return;
    const page = await getJSON("api/tables/" + encodeURIComponent(browse.table), {
      prefix: browse.prefix, cursor: browse.cursor, limit: PAGE,
    });
    browse.next = page.next;
    const rows = page.keys.map((r) => SM.tr([
      SM.cell(r.key, "mono"),
      SM.cell(json(r.value), "mono"),
      SM.cell(r.expires_in_ms === null ? "—" : seconds(r.expires_in_ms), "num"),
    ]));
    SM.fill("table-keys", rows, browse.prefix ? "No key with this prefix." : "No keys.");
    const first = browse.back.length * PAGE + 1;
    $("table-where").textContent = page.keys.length
      ? `${browse.table}: keys ${first}–${first + page.keys.length - 1} of ${page.matching}`
      : `${browse.table}: ${page.matching} keys`;
    $("table-prev").disabled = !browse.back.length;
    $("table-next").disabled = !browse.next;
    document.body.dataset.tableLoads = String(Number(document.body.dataset.tableLoads || 0) + 1);
  }

  // --- windows ------------------------------------------------------------------------------

  function renderWindows(data) {
    const rows = [];
    for (const w of data.windows) {
      const parts = w.partitions.length ? w.partitions : [null];
      parts.forEach((p, i) => {
        rows.push(SM.tr([
          SM.cell(i ? "" : w.name, "mono"),
          SM.cell(i ? "" : w.kind),
          SM.cell(i ? "" : seconds(w.grace_ms), "num"),
          SM.cell(p ? p.stream : "—", "mono"),
          SM.cell(p ? when(p.max_event_ms) : "—", "num"),
          SM.cell(p ? when(p.watermark_ms) : "—", "num"),
          SM.cell(p ? seconds(p.watermark_lag_ms) : "—", "num"),
          SM.cell(p ? SM.num(p.open_windows) : "—", "num"),
          SM.cell(p ? SM.num(p.late) : "—", "num " + (p && p.late ? "warn" : "")),
          SM.cell(i ? "" : SM.num(w.emitted), "num"),
          SM.cell(i ? "" : button("Open windows", () => {
            windowName = w.name;
            $("window-panel").hidden = false;
            guarded(loadWindow);
          })),
        ], i ? "more" : ""));
      });
    }
    SM.fill("windows", rows, "No window agent has state here.");
  }

  async function loadWindow() {
    if (!windowName) return;
    const key = $("window-form").elements.key.value;
    const found = await getJSON("api/windows/" + encodeURIComponent(windowName), { key, limit: 200 });
    $("window-name").textContent = found.name + " (" + found.kind + ")";
    const rows = found.windows.map((x) => SM.tr([
      SM.cell(x.stream, "mono"),
      SM.cell(x.key, "mono"),
      SM.cell(when(x.start), "num"),
      SM.cell(when(x.end), "num"),
      SM.cell(json(x.values), "mono"),
    ]));
    SM.fill("window-list", rows, "No open window.");
    const more = $("window-more");
    const notes = [];
    if (found.truncated) notes.push(`showing ${found.windows.length} of ${found.open_windows}`);
    for (const e of found.errors) notes.push(e);
    more.textContent = notes.join("; ");
    more.hidden = !notes.length;
  }

  // --- wiring -------------------------------------------------------------------------------

  async function poll() {
    try {
      const [tables, windows] = await Promise.all([getJSON("api/tables"), getJSON("api/windows")]);
      renderTables(tables.tables);
      renderWindows(windows);
      if (windowName) await loadWindow();
    } catch (err) {
      // api/status reports Redis being down; a 401 is said there too.
    } finally {
      window.setTimeout(poll, REFRESH_MS);
    }
  }

  $("table-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.target.elements;
    open(form.table.value, form.prefix.value);
  });
  $("table-next").addEventListener("click", () => {
    if (!browse.next) return;
    browse.back.push(browse.cursor);
    browse.cursor = browse.next;
    guarded(loadPage);
  });
  $("table-prev").addEventListener("click", () => {
    if (!browse.back.length) return;
    browse.cursor = browse.back.pop();
    guarded(loadPage);
  });
  $("window-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(loadWindow);
  });
  poll();
})();
