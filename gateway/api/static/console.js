// egress-gateway operator console. Plain JavaScript, no build step, nothing loaded from elsewhere.
//
// Every string that comes from the API (and so possibly from a hostile agent: its sub, paths,
// parameters, messages) reaches the page through textContent or a DOM attribute, never through
// innerHTML or any HTML parser. The admin token is sent once, in the body of the sign-in request,
// and then forgotten: the session lives in an HttpOnly cookie, and the CSRF token only in memory.
"use strict";

(() => {
  const PAGES = ["approvals", "decisions", "agents", "policies"];
  const FEED_ROWS = 200; // rows the live feed keeps on screen
  const POLL_MS = 10000; // approvals and agents are also re-read on this beat
  const state = { csrf: null, page: null, stream: null, timer: null, refreshSoon: null, feedFilter: null };

  // --- DOM helpers: text only --------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const $ = (id) => document.getElementById(id);
  const cell = (label, ...content) => el("td", { "data-label": label }, ...content);
  const show = (node, visible) => { node.hidden = !visible; };
  const fmtTime = (unix) => (typeof unix === "number" && unix > 0
    ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-");
  const text = (value) => (value === null || value === undefined ? "-"
    : typeof value === "string" ? value : JSON.stringify(value));

  function status(message) { $("status").textContent = message; }
  function fail(message) {
    const box = $("error");
    box.textContent = message;
    show(box, Boolean(message));
  }

  // --- the API ----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, code, status) { super(message); this.code = code; this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": state.csrf || "", Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const err = (data && data.error) || {};
      if (response.status === 401) signedOut("Your session has ended; sign in again.");
      throw new ApiError(err.message || `HTTP ${response.status}`, err.code, response.status);
    }
    return data;
  }

  // --- signing in and out -----------------------------------------------------------------------
  async function boot() {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); applyFilters(); });
    $("filters").addEventListener("reset", () => setTimeout(applyFilters, 0));
    $("detail-close").addEventListener("click", () => show($("detail"), false));
    window.addEventListener("hashchange", route);
    const response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
    if (response.ok) signedIn(await response.json());
    else signedOut("");
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = ""; // the token is not kept in the page
    fail("");
    const response = await fetch("/console/session", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      fail(`Sign-in refused: ${(data && data.error && data.error.message) || `HTTP ${response.status}`}`);
      return;
    }
    signedIn(data);
  }

  function signedIn(session) {
    state.csrf = session.csrf;
    $("who-text").textContent = `${session.sub} (tenant ${session.tenant})`;
    show($("sign-in"), false);
    show($("nav"), true);
    show($("who"), true);
    status("");
    route();
  }

  function signedOut(message) {
    stopPage();
    state.csrf = null;
    state.page = null;
    for (const page of PAGES) show($(`page-${page}`), false);
    show($("nav"), false);
    show($("who"), false);
    show($("sign-in"), true);
    status(message);
  }

  async function signOut() {
    try { await api("DELETE", "/console/session"); } catch (_) { /* already ended */ }
    signedOut("Signed out.");
  }

  // --- pages ------------------------------------------------------------------------------------
  function route() {
    if (!state.csrf) return;
    const wanted = location.hash.slice(1);
    if (!PAGES.includes(wanted) && state.page) return; // e.g. the skip link's #main
    const page = PAGES.includes(wanted) ? wanted : "approvals";
    stopPage();
    state.page = page;
    for (const name of PAGES) show($(`page-${name}`), name === page);
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.page === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    fail("");
    status("");
    ({ approvals: startApprovals, decisions: startDecisions, agents: startAgents, policies: startPolicies })[page]();
  }

  function stopPage() {
    if (state.stream) state.stream.abort();
    state.stream = null;
    clearInterval(state.timer);
    clearTimeout(state.refreshSoon);
    state.timer = null;
  }

  function every(fn) {
    clearInterval(state.timer);
    state.timer = setInterval(fn, POLL_MS);
  }

  function guarded(fn) {
    return async (...args) => {
      try { await fn(...args); } catch (err) { if (err.status !== 401) fail(err.message); }
    };
  }

  // --- the live feed (server-sent events read with fetch, so the CSRF header goes along) ----------
  function openStream(filter, onRecord, onState) {
    if (state.stream) state.stream.abort();
    const controller = new AbortController();
    state.stream = controller;
    const query = new URLSearchParams(filter).toString();
    (async () => {
      try {
        const response = await fetch(`/v1/decisions/stream${query ? `?${query}` : ""}`, {
          headers: { "X-CSRF-Token": state.csrf || "", Accept: "text/event-stream" },
          credentials: "same-origin", cache: "no-store", signal: controller.signal,
        });
        if (response.status === 401) { signedOut("Your session has ended; sign in again."); return; }
        if (!response.ok) { onState(`Live feed unavailable (HTTP ${response.status}); retrying.`); }
        else {
          onState("Live.");
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let end;
            let ended = null;
            while (ended === null && (end = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              ended = handleEvent(block, onRecord, onState);
            }
            if (ended !== null) {
              // A stream also ends when the gateway restarts, which signs no one out: the page
              // signs out only when the server says the session itself is gone.
              if (await sessionEnded()) { signedOut(`The live feed ended: ${ended}. Sign in again.`); return; }
              break;
            }
          }
          onState("Live feed closed; reconnecting.");
        }
      } catch (err) {
        if (err.name === "AbortError") return;
        onState("Live feed interrupted; reconnecting.");
      }
      if (state.stream === controller) setTimeout(() => { if (state.stream === controller) openStream(filter, onRecord, onState); }, 3000);
    })();
  }

  function handleEvent(block, onRecord, onState) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    if (!data.length) return null;
    let payload;
    try { payload = JSON.parse(data.join("\n")); } catch (_) { return null; }
    if (name === "decision") onRecord(payload);
    else if (name === "lost") onState(`Live; ${payload.count} records were dropped while this page was behind.`);
    else if (name === "end") return String(payload.reason);
    return null;
  }

  async function sessionEnded() {
    try {
      const response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
      return response.status === 401 || response.status === 403;
    } catch (_) {
      return false; // the gateway is away (restarting): the retry finds out
    }
  }

  // --- approvals --------------------------------------------------------------------------------
  function startApprovals() {
    const refresh = guarded(loadApprovals);
    refresh();
    every(refresh);
    openStream({}, (rec) => {
      if (rec.code === "approval_required" || rec.phase === "approval") {
        clearTimeout(state.refreshSoon);
        state.refreshSoon = setTimeout(refresh, 200);
      }
    }, () => {});
  }

  async function loadApprovals() {
    const [pending, all] = await Promise.all([api("GET", "/v1/approvals"), api("GET", "/v1/approvals?state=all&limit=200")]);
    renderPending(pending.approvals);
    renderHistory(all.approvals.filter((a) => a.state !== "pending"));
  }

  function params(summary) {
    const list = el("dl", { class: "params" });
    for (const [key, value] of Object.entries(summary || {})) {
      if (key === "_path") continue;
      list.append(el("dt", { text: key }), el("dd", { text: text(value) }));
    }
    return list.children.length ? list : "-";
  }

  function objectActedOn(summary) {
    const path = summary && summary._path;
    if (!path || typeof path !== "object") return "-";
    return Object.entries(path).map(([key, value]) => `${key}: ${text(value)}`).join(", ");
  }

  function renderPending(approvals) {
    const body = $("pending").querySelector("tbody");
    const wanted = new Set(approvals.map((a) => a.id));
    for (const row of Array.from(body.rows)) if (!wanted.has(row.dataset.id)) row.remove();
    const present = new Set(Array.from(body.rows, (row) => row.dataset.id));
    for (const approval of approvals) if (!present.has(approval.id)) body.append(pendingRow(approval));
    $("pending-count").textContent = `(${approvals.length})`;
    show($("pending-empty"), approvals.length === 0);
    show($("pending"), approvals.length > 0);
  }

  function pendingRow(a) {
    const reasonId = `reason-${a.id}`;
    const reason = el("input", { id: reasonId, type: "text", maxlength: "500", placeholder: "reason (optional)" });
    const decide = (verb) => guarded(async () => {
      const words = reason.value.trim();
      await api("POST", `/v1/approvals/${encodeURIComponent(a.id)}/${verb}`, words ? { reason: words } : undefined);
      status(`Approval ${a.id} ${verb === "approve" ? "approved" : "denied"}.`);
      await loadApprovals();
    });
    const row = el("tr", { "data-id": a.id },
      cell("Agent", el("span", { class: "mono", text: a.sub })),
      cell("Tenant", text(a.tenant)),
      cell("Connector / action", el("div", { text: text(a.connector) }), el("div", { class: "mono", text: text(a.action) })),
      cell("Object", el("span", { class: "mono", text: objectActedOn(a.summary) })),
      cell("Parameters", params(a.summary)),
      cell("Rule", text(a.reason)),
      cell("Expires", el("time", { text: fmtTime(a.expires_at) })),
      cell("Decide", el("div", { class: "decide" },
        el("label", { for: reasonId, text: `Reason for ${a.id}` }),
        reason,
        el("button", { type: "button", class: "approve", "aria-label": `Approve ${a.id}`, onclick: decide("approve") }, "Approve"),
        el("button", { type: "button", class: "deny", "aria-label": `Deny ${a.id}`, onclick: decide("deny") }, "Deny"))));
    return row;
  }

  function renderHistory(approvals) {
    const body = $("history").querySelector("tbody");
    const rows = approvals.slice().sort((x, y) => (y.decided_at || y.created_at) - (x.decided_at || x.created_at)).slice(0, 100);
    body.replaceChildren(...rows.map((a) => el("tr", { "data-id": a.id },
      cell("Id", el("span", { class: "mono", text: a.id })),
      cell("Agent", el("span", { class: "mono", text: a.sub })),
      cell("Tenant", text(a.tenant)),
      cell("Connector", text(a.connector)),
      cell("Action", text(a.action)),
      cell("State", el("span", { class: `state-${a.state}`, text: a.state })),
      cell("By", text(a.decided_by)),
      cell("Reason", text(a.decision_reason)),
      cell("When", fmtTime(a.decided_at || a.used_at || a.created_at)))));
  }

  // --- decisions --------------------------------------------------------------------------------
  function startDecisions() {
    applyFilters();
  }

  function applyFilters() {
    const filter = {};
    for (const [key, value] of new FormData($("filters")).entries()) if (String(value).trim()) filter[key] = String(value).trim();
    state.feedFilter = filter;
    $("feed-state").textContent = "Loading.";
    // The recent decisions first, then the live ones: "Live." means both are on screen.
    guarded(async () => {
      const query = new URLSearchParams({ ...filter, limit: "100" }).toString();
      const data = await api("GET", `/v1/decisions?${query}`);
      if (state.feedFilter !== filter || state.page !== "decisions") return; // filters or page changed meanwhile
      $("feed").querySelector("tbody").replaceChildren(...data.decisions.slice().reverse().map(decisionRow));
      openStream(filter, (rec) => {
        const body = $("feed").querySelector("tbody");
        body.prepend(decisionRow(rec));
        while (body.rows.length > FEED_ROWS) body.lastElementChild.remove();
      }, (message) => { $("feed-state").textContent = message; });
    })();
  }

  function decisionRow(rec) {
    return el("tr", {},
      cell("Time", fmtTime(rec.time)),
      cell("Decision", el("span", { class: `decision-${rec.decision}`, text: text(rec.decision) })),
      cell("Code", text(rec.code)),
      cell("Agent", el("span", { class: "mono", text: text(rec.sub) })),
      cell("Tenant", text(rec.tenant)),
      cell("Connector", text(rec.connector)),
      cell("Action", text(rec.action)),
      cell("Path", el("span", { class: "mono", text: text(rec.path) })),
      cell("Record", rec.decision_id
        ? el("button", { type: "button", class: "secondary", "aria-label": `Show decision ${rec.decision_id}`,
          onclick: guarded(() => showDecision(rec.decision_id)) }, "Show")
        : "-"));
  }

  async function showDecision(id) {
    const data = await api("GET", `/v1/decisions/${encodeURIComponent(id)}`);
    $("detail-id").textContent = id;
    $("detail-body").textContent = JSON.stringify(data.records, null, 2);
    show($("detail"), true);
    $("detail-body").focus();
  }

  // --- agents -----------------------------------------------------------------------------------
  function startAgents() {
    const refresh = guarded(loadAgents);
    refresh();
    every(refresh);
  }

  // An agent as the API gives it: {sub, tenant, ...} from the recent decisions, or {agent:
  // "tenant/sub", ...} from the behaviour baselines; both are read as {sub, tenant, ...}.
  function agentOf(a) {
    if (typeof a.sub === "string") return a;
    const key = String(a.agent || "");
    const cut = key.indexOf("/");
    return { ...a, tenant: cut > 0 ? key.slice(0, cut) : null, sub: cut >= 0 ? key.slice(cut + 1) : key };
  }

  function baselineOf(a) {
    if (Object.prototype.hasOwnProperty.call(a, "baseline")) return text(a.baseline);
    const parts = [];
    if (a.observing) parts.push("observing");
    if (a.baseline_rate_per_minute !== null && a.baseline_rate_per_minute !== undefined) parts.push(`${a.baseline_rate_per_minute}/min`);
    if (Array.isArray(a.actions) && a.actions.length) parts.push(`actions: ${a.actions.join(", ")}`);
    if (Array.isArray(a.hosts) && a.hosts.length) parts.push(`hosts: ${a.hosts.join(", ")}`);
    return parts.join("; ") || "-";
  }

  async function loadAgents() {
    const data = await api("GET", "/v1/agents");
    const agents = data.agents.map(agentOf);
    // Columns appear for the fields the API provides: counts from the recent decisions; behaviour
    // baselines, anomaly scores and quarantine where the gateway keeps them.
    const has = (...keys) => agents.some((a) => keys.some((key) => Object.prototype.hasOwnProperty.call(a, key)));
    const columns = [["Agent", (a) => el("span", { class: "mono", text: a.sub })], ["Tenant", (a) => text(a.tenant)]];
    if (has("role")) columns.push(["Role", (a) => text(a.role)]);
    columns.push(["Last seen", (a) => fmtTime(a.last_seen)]);
    if (has("calls")) columns.push(["Calls", (a) => text(a.calls)]);
    if (has("denials")) columns.push(["Denials", (a) => text(a.denials)]);
    if (has("baseline", "baseline_rate_per_minute")) columns.push(["Baseline", (a) => el("span", { class: "mono", text: baselineOf(a) })]);
    if (has("anomaly_score")) columns.push(["Anomaly score", (a) => text(a.anomaly_score)]);
    if (has("quarantined")) columns.push(["Quarantined", (a) => (a.quarantined ? "yes" : "no")]);
    columns.push(["Actions", (a) => agentActions(a, has("quarantined"))]);
    $("agents").querySelector("thead tr").replaceChildren(...columns.map(([name]) => el("th", { scope: "col", text: name })));
    $("agents").querySelector("tbody").replaceChildren(...agents.map((a) => el("tr", {},
      ...columns.map(([name, render]) => cell(name, render(a))))));
    show($("agents-empty"), agents.length === 0);
  }

  function agentActions(a, quarantine) {
    const box = el("div", { class: "agent-actions" });
    box.append(el("button", { type: "button", class: "danger", "aria-label": `Revoke ${a.sub}`, onclick: guarded(async () => {
      if (!window.confirm(`Revoke the tokens of ${a.sub}?`)) return;
      const data = await api("POST", `/v1/agents/${encodeURIComponent(a.sub)}/revoke`);
      status(`Revoked ${data.revoked.sub}.`);
      await loadAgents();
    }) }, "Revoke"));
    if (quarantine) {
      const release = Boolean(a.quarantined);
      const verb = release ? "Release" : "Quarantine";
      box.append(el("button", { type: "button", class: release ? "secondary" : "danger", "aria-label": `${verb} ${a.sub}`,
        onclick: guarded(async () => {
          const reason = window.prompt(`${verb} ${a.sub}: reason`);
          if (!reason) return;
          const body = { sub: a.sub, reason };
          if (release) body.release = true;
          await api("POST", "/v1/quarantine", body);
          status(`${verb}d ${a.sub}.`);
          await loadAgents();
        }) }, verb));
    }
    return box;
  }

  // --- policies ---------------------------------------------------------------------------------
  function startPolicies() {
    guarded(loadPolicies)();
  }

  async function loadPolicies() {
    const data = await api("GET", "/v1/policies");
    $("policy-version").textContent = data.loaded
      ? `Version ${data.version}: ${data.files.length} files, ${data.rule_count} rules.`
      : "No policies are loaded: token scopes alone decide.";
    const error = $("reload-error");
    error.textContent = data.reload_error ? `The last change was rejected; still serving this version:\n${data.reload_error}` : "";
    show(error, Boolean(data.reload_error));
    $("policy-files").replaceChildren(...data.files.map(policyFile));
    const rows = data.shadow_report.rows;
    $("shadow").querySelector("tbody").replaceChildren(...rows.map((r) => el("tr", {},
      cell("Tenant", text(r.tenant)), cell("Agent", el("span", { class: "mono", text: r.sub })), cell("Rule", r.rule),
      cell("Code", r.code), cell("Count", text(r.count)), cell("First", text(r.first_ts)), cell("Last", text(r.last_ts)))));
    show($("shadow-empty"), rows.length === 0);
  }

  function policyFile(f) {
    const titleId = `file-${f.file.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const rules = el("table", { "aria-labelledby": titleId },
      el("thead", {}, el("tr", {}, ...["Rule", "Connector", "Actions", "Mode", "Constraints"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...f.rules.map((r) => {
        const { id, line, connector, actions, mode, ...rest } = r;
        return el("tr", {},
          cell("Rule", `${id}${line ? ` (line ${line})` : ""}`), cell("Connector", connector), cell("Actions", actions.join(", ")),
          cell("Mode", mode), cell("Constraints", el("pre", { text: JSON.stringify(rest, null, 1) })));
      })));
    const subjects = [...(f.subjects.roles || []).map((r) => `role ${r}`), ...(f.subjects.sub || []).map((s) => `sub ${s}`)].join(", ");
    return el("section", { class: "policy-file", "aria-labelledby": titleId },
      el("h2", { id: titleId, text: f.file }),
      el("p", { text: `Tenant ${f.tenant || "any"}; subjects: ${subjects}; mode ${f.mode}; ${f.rules.length} rules.` }),
      el("div", { class: "table-wrap" }, rules));
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
