// iSDF dashboard: a single-page app over the operator API (/api/v1), served
// by the controller itself. No build step, no dependencies, nothing loaded
// from elsewhere (the Content-Security-Policy forbids it anyway).
//
// Safety rule: data is only ever put in the page as text (textContent,
// attributes set one by one); never through innerHTML.

"use strict";

// ---------------------------------------------------------------- state

const session = { name: null, role: null, csrf: null };
const ROLES = ["viewer", "operator", "admin"];
let current = null; // { refresh(change) } of the page on screen
let stream = null;
let generation = 0; // bumps on every navigation; stale fetches are dropped

function can(role) {
  return ROLES.indexOf(session.role) >= ROLES.indexOf(role);
}

// ---------------------------------------------------------------- DOM

/** An element: h("td", {class: "x"}, "text", child, ...). Strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function main() { return document.getElementById("main"); }

function show(...children) {
  const m = main();
  m.replaceChildren();
  append(m, children);
}

function badge(text, kind) {
  return h("span", { class: "badge " + (kind || text || "") }, text ?? "—");
}

function table(headers, rows, opts = {}) {
  return h("div", { class: "table-wrap" },
    h("table", { id: opts.id },
      h("thead", {}, h("tr", {}, headers.map((x) =>
        typeof x === "string" ? h("th", {}, x) : h("th", { class: x.cls }, x.label)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, opts.empty || "Nothing yet.")))));
}

function ago(ts) {
  if (!ts) return "—";
  const secs = Math.round((Date.now() - Date.parse(ts)) / 1000);
  if (secs < 5) return "just now";
  if (secs < 90) return secs + " s ago";
  if (secs < 5400) return Math.round(secs / 60) + " min ago";
  if (secs < 129600) return Math.round(secs / 3600) + " h ago";
  return Math.round(secs / 86400) + " d ago";
}

function when(ts) {
  return ts ? h("time", { datetime: ts, title: new Date(ts).toLocaleString() }, ago(ts)) : "—";
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (res.status === 401 && !path.startsWith("/ui/")) {
    loggedOut();
    throw new ApiError(401, "unauthorized", "Your session ended; log in again.");
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(res.status, err.code || "http_" + res.status, err.message || res.statusText);
  }
  return data;
}
const get = (path) => api("GET", path);
const post = (path, body) => api("POST", path, body === undefined ? {} : body);

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.message} (${e.code})` : String(e));
}

// ---------------------------------------------------------------- login

async function start() {
  try {
    const me = await api("GET", "/ui/session");
    loggedIn(me);
  } catch (_) {
    loginPage();
  }
}

function loginPage(message) {
  document.getElementById("top").hidden = true;
  if (stream) { stream.close(); stream = null; }
  current = null;
  const failed = message || (location.hash.includes("failed") ? "That token was refused." : null);
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, placeholder: "isdf_op_…" });
  const error = h("p", { id: "login-error", class: "error", role: "alert" }, failed || "");
  const form = h("form", { class: "login", id: "login-form" },
    h("h1", {}, "iSDF dashboard"),
    h("p", { class: "muted" }, "Paste an operator token. The controller printed the first one when it started; admins create more with POST /api/v1/operator-tokens."),
    h("label", {}, "Operator token", input),
    h("button", { type: "submit", id: "login-button" }, "Log in"),
    error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      const me = await api("POST", "/ui/login", { token: input.value.trim(), login_csrf: loginCsrf() });
      input.value = "";
      if (location.hash.startsWith("#/login")) location.hash = "#/fleet";
      loggedIn(me);
    } catch (e) {
      error.textContent = e.status === 401 ? "That token was refused." : e.message;
    }
  });
  show(form);
  input.focus();
}

// The page's login CSRF token (also in the browser's pre-session cookie,
// which the controller compares it with).
function loginCsrf() {
  const meta = document.querySelector('meta[name="isdf-login-csrf"]');
  return meta ? meta.content : undefined;
}

function loggedIn(me) {
  session.name = me.name; session.role = me.role; session.csrf = me.csrf;
  document.getElementById("top").hidden = false;
  document.getElementById("who-name").textContent = me.name;
  document.getElementById("who-role").textContent = me.role;
  openStream();
  route();
}

function loggedOut() {
  session.name = session.role = session.csrf = null;
  loginPage("Your session ended; log in again.");
}

async function logout() {
  try { await api("POST", "/ui/logout"); } catch (_) { /* the session is gone either way */ }
  session.csrf = null;
  loginPage();
}

// ---------------------------------------------------------------- live updates

function openStream() {
  if (stream) return;
  const dot = document.getElementById("live");
  stream = new EventSource("/api/v1/stream");
  stream.onopen = () => dot.classList.add("on");
  stream.onerror = () => dot.classList.remove("on"); // EventSource reconnects by itself
  stream.addEventListener("change", (ev) => {
    let change;
    try { change = JSON.parse(ev.data); } catch (_) { return; }
    if (current && current.refresh) scheduleRefresh(change);
  });
}

// Changes arrive at most twice a second; a page refetches at most once per
// half second too, and never twice at the same time.
let pending = null, busy = false;
function scheduleRefresh(change) {
  if (!current.wants || current.wants(change) || change.topic === "resync") {
    pending = pending || change;
    if (!busy) runRefresh();
  }
}
async function runRefresh() {
  if (!pending || !current) return;
  busy = true;
  const page = current;
  const change = pending;
  pending = null;
  try { await page.refresh(change); } catch (_) { /* shown on the next navigation */ }
  setTimeout(() => { busy = false; if (pending) runRefresh(); }, 500);
}

// ---------------------------------------------------------------- routing

const routes = [
  [/^#\/fleet$/, fleetPage],
  [/^#\/devices$/, devicesPage],
  [/^#\/devices\/([0-9a-f-]{36})$/, devicePage],
  [/^#\/services$/, servicesPage],
  [/^#\/services\/([0-9a-f-]{36})$/, servicePage],
  [/^#\/rollouts$/, rolloutsPage],
  [/^#\/rollouts\/([0-9a-f-]{36})$/, rolloutPage],
  [/^#\/audit$/, auditPage],
];

function route() {
  if (!session.csrf) return;
  const hash = location.hash.split("?")[0] || "#/fleet";
  const gen = ++generation;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", hash.startsWith("#/" + a.dataset.page));
  }
  for (const [re, page] of routes) {
    const m = hash.match(re);
    if (m) {
      current = null;
      show(h("p", { class: "muted" }, "Loading…"));
      page(gen, ...m.slice(1)).catch((e) => { if (gen === generation) show(errorBox(e)); });
      return;
    }
  }
  location.hash = "#/fleet";
}

/** Registers the page on screen: `load` draws it (again on every relevant change). */
async function page(gen, load, wants) {
  const draw = async () => {
    const node = await load();
    if (gen !== generation) return;
    const m = main();
    // Keep the focus and the text typed in inputs across live redraws.
    m.replaceChildren(node);
  };
  await draw();
  if (gen === generation) current = { refresh: draw, wants };
}

// ---------------------------------------------------------------- fleet

async function fleetPage(gen) {
  await page(gen, async () => {
    const o = await get("/api/v1/fleet/overview");
    const card = (id, label, n, kind, state) =>
      h("a", { class: "card " + kind, id, href: state ? "#/devices?state=" + state : "#/devices" },
        h("span", { class: "n" }, n), label);
    const bars = (items) => {
      const max = Math.max(1, ...items.map((b) => b.count));
      return h("div", { class: "bars" }, items.length ? items.map((b) => [
        h("span", { class: "mono" }, b.value),
        h("span", {}, barOf(b.count / max)),
        h("span", {}, b.count),
      ]) : h("span", { class: "muted" }, "No reports yet."));
    };
    return h("section", { id: "fleet" },
      h("h1", {}, "Fleet"),
      h("div", { class: "cards" },
        card("count-devices", "routers", o.devices, "", null),
        card("count-online", "online", o.online, "ok", "online"),
        card("count-stale", "stale", o.stale, "warn", "stale"),
        card("count-failing", "failing", o.failing, "bad", "failing"),
        card("count-never", "never reported", o.never_reported, "off", "never_reported")),
      h("p", { class: "muted" }, `Online: a report within ${Math.round(o.online_window_secs / 60)} minutes. Failing: the last config was rolled back or rejected. Updated `, when(o.generated_at), "."),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "By agent version"), bars(o.by_agent_version)),
        h("div", { class: "panel" }, h("h2", {}, "By model"), bars(o.by_model))));
  }, (c) => c.topic === "device");
}

function barOf(share) {
  const bar = h("span", { class: "bar" });
  bar.style.width = Math.max(0, Math.min(100, share * 100)).toFixed(1) + "%";
  bar.style.display = "block";
  return bar;
}

// ---------------------------------------------------------------- devices

async function devicesPage(gen) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = { q: params.get("q") || "", state: params.get("state") || "", selector: params.get("selector") || "" };
  let cursor = null, rows = [], error = null;
  const body = h("div", { id: "device-results" });

  const q = h("input", { id: "device-search", type: "search", placeholder: "name contains…", value: filters.q, "aria-label": "Search by name" });
  const state = h("select", { id: "device-state", "aria-label": "State" },
    ["", "online", "stale", "failing", "never_reported"].map((v) =>
      h("option", { value: v, selected: v === filters.state }, v ? v.replace("_", " ") : "any state")));
  const selector = h("input", { id: "device-selector", placeholder: "labels, e.g. model=ax3000", value: filters.selector, "aria-label": "Label selector" });

  const query = (after) => {
    const p = new URLSearchParams({ limit: "50" });
    if (filters.q) p.set("q", filters.q);
    if (filters.state) p.set("state", filters.state);
    if (filters.selector) p.set("selector", filters.selector);
    if (after) p.set("cursor", after);
    return "/api/v1/devices?" + p;
  };
  const render = () => {
    const more = cursor ? h("button", { class: "secondary", id: "device-more", onclick: loadMore }, "More") : null;
    body.replaceChildren(error ? errorBox(error) : "", table(
      ["Name", "State", "Outcome", { label: "Enforced", cls: "wide-only" }, { label: "Agent", cls: "wide-only" }, "Last report", { label: "Labels", cls: "wide-only" }],
      rows.map((d) => {
        const hl = d.health || {};
        return h("tr", {},
          h("td", {}, h("a", { href: "#/devices/" + d.id }, d.name)),
          h("td", {}, badge(hl.state), hl.failing ? [" ", badge("failing")] : null),
          h("td", {}, hl.outcome ? badge(hl.outcome) : "—"),
          h("td", { class: "wide-only" }, hl.enforced_version ?? "—"),
          h("td", { class: "wide-only mono" }, hl.agent_version ?? "—"),
          h("td", {}, when(hl.last_report_at)),
          h("td", { class: "wide-only wrap mono" }, Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", ")));
      }), { id: "device-table", empty: "No device matches." }), more);
  };
  async function reload() {
    try {
      const page = await get(query(null));
      rows = page.items; cursor = page.next_cursor; error = null;
    } catch (e) { error = e; rows = []; cursor = null; }
    render();
  }
  async function loadMore() {
    const page = await get(query(cursor));
    rows = rows.concat(page.items); cursor = page.next_cursor;
    render();
  }
  let timer = null;
  const changed = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      filters.q = q.value.trim(); filters.state = state.value; filters.selector = selector.value.trim();
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) p.set(k, v);
      history.replaceState(null, "", "#/devices" + (p.toString() ? "?" + p : ""));
      reload();
    }, 250);
  };
  q.addEventListener("input", changed);
  selector.addEventListener("input", changed);
  state.addEventListener("change", changed);

  await reload();
  if (gen !== generation) return;
  show(h("section", { id: "devices" },
    h("h1", {}, "Devices"),
    h("div", { class: "row panel" },
      h("label", {}, "Search", q), h("label", {}, "State", state), h("label", {}, "Labels", selector)),
    body));
  // Live: refetch the rows on screen, keeping the inputs as they are.
  // Audit entries come with every change made through the API (new devices).
  current = { refresh: reload, wants: (c) => c.topic === "device" || c.topic === "audit" };
}

async function devicePage(gen, id) {
  await page(gen, async () => {
    const [d, status, history, config, events] = await Promise.all([
      get(`/api/v1/devices/${id}`),
      get(`/api/v1/devices/${id}/status`).catch(() => null),
      get(`/api/v1/devices/${id}/status/history?limit=20`).catch(() => []),
      get(`/api/v1/devices/${id}/config`).catch(() => null),
      get(`/api/v1/devices/${id}/events?limit=20`).catch(() => ({ items: [], totals: [] })),
    ]);
    const r = status && status.report;
    const dl = (pairs) => h("table", {}, h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "wrap" }, v)))));
    return h("section", { id: "device" },
      h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
      h("h1", { id: "device-name" }, d.name),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Router"), dl([
          ["Id", h("span", { class: "mono" }, d.id)],
          ["Labels", Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "—"],
          ["Registered", when(d.created_at)],
          ["Certificate expires", d.certificate_expires_at ? new Date(d.certificate_expires_at).toLocaleDateString() : "not enrolled"],
          ["Compiled config", config ? `version ${config.version}` : "—"],
          ["Config digest", config ? h("span", { class: "mono" }, config.digest.slice(0, 16) + "…") : "—"],
        ])),
        h("div", { class: "panel" }, h("h2", {}, "Status"), r ? dl([
          ["Enforced version", h("span", { id: "enforced-version" }, r.enforced_version ?? "none")],
          ["Outcome", badge(r.outcome)],
          ["Attempted version", r.attempted_version ?? "—"],
          ["Errors", r.errors.length ? r.errors.join("; ") : "none"],
          ["Backend", r.backend],
          ["Agent", r.agent_version],
          ["Last report", when(status.received_at)],
          ["Tunnels", (r.tunnels || []).length || "none"],
        ]) : h("p", { class: "muted" }, "This router has not reported yet."))),
      h("h2", {}, "Counters"),
      table(["Rule", "Packets", "Bytes"], (r ? r.counters : []).map((c) =>
        h("tr", {}, h("td", { class: "mono" }, c.rule_id), h("td", {}, c.packets.toLocaleString()), h("td", {}, c.bytes.toLocaleString()))),
      { empty: "No counters reported." }),
      h("h2", {}, "Recent events"),
      table(["When", "Kind", "Origin", "Reason"], events.items.map((e) =>
        h("tr", {}, h("td", {}, when(e.received_at)), h("td", {}, e.event.kind), h("td", {}, e.event.block.origin), h("td", { class: "wrap" }, e.event.block.reason))),
      { empty: "No events reported." }),
      h("h2", {}, "History"),
      table(["Received", "Sequence", "Outcome", "Enforced", "Errors"], history.map((s) =>
        h("tr", {}, h("td", {}, when(s.received_at)), h("td", {}, s.sequence), h("td", {}, badge(s.report.outcome)),
          h("td", {}, s.report.enforced_version ?? "—"), h("td", { class: "wrap" }, s.report.errors.join("; ") || "—"))),
      { id: "history-table", empty: "No reports yet." }));
  }, (c) => (c.topic === "device" || c.topic === "config") && c.id === id);
}

// ---------------------------------------------------------------- services

async function servicesPage(gen) {
  await page(gen, async () => {
    const list = await get("/api/v1/services?limit=500");
    return h("section", { id: "services" },
      h("h1", {}, "Services"),
      table(["Name", "Kind", "Latest revision", "Created"], list.items.map((sv) =>
        h("tr", {}, h("td", {}, h("a", { href: "#/services/" + sv.id }, sv.name)), h("td", {}, sv.kind),
          h("td", {}, sv.latest_revision), h("td", {}, when(sv.created_at)))),
      { id: "service-table", empty: "No services yet." }));
  }, (c) => c.topic === "audit");
}

async function servicePage(gen, id) {
  const [sv, revisions, assignments] = await Promise.all([
    get(`/api/v1/services/${id}`),
    get(`/api/v1/services/${id}/revisions?limit=500`),
    get(`/api/v1/assignments?limit=500`).catch(() => ({ items: [] })),
  ]);
  if (gen !== generation) return;
  const revs = revisions.items.map((r) => r.revision);
  const latest = revs[revs.length - 1];
  // #/services/{id}?from=1&to=2 (a rollout's page links here) picks the pair.
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const pick = (name, otherwise) => { const n = Number(params.get(name)); return revs.includes(n) ? n : otherwise; };
  const fromRev = pick("from", latest > 1 ? latest - 1 : latest), toRev = pick("to", latest);
  const from = h("select", { id: "diff-from", "aria-label": "From revision" }, revs.map((r) => h("option", { value: r, selected: r === fromRev }, "revision " + r)));
  const to = h("select", { id: "diff-to", "aria-label": "To revision" }, revs.map((r) => h("option", { value: r, selected: r === toRev }, "revision " + r)));
  const out = h("div", { id: "diff-out" });
  const showDiff = async () => {
    try {
      const d = await get(`/api/v1/services/${id}/revisions/${from.value}/diff/${to.value}`);
      const lines = d.unified ? d.unified.replace(/\n$/, "").split("\n") : [];
      const cls = (l) => l.startsWith("+++") || l.startsWith("---") ? "head" : l.startsWith("@@") ? "hunk" : l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "";
      out.replaceChildren(lines.length
        ? h("pre", { class: "diff", id: "diff" }, lines.map((l) => h("span", { class: cls(l) }, l)))
        : h("p", { class: "muted", id: "diff" }, "The two revisions are identical."));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  };
  from.addEventListener("change", showDiff);
  to.addEventListener("change", showDiff);
  const mine = assignments.items.filter((a) => a.service_id === id);
  show(h("section", { id: "service" },
    h("p", {}, h("a", { href: "#/services" }, "← Services")),
    h("h1", {}, sv.name, " ", badge(sv.kind, "")),
    h("h2", {}, "Revisions"),
    table(["Revision", "Created"], revisions.items.map((r) => h("tr", {}, h("td", {}, r.revision), h("td", {}, when(r.created_at))))),
    h("h2", {}, "Assignments"),
    table(["Selector", "Revision", "Created"], mine.map((a) => h("tr", {}, h("td", { class: "mono" }, a.selector), h("td", {}, a.revision), h("td", {}, when(a.created_at)))), { empty: "Not assigned." }),
    h("h2", {}, "Diff"),
    h("div", { class: "row panel" }, h("label", {}, "From", from), h("label", {}, "To", to)),
    out));
  await showDiff();
  current = { refresh: () => {}, wants: () => false };
}

// ---------------------------------------------------------------- rollouts

// A router of a rollout is, in its wave: applied, failed (rolled back or
// refused the new config), offline (silent past the offline timeout),
// pending (released, not yet reported) or waiting (its wave is not released
// yet). Samples are taken of released waves only, so charts have no waiting.
const CHART_PARTS = ["applied", "failed", "offline", "pending"];
const WAVE_PARTS = [...CHART_PARTS, "waiting"];

function progressBar(w) {
  const parts = WAVE_PARTS.filter((p) => (w[p] || 0) > 0);
  const bar = h("div", { class: "progress", role: "img", "aria-label": parts.map((p) => `${w[p]} ${p}`).join(", ") || "no routers" });
  for (const part of WAVE_PARTS) {
    const seg = h("span", { class: "c-" + part, title: `${w[part] || 0} ${part}` });
    seg.style.width = (w.routers ? (100 * (w[part] || 0)) / w.routers : 0).toFixed(2) + "%";
    bar.append(seg);
  }
  return bar;
}

function legend() {
  return h("div", { class: "legend" }, WAVE_PARTS.map((p) => h("span", {}, h("i", { class: "c-" + p }), p)));
}

/** "16 applied, 1 failed, 3 offline, 0 pending · 20 waiting for later waves · 40 routers" */
function countsText(c) {
  const released = `${c.applied} applied, ${c.failed} failed, ${c.offline} offline, ${c.pending} pending`;
  return [released, c.waiting ? `${c.waiting} waiting for later waves` : null, `${c.routers} routers`].filter(Boolean).join(" · ");
}

/** A wave's state: passed, soaking (healthy, waiting out the soak), released or waiting. */
function waveState(w) {
  if (w.passed_at) return badge("passed", "completed");
  if (w.healthy_since) return badge("soaking", "running");
  if (w.released_at) return badge("released", "running");
  return badge("waiting", "waiting");
}

/**
 * A stacked step-area chart of one wave's samples (counts held until the
 * next sample). The SVG stretches to the width; its labels are HTML below
 * it, so they are not stretched with it.
 */
function waveChart(samples, routers, until) {
  const W = 600, H = 120;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "progress over time" });
  if (!samples.length) return h("p", { class: "muted" }, "No samples yet.");
  const t0 = Date.parse(samples[0].at);
  const t1 = Math.max(until, Date.parse(samples[samples.length - 1].at), t0 + 1000);
  const top = Math.max(1, routers, ...samples.map((x) => CHART_PARTS.reduce((a, p) => a + x[p], 0)));
  const X = (t) => ((t - t0) / (t1 - t0)) * W;
  const Y = (v) => H - (v / top) * H;
  const end = (i) => (i + 1 < samples.length ? Date.parse(samples[i + 1].at) : t1);
  // Cumulative bands, bottom to top.
  let below = samples.map(() => 0);
  for (const part of CHART_PARTS) {
    const above = samples.map((x, i) => below[i] + x[part]);
    const pts = [];
    samples.forEach((x, i) => pts.push(`${X(Date.parse(x.at))},${Y(above[i])}`, `${X(end(i))},${Y(above[i])}`));
    for (let i = samples.length - 1; i >= 0; i--) pts.push(`${X(end(i))},${Y(below[i])}`, `${X(Date.parse(samples[i].at))},${Y(below[i])}`);
    svg.append(s("polygon", { points: pts.join(" "), class: "c-" + part, "fill-opacity": 0.85 }));
    below = above;
  }
  return h("figure", { class: "chart" }, svg,
    h("figcaption", { class: "axis" },
      h("span", {}, new Date(t0).toLocaleTimeString()),
      h("span", {}, `0 – ${top} routers`),
      h("span", {}, new Date(t1).toLocaleTimeString())));
}

async function rolloutsPage(gen) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const stateFilter = params.get("state") || "";
  let services = { items: [] };
  if (can("operator")) services = await get("/api/v1/services?limit=500").catch(() => ({ items: [] }));
  const form = can("operator") ? rolloutForm(services.items) : null;
  const list = h("div", { id: "rollout-list" });
  const load = async () => {
    const p = new URLSearchParams({ limit: "100" });
    if (stateFilter) p.set("state", stateFilter);
    const page = await get("/api/v1/rollouts?" + p);
    list.replaceChildren(table(["Service", { label: "Selector", cls: "wide-only" }, "Revisions", "State", "Progress", { label: "Started", cls: "wide-only" }],
      page.items.map((r) => h("tr", {},
        h("td", {}, h("a", { href: "#/rollouts/" + r.id }, r.service_name)),
        h("td", { class: "mono wide-only" }, r.selector),
        h("td", {}, `${r.from_revision ?? "new"} → ${r.to_revision}`),
        h("td", {}, badge(r.state)),
        h("td", { class: "progress-cell", title: countsText(r.totals) }, progressBar(r.totals), `${r.totals.applied}/${r.totals.routers} applied`,
          r.totals.failed ? `, ${r.totals.failed} failed` : null, r.totals.waiting ? `, ${r.totals.waiting} waiting` : null),
        h("td", { class: "wide-only" }, when(r.created_at)))),
      { id: "rollout-table", empty: "No rollouts yet." }));
  };
  try { await load(); } catch (e) { list.replaceChildren(errorBox(e)); }
  if (gen !== generation) return;
  const filter = h("select", { id: "rollout-state", "aria-label": "State" },
    ["", "running", "paused", "completed", "aborted"].map((v) => h("option", { value: v, selected: v === stateFilter }, v || "any state")));
  filter.addEventListener("change", () => { location.hash = "#/rollouts" + (filter.value ? "?state=" + filter.value : ""); });
  show(h("section", { id: "rollouts" }, h("h1", {}, "Rollouts"),
    h("div", { class: "row" }, h("label", {}, "State", filter)), list, form));
  current = { refresh: load, wants: (c) => c.topic === "rollout" || c.topic === "device" };
}

function rolloutForm(services) {
  const field = (label, el) => h("label", {}, label, el);
  const service = h("select", { id: "rollout-service", required: true }, services.map((sv) => h("option", { value: sv.id }, `${sv.name} (latest ${sv.latest_revision})`)));
  const selector = h("input", { id: "rollout-selector", placeholder: "plan=family (new assignment)" });
  const assignment = h("input", { id: "rollout-assignment", placeholder: "or an assignment id" });
  const revision = h("input", { id: "rollout-revision", type: "number", min: 1, placeholder: "latest" });
  const canary = h("input", { id: "rollout-canary", placeholder: "10% or canary=true" });
  const waves = h("input", { id: "rollout-waves", placeholder: "25, 100" });
  const minApplied = h("input", { id: "rollout-min-applied", type: "number", step: "0.01", min: 0, max: 1, placeholder: "0.9" });
  const maxFailed = h("input", { id: "rollout-max-failed", type: "number", step: "0.01", min: 0, max: 1, placeholder: "0" });
  const soak = h("input", { id: "rollout-soak", type: "number", min: 0, placeholder: "60" });
  const offline = h("input", { id: "rollout-offline", type: "number", min: 1, placeholder: "600" });
  const error = h("p", { class: "error", id: "rollout-error", role: "alert" });
  const form = h("form", { class: "panel", id: "rollout-form" },
    h("h2", {}, "Start a rollout"),
    h("div", { class: "row" }, field("Service", service), field("Selector", selector), field("Assignment", assignment), field("Revision", revision)),
    h("div", { class: "row" }, field("Canary", canary), field("Waves (cumulative %)", waves), field("Min applied share", minApplied),
      field("Max failed share", maxFailed), field("Soak (s)", soak), field("Offline after (s)", offline)),
    h("p", {}, h("button", { type: "submit", id: "rollout-start" }, "Start rollout")), error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const body = {};
    if (assignment.value.trim()) body.assignment_id = assignment.value.trim();
    else { body.service_id = service.value; body.selector = selector.value.trim(); }
    if (revision.value) body.revision = Number(revision.value);
    const c = canary.value.trim();
    if (c) body.canary = /^\d+(\.\d+)?\s*%?$/.test(c) ? { percent: Number(c.replace("%", "")) } : { selector: c };
    if (waves.value.trim()) body.waves = waves.value.split(",").map((x) => Number(x.replace("%", "").trim()));
    if (minApplied.value) body.min_applied_share = Number(minApplied.value);
    if (maxFailed.value) body.max_failed_share = Number(maxFailed.value);
    if (soak.value) body.soak_secs = Number(soak.value);
    if (offline.value) body.offline_timeout_secs = Number(offline.value);
    try {
      const r = await post("/api/v1/rollouts", body);
      location.hash = "#/rollouts/" + r.id;
    } catch (e) { error.textContent = `${e.message} (${e.code})`; }
  });
  return form;
}

async function rolloutPage(gen, id) {
  await page(gen, async () => {
    const [r, history, samples] = await Promise.all([
      get(`/api/v1/rollouts/${id}`),
      get(`/api/v1/rollouts/${id}/history`),
      get(`/api/v1/rollouts/${id}/samples`),
    ]);
    const until = r.finished_at ? Date.parse(r.finished_at) : Date.now();
    const message = h("p", { class: "error", id: "rollout-action-error", role: "alert" });
    const act = (verb) => async () => {
      message.textContent = "";
      try { await post(`/api/v1/rollouts/${id}/${verb}`); if (current) await current.refresh({ topic: "rollout", id }); }
      catch (e) { message.textContent = `${e.message} (${e.code})`; }
    };
    const operator = can("operator");
    const finished = r.state === "completed" || r.state === "aborted";
    const buttons = h("div", { class: "actions" },
      h("button", { id: "rollout-pause", class: "secondary", disabled: !operator || r.state !== "running", onclick: act("pause"), title: operator ? null : "operators only" }, "Pause"),
      h("button", { id: "rollout-resume", class: "secondary", disabled: !operator || r.state !== "paused", onclick: act("resume"), title: operator ? null : "operators only" }, "Resume"),
      h("button", { id: "rollout-abort", class: "danger", disabled: !operator || finished, onclick: act("abort"), title: operator ? null : "operators only" }, "Abort"));
    const p = r.policy;
    const from = r.from_revision;
    const paused = r.state === "paused" ? h("div", { class: "callout bad", id: "pause-reason", role: "status" },
      h("strong", {}, "Paused: "), r.pause_reason || "no reason given",
      h("p", { class: "muted" }, "Nothing more is released. Resume goes on and accepts the failures seen so far; abort returns every released router to ",
        from === null ? "no assignment" : `revision ${from}`, ".")) : null;
    const diff = from === null
      ? h("span", { class: "muted" }, "a new assignment")
      : h("a", { id: "rollout-diff", href: `#/services/${r.service_id}?from=${from}&to=${r.to_revision}` }, `diff of revision ${from} → ${r.to_revision}`);
    return h("section", { id: "rollout" },
      h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")),
      h("h1", {}, h("a", { href: "#/services/" + r.service_id }, r.service_name), `: revision ${from ?? "new"} → ${r.to_revision} `, h("span", { id: "rollout-state-badge" }, badge(r.state))),
      paused,
      h("div", { class: "panel" },
        h("p", {}, "Selector ", h("code", {}, r.selector), " · ", diff, ` · by ${r.created_by} `, when(r.created_at)),
        h("p", { class: "muted" }, `Each wave needs ${Math.round(p.min_applied_share * 100)}% applied (offline routers left out) and at most ${Math.round(p.max_failed_share * 100)}% failed for ${p.soak_secs} s; a router silent ${p.offline_timeout_secs} s after its wave's release counts as offline.`),
        h("p", { id: "rollout-totals" }, countsText(r.totals)),
        progressBar(r.totals), legend(), operator ? buttons : null, message),
      h("div", { class: "panel" }, h("h2", {}, "Waves"),
        r.waves.map((w) => h("div", { class: "wave" + (w.released_at ? "" : " unreleased"), id: "wave-" + w.index },
          h("h3", {}, `Wave ${w.index}: ${w.label} `, waveState(w)),
          h("p", { class: "muted counts" }, w.released_at
            ? [`${w.applied} applied · ${w.failed} failed · ${w.offline} offline · ${w.pending} pending · ${w.routers} routers · released `, when(w.released_at)]
            : `${w.waiting} waiting · ${w.routers} routers · released when wave ${w.index - 1} passes`),
          progressBar(w),
          w.released_at
            ? waveChart(samples.items.filter((x) => x.wave === w.index).sort((a, b) => Date.parse(a.at) - Date.parse(b.at)), w.routers, until)
            : null))),
      h("h2", {}, "History"),
      table(["When", "Event", "Wave", "By", "Detail"], history.items.map((e) =>
        h("tr", {}, h("td", {}, when(e.at)), h("td", {}, badge(e.kind, "")), h("td", {}, e.wave ?? "—"), h("td", {}, e.actor), h("td", { class: "wrap" }, e.detail || "—"))),
      { id: "rollout-history" }));
  // Routers' reports move the counts too (the rollout code also notifies).
  }, (c) => (c.topic === "rollout" && c.id === id) || c.topic === "device");
}

// ---------------------------------------------------------------- audit

async function auditPage(gen) {
  let rows = [], cursor = null;
  const body = h("div", {});
  const render = () => body.replaceChildren(
    table(["When", "Actor", "Action", { label: "Target", cls: "wide-only" }, "Status"], rows.map((e) =>
      h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", { class: "mono wrap" }, e.action),
        h("td", { class: "mono wide-only" }, e.target ?? "—"), h("td", {}, badge(String(e.status), e.status < 400 ? "applied" : "failed")))),
    { id: "audit-table" }),
    cursor ? h("button", { class: "secondary", onclick: more }, "More") : null);
  const load = async () => {
    const page = await get("/api/v1/audit?limit=50");
    rows = page.items; cursor = page.next_cursor;
    render();
  };
  async function more() {
    const page = await get("/api/v1/audit?limit=50&cursor=" + encodeURIComponent(cursor));
    rows = rows.concat(page.items); cursor = page.next_cursor;
    render();
  }
  await load();
  if (gen !== generation) return;
  show(h("section", { id: "audit" }, h("h1", {}, "Audit log"), body));
  current = { refresh: load, wants: (c) => c.topic === "audit" };
}

// ---------------------------------------------------------------- start

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", logout);
start();
