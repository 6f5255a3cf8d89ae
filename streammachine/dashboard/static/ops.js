// StreamMachine dashboard: the operator's side. Reads the operator API (agents, dead letters,
// pending entries, delayed entries, the inspector, the audit trail) and, once the operator
// token is entered, acts through POST api/actions/<name> with that token in the Authorization
// header (never a cookie). Destructive actions ask in a dialog first. Every value from the
// server is put in the page with textContent; never as HTML.
"use strict";

(function () {
  const SM = window.SM;
  const KEY = "sm-operator";
  let session = { actions: false, operator: false };
  let deadStream = null;
  let pendingAt = null;

  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => SM.el(tag, text, cls);

  function unlocked() {
    return session.operator && !!window.sessionStorage.getItem(KEY);
  }

  function button(label, cls, onClick) {
    const b = el("button", label, "op " + (cls || ""));
    b.type = "button";
    b.hidden = !unlocked();
    b.addEventListener("click", onClick);
    return b;
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  async function getJSON(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else if (v !== null && v !== undefined && v !== "") q.append(k, v);
    }
    const url = path + (q.toString() ? "?" + q.toString() : "");
    const r = await fetch(url, { headers: SM.authHeaders(), cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status);
    return body;
  }

  async function act(name, args) {
    const r = await fetch("api/actions/" + name, {
      method: "POST",
      headers: { ...SM.authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(args),
      cache: "no-store",
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status);
    document.body.dataset.lastAction = name;
    loadAudit();
    return body;
  }

  // A modal question; resolves true when the operator confirms. `lines` are shown as text.
  function ask(text, lines) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    const body = $("confirm-body");
    body.replaceChildren(...(lines || []).slice(0, 50).map((l) => el("div", l, "mono")));
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  // The same dialog with one text field; resolves its value, or null when cancelled.
  function askInput(text, value) {
    const input = el("input");
    input.id = "confirm-input";
    input.value = value || "";
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-body").replaceChildren(input);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? input.value.trim() : null), { once: true });
      dialog.showModal();
    });
  }

  async function guarded(fn) {
    try {
      showError("");
      await fn();
    } catch (err) {
      showError(String(err.message || err));
    }
  }

  // --- the session: read-only, or actions after the operator token ----------------------------

  async function loadSession() {
    try {
      session = await getJSON("api/session");
    } catch (err) {
      return;
    }
    if (!session.operator && window.sessionStorage.getItem(KEY)) {
      window.sessionStorage.removeItem(KEY); // a token the server does not take
    }
    $("unlock").hidden = !session.actions;
    $("op-token").hidden = $("op-unlock").hidden = unlocked();
    $("op-lock").hidden = !unlocked();
    const mode = $("mode");
    mode.textContent = !session.actions ? "read-only" : unlocked() ? "operator" : "locked";
    mode.className = "badge " + (unlocked() ? "ok" : "");
    document.body.dataset.operator = unlocked() ? "1" : "0";
    for (const b of document.querySelectorAll("button.op")) b.hidden = !unlocked();
  }

  $("unlock").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("op-token").value;
    if (!value) return;
    window.sessionStorage.setItem(KEY, value);
    $("op-token").value = "";
    guarded(async () => {
      await loadSession();
      if (!session.operator) throw new Error("that is not the operator token");
    });
  });
  $("op-lock").addEventListener("click", () => {
    window.sessionStorage.removeItem(KEY);
    loadSession();
  });

  // --- pause and resume ----------------------------------------------------------------------

  function state(a) {
    if (!a.paused) return a.paused_instances ? "pausing here" : "running";
    if (!a.instances) return "paused (not running)";
    return a.reading ? `pausing (${a.reading} still read)` : "paused";
  }

  function renderControl(data) {
    const rows = (data.agents || []).map((a) => {
      const label = a.paused ? "Resume" : "Pause";
      const b = button(label, a.paused ? "" : "danger", () => guarded(async () => {
        await act(a.paused ? "resume" : "pause", { app: a.app, agent: a.agent });
        b.disabled = true;
      }));
      b.dataset.app = a.app;
      b.dataset.agent = a.agent;
      return SM.tr([
        SM.cell(a.app), SM.cell(a.agent), SM.cell(a.stream), SM.cell(a.group),
        SM.cell(a.instances, "num"), SM.cell(state(a), a.paused ? "warn" : "ok"), SM.cell(b),
      ]);
    });
    SM.fill("control", rows, "No agents.");
  }

  // --- dead letters ----------------------------------------------------------------------------

  function deadFilter() {
    const f = new FormData($("dead-filter"));
    const where = (f.get("where") || "").trim();
    return {
      where: where ? [where] : [],
      error: f.get("error") || null,
      since: f.get("since") || null,
      until: f.get("until") || null,
    };
  }

  async function loadDead() {
    if (!deadStream) return;
    const page = await getJSON("api/dead", { stream: deadStream, ...deadFilter(), count: 100 });
    $("dead-stream").textContent = page.dead_stream;
    const rows = page.entries.map((d) => SM.tr([
      SM.cell(d.id, "mono"), SM.cell(d.source_id, "mono"), SM.cell(d.group),
      SM.cell(d.deliveries, "num"),
      SM.cell(d.failed_at ? new Date(d.failed_at * 1000).toLocaleString() : "—"),
      SM.cell(`${d.error_type}: ${d.error}`),
      SM.cell(actions([
        ["View", "", () => showDead(d.id)],
        ["Retry", "", () => guarded(async () => {
          const r = await act("dead.retry", { stream: deadStream, ids: [d.id] });
          report(r);
          await loadDead();
        })],
      ], true)),
    ], "dead-row"));
    SM.fill("dead-list", rows, "No dead letters match.");
    const more = $("dead-more");
    more.hidden = !page.next;
    more.textContent = page.next ? `More match than shown (${page.total} in all).` : "";
  }

  function actions(list, viewAlways) {
    const span = el("span", null, "acts");
    list.forEach(([label, cls, fn], i) => {
      const b = button(label, cls, fn);
      if (viewAlways && i === 0) {
        b.classList.remove("op");
        b.hidden = false;
      }
      span.appendChild(b);
    });
    return span;
  }

  function report(r) {
    if (r.stayed && r.stayed.length) {
      showError(`${r.stayed.length} stayed: ` + r.stayed.map((s) => `${s.id} (${s.reason})`).join("; "));
    }
  }

  async function showDead(id) {
    await guarded(async () => {
      const d = await getJSON("api/dead/entry", { stream: deadStream, id });
      const body = $("detail-body");
      const parts = [
        el("h3", `Dead letter ${d.id}`),
        el("p", `${d.error_type}: ${d.error}`, "bad"),
        el("p", `from ${d.source_stream} ${d.source_id} · group ${d.group} · ${d.deliveries} deliveries`),
        el("h4", "Message (decoded)"),
      ];
      const form = el("div", null, "edit");
      for (const [name, text] of Object.entries(d.message.fields)) {
        const row = el("label", null, "field");
        row.appendChild(el("span", name, "mono"));
        const input = el("input");
        input.value = text;
        input.dataset.field = name;
        const extra = d.message.decoded[name];
        // Binary values are shown escaped; sending them back edited would send the escapes.
        input.disabled = !unlocked() || !!(extra && extra.binary);
        row.appendChild(input);
        if (extra && (extra.json !== undefined || extra.msgpack !== undefined)) {
          row.appendChild(el("code", JSON.stringify(extra.json !== undefined ? extra.json : extra.msgpack)));
        }
        form.appendChild(row);
      }
      parts.push(form);
      parts.push(el("h4", "Raw (as stored)"));
      const raw = el("pre", d.raw.map(([k, v]) => `${k} ${v}`).join("\n"), "raw");
      parts.push(raw);
      if (d.traceback) {
        const tb = el("details", null);
        tb.append(el("summary", "Traceback"), el("pre", d.traceback));
        parts.push(tb);
      }
      const retry = button("Retry with these fields", "", () => guarded(async () => {
        const set = {};
        for (const input of form.querySelectorAll("input")) {
          if (input.value !== d.message.fields[input.dataset.field]) set[input.dataset.field] = input.value;
        }
        if (!Object.keys(set).length) {
          await act("dead.retry", { stream: deadStream, ids: [d.id] });
        } else {
          const lines = Object.entries(set).map(([k, v]) => `${k} = ${v}`);
          if (!(await ask(`Send dead letter ${d.id} back with these changes?`, lines))) return;
          report(await act("dead.edit_retry", { stream: deadStream, id: d.id, set, confirm: true }));
        }
        $("detail").close();
        await loadDead();
      }));
      retry.id = "detail-retry";
      parts.push(retry);
      body.replaceChildren(...parts);
      $("detail").showModal();
    });
  }

  $("dead-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(loadDead);
  });

  $("dead-retry-all").addEventListener("click", () => guarded(async () => {
    const args = { stream: deadStream, ...deadFilter() };
    const dry = await act("dead.retry", { ...args, dry_run: true });
    const lines = dry.replayed.map((r) => `${r.id} → ${r.source_stream} ${JSON.stringify(r.fields)}`);
    if (!(await ask(`Send ${dry.replayed.length} dead letters back?`, lines))) return;
    report(await act("dead.retry", args));
    await loadDead();
  }));

  $("dead-purge-all").addEventListener("click", () => guarded(async () => {
    const args = { stream: deadStream, ...deadFilter() };
    const dry = await act("dead.purge", { ...args, dry_run: true });
    if (!(await ask(`Delete ${dry.deleted.length} dead letters for good?`, dry.deleted))) return;
    await act("dead.purge", { ...args, confirm: true });
    await loadDead();
  }));

  // --- pending entries and rewind --------------------------------------------------------------

  async function loadPending() {
    if (!pendingAt) return;
    const { stream, group } = pendingAt;
    const found = await getJSON("api/pending", { stream, group, count: 100 });
    $("pending-where").textContent = `${stream} / ${group}`;
    const g = found.groups[0] || { entries: [] };
    const rows = g.entries.map((e) => SM.tr([
      SM.cell(e.id, "mono"), SM.cell(e.consumer, "mono"), SM.cell(SM.duration(e.idle_ms / 1000), "num"),
      SM.cell(e.deliveries, "num"), SM.cell(e.alive ? "yes" : "no", e.alive ? "ok" : "bad"),
      SM.cell(actions([
        ["Hand back", "", () => take("pending.hand_back", "Hand back", e)],
        ["Dead-letter", "danger", () => take("pending.dead_letter", "Dead-letter", e)],
      ])),
    ], "pending-row"));
    SM.fill("pending-list", rows, "Nothing is pending.");
    $("pending-panel").hidden = false;
  }

  function take(name, verb, e) {
    return guarded(async () => {
      const { stream, group } = pendingAt;
      const q = `${verb} ${e.id}, held by ${e.consumer} (process ${e.alive ? "alive" : "gone"})?`;
      if (!(await ask(q))) return;
      report(await act(name, { stream, group, ids: [e.id], consumer: e.consumer, confirm: true }));
      await loadPending();
    });
  }

  async function rewind(stream, group) {
    await guarded(async () => {
      const to = await askInput(`Rewind ${stream} / ${group} to: an id, a duration ago (10m), an ISO time, 0 (the whole stream) or $ (the end)`, "0");
      if (!to) return;
      const plan = await act("rewind", { stream, group, to, dry_run: true });
      const what = plan.again || !plan.skipped
        ? `${plan.capped ? "more than " : ""}${plan.again} entries will be handled again`
        : `${plan.capped ? "more than " : ""}${plan.skipped} entries will be skipped`;
      if (!(await ask(`Move ${stream} / ${group} from ${plan.from} to ${plan.to}? ${what}.`))) return;
      await act("rewind", { stream, group, to, confirm: true });
    });
  }

  // --- delayed entries -------------------------------------------------------------------------

  async function loadScheduled() {
    const ns = new FormData($("sched-form")).get("namespace") || "default";
    const found = await getJSON("api/scheduled", { namespace: ns, count: 200 });
    const rows = found.entries.map((e) => SM.tr([
      SM.cell(e.id, "mono"), SM.cell(e.bad ? "BAD" : e.stream, e.bad ? "bad" : ""),
      SM.cell(e.due_ms === null ? "—" : new Date(e.due_ms).toLocaleString()),
      SM.cell(e.bad || Object.entries(e.fields).map(([k, v]) => `${k}=${v}`).join(" ")),
      SM.cell(e.bad ? "" : actions([
        ["Promote", "", () => guarded(async () => {
          const r = await act("scheduled.promote", { namespace: ns, ids: [e.id] });
          report(r);
          await loadScheduled();
        })],
        ["Cancel", "danger", () => guarded(async () => {
          if (!(await ask(`Cancel delayed entry ${e.id} for ${e.stream}?`))) return;
          await act("scheduled.cancel", { namespace: ns, ids: [e.id], confirm: true });
          await loadScheduled();
        })],
      ])),
    ], "sched-row"));
    SM.fill("scheduled", rows, "Nothing waits in this namespace.");
  }

  $("sched-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(loadScheduled);
  });

  // --- the inspector ---------------------------------------------------------------------------

  $("inspect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(async () => {
      const f = new FormData($("inspect-form"));
      const where = (f.get("where") || "").trim();
      const page = await getJSON("api/inspect", {
        stream: f.get("stream"), start: f.get("start"), end: f.get("end"),
        where: where ? [where] : [], newest_first: f.get("newest_first") ? "1" : "", count: 50,
      });
      const box = $("inspect-result");
      if (!page.exists) {
        box.replaceChildren(el("p", `No stream ${page.stream}.`, "muted"));
        return;
      }
      const items = page.entries.map((entry) => {
        const d = el("details", null, "entry");
        const text = Object.entries(entry.fields).map(([k, v]) => `${k}=${v}`).join(" ");
        d.appendChild(el("summary", `${entry.id}  ${text}`, "mono"));
        for (const [name, dec] of Object.entries(entry.decoded)) {
          const kind = dec.json !== undefined ? "json" : dec.msgpack !== undefined ? "msgpack" : null;
          if (kind) d.appendChild(el("div", `${name} (${kind}): ${JSON.stringify(dec[kind])}`, "mono"));
        }
        if (entry.value !== undefined) {
          d.appendChild(el("div", entry.value === null ? `schema: ${entry.schema_error}` : `schema: ${JSON.stringify(entry.value)}`, "mono"));
        }
        d.appendChild(el("pre", entry.raw.map(([k, v]) => `${k} ${v}`).join("\n"), "raw"));
        return d;
      });
      const note = `${page.entries.length} shown, ${page.scanned} read` + (page.next ? `; more from ${page.next}` : "");
      box.replaceChildren(el("p", note, "muted"), ...items);
    });
  });

  // --- the audit trail -------------------------------------------------------------------------

  async function loadAudit() {
    try {
      const found = await getJSON("api/audit", { count: 50 });
      SM.fill("audit", found.actions.map((a) => SM.tr([
        SM.cell(new Date(a.at_ms).toLocaleString()), SM.cell(a.interface), SM.cell(a.who),
        SM.cell(a.action), SM.cell(a.target), SM.cell(a.count, "num"),
      ], "audit-row")), "No operator action yet.");
    } catch (err) {
      /* the audit is a convenience: the page goes on without it */
    }
  }

  // --- hooks the main page calls ---------------------------------------------------------------

  window.SMOps = {
    render(data) {
      renderControl(data);
      document.body.dataset.opsRenders = String(Number(document.body.dataset.opsRenders || 0) + 1);
    },
    groupButtons(stream, group) {
      return actions([
        ["Pending", "", () => { pendingAt = { stream, group }; guarded(loadPending); }],
        ["Rewind", "danger", () => rewind(stream, group)],
      ], true);
    },
    deadButton(stream) {
      const b = el("button", "Browse", "browse");
      b.type = "button";
      b.addEventListener("click", () => {
        deadStream = stream;
        $("dead-panel").hidden = false;
        guarded(loadDead);
      });
      return b;
    },
  };

  loadSession();
  loadAudit();
  guarded(loadScheduled);
  window.setInterval(loadAudit, 5000);
})();
