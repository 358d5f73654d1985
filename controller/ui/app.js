// iSDF dashboard: a single-page app over the operator API (/api/v1), served
// by the controller itself. No build step, no dependencies, nothing loaded
// from elsewhere (the Content-Security-Policy forbids it anyway).
//
// Safety rule: data is only ever put in the page as text (textContent,
// attributes set one by one); never through innerHTML.
//
// Pages whose forms must survive live updates are drawn once, with the
// parts that show data (tables, counts) refilled on each change; pages
// without inputs are simply redrawn (see `page`).

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

/** Appends children, skipping null, undefined and false (never the text "null"). */
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces an element's children. Unlike `replaceChildren`, skips null and undefined. */
function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
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
  fill(main(), ...children);
}

function badge(text, kind) {
  return h("span", { class: "badge " + (kind ?? text ?? "") }, text ?? "—");
}

function table(headers, rows, opts = {}) {
  return h("div", { class: "table-wrap" },
    h("table", { id: opts.id },
      h("thead", {}, h("tr", {}, headers.map((x) =>
        typeof x === "string" ? h("th", {}, x) : h("th", { class: x.cls }, x.label)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, opts.empty || "Nothing yet.")))));
}

/** A two-column table of [label, value] pairs. */
function facts(pairs, id) {
  return h("table", { class: "facts", id }, h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "wrap" }, v)))));
}

function field(label, el, ...extra) {
  return h("label", {}, label, el, extra);
}

function ago(ts) {
  if (!ts) return "—";
  const secs = Math.round((Date.now() - Date.parse(ts)) / 1000);
  if (secs < -5) return "in " + duration(-secs);
  if (secs < 5) return "just now";
  return duration(secs) + " ago";
}

function duration(secs) {
  if (secs < 90) return secs + " s";
  if (secs < 5400) return Math.round(secs / 60) + " min";
  if (secs < 129600) return Math.round(secs / 3600) + " h";
  return Math.round(secs / 86400) + " d";
}

function when(ts) {
  return ts ? h("time", { datetime: ts, title: new Date(ts).toLocaleString() }, ago(ts)) : "—";
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

/**
 * "plan=family, region=eu" → {plan: "family", region: "eu"}. Label keys and
 * values hold no commas, spaces nor `=`, so the text form is unambiguous.
 * Throws on a pair without `=`.
 */
function parseLabels(text) {
  const labels = {};
  for (const part of words(text)) {
    const eq = part.indexOf("=");
    if (eq <= 0) throw new Error(`"${part}" is not key=value`);
    labels[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return labels;
}

function words(text) {
  return text.split(/[,\s]+/).map((w) => w.trim()).filter(Boolean);
}

/** Calls `fn` once typing pauses for `ms`. */
function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function hashParams() {
  return new URLSearchParams(location.hash.split("?")[1] || "");
}

/** "?a=1&b=2" of the non-empty values, or "". */
function queryOf(values) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(values)) if (v) p.set(k, v);
  const text = p.toString();
  return text ? "?" + text : "";
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
const patch = (path, body) => api("PATCH", path, body);
const remove = (path) => api("DELETE", path);

/** The same call with `?dry_run=true`: validated by the server, nothing written. */
function dryRun(method, path, body) {
  return api(method, path + (path.includes("?") ? "&" : "?") + "dry_run=true", body);
}

function errorText(e) {
  return e instanceof ApiError ? `${e.message} (${e.code})` : String(e.message || e);
}

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, errorText(e));
}

/** A message line under a form: `say(text, "error" | "ok" | "warn")`. */
function messageLine(id) {
  const el = h("p", { id, class: "message", role: "status" });
  el.say = (text, kind) => { el.className = "message " + (kind || ""); fill(el, text); };
  el.clear = () => el.say("");
  return el;
}

/** The routers a selector matches: {selector, matched, sample: [{id, name}]}. */
function matching(selector, sample = 5) {
  return get("/api/v1/devices/matching" + queryOf({ selector, sample: String(sample) }));
}

/**
 * A label selector input with a live preview of what it matches (how many
 * routers, a few names), debounced as the operator types, and a warning
 * when it matches none. `preview.matched` is the last count (null: none yet).
 */
function selectorField(id, opts = {}) {
  const input = h("input", { id, placeholder: opts.placeholder || "e.g. plan=family", value: opts.value || "", autocomplete: "off", spellcheck: "false", "aria-label": "Label selector" });
  const preview = h("p", { id: id + "-preview", class: "preview muted", "aria-live": "polite" });
  let asked = 0;
  const update = async () => {
    const text = input.value.trim();
    const mine = ++asked;
    if (!text) { preview.matched = null; fill(preview); return; }
    try {
      const m = await matching(text, opts.sample || 5);
      if (mine === asked) showMatches(preview, m);
    } catch (e) {
      if (mine !== asked) return;
      preview.matched = null;
      preview.className = "preview error";
      fill(preview, errorText(e));
    }
  };
  const later = debounce(update, 300);
  input.addEventListener("input", () => { preview.className = "preview muted"; later(); });
  if (input.value) update();
  return { input, preview, update, get matched() { return preview.matched; } };
}

function showMatches(preview, m) {
  preview.matched = m.matched;
  preview.dataset.matched = m.matched;
  if (m.matched === 0) {
    preview.className = "preview warn";
    fill(preview, "⚠ ", h("code", {}, m.selector), " matches no router.");
    return;
  }
  const names = m.sample.map((d, i) => [i ? ", " : "", h("a", { href: "#/devices/" + d.id }, d.name)]);
  const more = m.matched > m.sample.length ? `, … ${m.matched - m.sample.length} more` : "";
  preview.className = "preview ok";
  fill(preview, `${m.matched} router${m.matched === 1 ? "" : "s"} match: `, names, more);
}

/** Warnings an answer carries (e.g. a selector that matches no router). */
function warningsBox(warnings, id) {
  if (!warnings || !warnings.length) return null;
  return h("div", { class: "callout warn", id, role: "status" }, warnings.map((w) => h("p", {}, "⚠ ", w)));
}

/** A CSV export link (the session cookie authorizes the download). */
function csvLink(id, path, filters, label) {
  const a = h("a", { id, class: "button secondary", download: "" }, label);
  a.setFilters = (f) => { a.href = path + queryOf(f); };
  a.setFilters(filters);
  return a;
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

/** The header (navigation, who is logged in, "Log out") shows only with a session. */
function showHeader(on) {
  document.getElementById("top").hidden = !on;
  if (!on) {
    document.getElementById("who-name").textContent = "";
    document.getElementById("who-role").textContent = "";
  }
}

function loginPage(message) {
  showHeader(false);
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
  showHeader(true);
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
  session.name = session.role = session.csrf = null;
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

/** Registers a page without inputs: `load` draws it (again on every relevant change). */
async function page(gen, load, wants) {
  const draw = async () => {
    const node = await load();
    if (gen === generation) show(node);
  };
  await draw();
  if (gen === generation) current = { refresh: draw, wants };
}

/**
 * Registers a page drawn once (it has forms): `refresh` refills its data
 * parts on every relevant change, leaving what is typed in its inputs.
 */
function live(gen, refresh, wants) {
  if (gen === generation) current = { refresh, wants };
}

// ---------------------------------------------------------------- fleet

async function fleetPage(gen) {
  const history = fleetHistory();
  await page(gen, async () => {
    const [o, overTime] = await Promise.all([get("/api/v1/fleet/overview"), history().catch(errorBox)]);
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
        h("div", { class: "panel" }, h("h2", {}, "By agent version"), bars(o.by_agent_version),
          (o.release_missing ?? []).map((b) => h("p", { class: "muted release-missing" },
            `${b.count} ${b.count === 1 ? "router waits" : "routers wait"} for a build of ${b.value} for its target.`))),
        h("div", { class: "panel" }, h("h2", {}, "By model"), bars(o.by_model))),
      overTime);
  // Routers created, deleted, relabelled or reporting all come as `device`.
  }, (c) => c.topic === "device");
}

function barOf(share) {
  const bar = h("span", { class: "bar" });
  bar.style.width = Math.max(0, Math.min(100, share * 100)).toFixed(1) + "%";
  bar.style.display = "block";
  return bar;
}

// ---------------------------------------------------------------- charts

/**
 * A stacked step chart: each sample's values (`sample[part]`, parts from
 * the bottom up, drawn with class `c-<part>` unless `classOf` says) held
 * until the next sample, or for `holdMs` at most: a longer silence (no
 * leader then, a router that did not report) is a gap, not a made-up value.
 * `lines` are drawn over the stack as steps (e.g. failing routers, which
 * are online or stale too). The SVG stretches to the width; its labels are
 * HTML below it, so they are not stretched with it.
 */
function stackedChart({ samples, parts, lines = [], until, top = 0, holdMs = Infinity, label, unit, classOf = (p) => "c-" + p, height = 120, digits = 0 }) {
  if (!samples.length) return h("p", { class: "muted" }, "No samples yet.");
  const W = 600, H = height;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label, "shape-rendering": "crispEdges" });
  svg.style.height = H + "px";
  const times = samples.map((x) => Date.parse(x.at));
  const t0 = times[0];
  const t1 = Math.max(until || 0, times[times.length - 1], t0 + 1000);
  const stackOf = (x) => parts.reduce((a, p) => a + (x[p] || 0), 0);
  const max = Math.max(top, ...samples.map(stackOf), ...samples.flatMap((x) => lines.map((l) => x[l] || 0)));
  const peak = max > 0 ? max : 1;
  const X = (t) => ((t - t0) / (t1 - t0)) * W;
  const Y = (v) => H - (v / peak) * H;
  const end = (i) => Math.min(i + 1 < samples.length ? times[i + 1] : t1, times[i] + holdMs);
  samples.forEach((x, i) => {
    let below = 0;
    const x0 = X(times[i]), width = Math.max(0.5, X(end(i)) - x0);
    for (const part of parts) {
      const v = x[part] || 0;
      if (v > 0) {
        svg.append(s("rect", { x: x0, y: Y(below + v), width, height: Y(below) - Y(below + v), class: classOf(part), "data-part": part }));
      }
      below += v;
    }
  });
  for (const line of lines) {
    const d = samples.map((x, i) => `M${X(times[i])},${Y(x[line] || 0)}H${X(end(i))}`).join("");
    svg.append(s("path", { d, class: "line " + classOf(line), "data-line": line, fill: "none", "vector-effect": "non-scaling-stroke" }));
  }
  const span = t1 - t0;
  const stamp = (t) => span > 36 * 3600 * 1000 ? new Date(t).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : new Date(t).toLocaleTimeString();
  return h("figure", { class: "chart" }, svg,
    h("figcaption", { class: "axis" },
      h("span", {}, stamp(t0)),
      h("span", {}, unit ? `0 – ${Number(max.toFixed(digits)).toLocaleString()} ${unit}` : ""),
      h("span", {}, stamp(t1))));
}

/** The legend of a chart's parts (and lines, drawn as a stroke). */
function chartLegend(parts, lines = [], classOf = (p) => "c-" + p, names = (p) => p.replace(/_/g, " ")) {
  return h("div", { class: "legend" },
    parts.map((p) => h("span", {}, h("i", { class: classOf(p) }), names(p))),
    lines.map((p) => h("span", {}, h("i", { class: "stroke " + classOf(p) }), names(p))));
}

// ---------------------------------------------------------------- fleet history

const FLEET_RANGES = [["6h", 6], ["24h", 24], ["7d", 24 * 7], ["30d", 24 * 30]];
const FLEET_PARTS = ["online", "stale", "never_reported"];
/** Versions charted one by one; the rest are summed as `other`. */
const CHARTED_VERSIONS = 6;

/**
 * The fleet over time (`/api/v1/fleet/history`): routers by state, failing
 * over them, and by agent version. Fetched again at most every 30 s (the
 * samples are a minute apart), however often the overview changes.
 */
function fleetHistory() {
  const range = () => (FLEET_RANGES.find(([key]) => key === hashParams().get("range")) || FLEET_RANGES[1]);
  let cached = null;
  return async () => {
    const [key, hours] = range();
    if (!cached || cached.key !== key || Date.now() - cached.at > 30000) {
      const since = new Date(Date.now() - hours * 3600 * 1000).toISOString();
      cached = { key, at: Date.now(), data: await get(`/api/v1/fleet/history?since=${encodeURIComponent(since)}&points=360`) };
    }
    return fleetHistoryPanel(key, cached.data);
  };
}

function fleetHistoryPanel(key, history) {
  const hold = 2 * history.step_secs * 1000;
  const until = Date.parse(history.until);
  const ranges = h("div", { class: "ranges", role: "group", "aria-label": "range" }, FLEET_RANGES.map(([k]) =>
    h("a", { href: "#/fleet?range=" + k, class: "range" + (k === key ? " active" : ""), "data-range": k }, k)));
  // The versions of the newest sample first, then any other, the rest as other.
  const latest = history.samples.length ? history.samples[history.samples.length - 1].by_agent_version : [];
  const names = [...new Set([...latest.map((b) => b.value), ...history.samples.flatMap((x) => x.by_agent_version.map((b) => b.value))])];
  const charted = names.filter((v) => v !== "other").slice(0, CHARTED_VERSIONS);
  const versionParts = [...charted, ...(names.length > charted.length ? ["other"] : [])];
  const versionClass = (v) => "v" + versionParts.indexOf(v);
  const versionSamples = history.samples.map((x) => {
    const row = { at: x.at };
    for (const b of x.by_agent_version) {
      const part = charted.includes(b.value) ? b.value : "other";
      row[part] = (row[part] || 0) + b.count;
    }
    return row;
  });
  return h("div", { class: "panel", id: "fleet-history" },
    h("div", { class: "row spread" }, h("h2", {}, "Over time"), ranges),
    h("p", { class: "muted" }, `One sample every ${duration(history.step_secs)} (the last of each step); kept ${Math.round(history.retention_secs / 86400)} days. A gap: no sample then.`),
    h("div", { class: "grid2" },
      h("div", { id: "fleet-states-chart" }, h("h3", {}, "Routers by state"),
        stackedChart({ samples: history.samples, parts: FLEET_PARTS, lines: ["failing"], until, holdMs: hold, label: "routers by state over time", unit: "routers" }),
        chartLegend(FLEET_PARTS, ["failing"])),
      h("div", { id: "fleet-versions-chart" }, h("h3", {}, "Routers by agent version"),
        stackedChart({ samples: versionSamples, parts: versionParts, until, holdMs: hold, label: "routers by agent version over time", unit: "routers", classOf: versionClass }),
        chartLegend(versionParts, [], versionClass, (v) => v))));
}

// ---------------------------------------------------------------- devices

const DEVICE_STATES = ["", "online", "stale", "failing", "never_reported"];

async function devicesPage(gen) {
  const params = hashParams();
  const filters = { q: params.get("q") || "", state: params.get("state") || "", selector: params.get("selector") || "" };
  let cursor = null, rows = [], error = null;
  const body = h("div", { id: "device-results" });

  const q = h("input", { id: "device-search", type: "search", placeholder: "name contains…", value: filters.q, "aria-label": "Search by name" });
  const state = h("select", { id: "device-state", "aria-label": "State" },
    DEVICE_STATES.map((v) => h("option", { value: v, selected: v === filters.state }, v ? v.replace("_", " ") : "any state")));
  const selector = selectorField("device-selector", { placeholder: "labels, e.g. model=ax3000", value: filters.selector });
  const csv = csvLink("device-csv", "/api/v1/exports/devices.csv", filters, "Export CSV");
  const bulk = can("operator") ? bulkLabels(() => filters.selector, () => reload()) : null;

  const query = (after) => "/api/v1/devices" + queryOf({ limit: "50", ...filters, cursor: after });
  const render = () => {
    const more = cursor ? h("button", { class: "secondary", id: "device-more", onclick: loadMore }, "More") : null;
    fill(body, error ? errorBox(error) : null, deviceTable(rows), more);
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
  const changed = debounce(() => {
    filters.q = q.value.trim(); filters.state = state.value; filters.selector = selector.input.value.trim();
    history.replaceState(null, "", "#/devices" + queryOf(filters));
    csv.setFilters(filters);
    if (bulk) bulk.filterChanged();
    reload();
  }, 250);
  q.addEventListener("input", changed);
  selector.input.addEventListener("input", changed);
  state.addEventListener("change", changed);

  await reload();
  if (gen !== generation) return;
  show(h("section", { id: "devices" },
    h("div", { class: "title-row" }, h("h1", {}, "Devices"), csv),
    h("div", { class: "panel" },
      h("div", { class: "row" },
        field("Search", q), field("State", state), h("label", { class: "grow" }, "Labels", selector.input)),
      selector.preview,
      bulk),
    body));
  if (bulk) bulk.filterChanged();
  // Live: refetch the rows on screen, keeping the inputs as they are.
  // Audit entries come with every change made through the API (new devices).
  live(gen, reload, (c) => c.topic === "device" || c.topic === "audit");
}

/** The agent a router runs, and the one an agent-release wants it to run. */
function agentCell(hl) {
  const running = hl.agent_version ?? "—";
  if (hl.agent_release_missing) {
    return [running, " ", h("span", { class: "badge failing", title: "no build of " + hl.agent_release_missing + " for this router's target" }, "no build of " + hl.agent_release_missing)];
  }
  if (hl.wanted_agent_version && hl.wanted_agent_version !== hl.agent_version) {
    return [running, " → ", hl.wanted_agent_version];
  }
  return running;
}

function deviceTable(rows) {
  return table(
    ["Name", "State", "Outcome", { label: "Enforced", cls: "wide-only" }, { label: "Agent", cls: "wide-only" }, "Last report", { label: "Labels", cls: "wide-only" }],
    rows.map((d) => {
      const hl = d.health || {};
      return h("tr", {},
        h("td", {}, h("a", { href: "#/devices/" + d.id }, d.name)),
        h("td", {}, badge(hl.state), hl.failing ? [" ", badge("failing")] : null),
        h("td", {}, hl.outcome ? badge(hl.outcome) : "—"),
        h("td", { class: "wide-only" }, hl.enforced_version ?? "—"),
        h("td", { class: "wide-only mono" }, agentCell(hl)),
        h("td", {}, when(hl.last_report_at)),
        h("td", { class: "wide-only wrap mono" }, labelsText(d.labels)));
    }), { id: "device-table", empty: "No device matches." });
}

/**
 * "Change labels of these N routers": a label change for every router the
 * list's selector filter matches (the name and state filters do not narrow
 * it), previewed with the count and a few names, confirmed, then made in one
 * call (`POST /api/v1/devices/labels`).
 */
function bulkLabels(selectorOf, done) {
  const open = h("button", { type: "button", class: "secondary", id: "bulk-open", hidden: true }, "Change labels");
  const set = h("input", { id: "bulk-set", placeholder: "plan=premium, region=eu", autocomplete: "off" });
  const drop = h("input", { id: "bulk-remove", placeholder: "old-label, other", autocomplete: "off" });
  const preview = h("p", { id: "bulk-preview", class: "preview" });
  const confirm = h("button", { type: "submit", id: "bulk-apply" }, "Apply");
  const message = messageLine("bulk-message");
  const form = h("form", { id: "bulk-form", class: "subpanel", hidden: true },
    h("h2", {}, "Change labels"),
    h("div", { class: "row" }, field("Set (key=value, …)", set), field("Remove (keys)", drop)),
    h("p", { class: "muted" }, "Applies to every router the selector matches, whatever the name and state filters show:"),
    preview,
    h("div", { class: "actions" }, confirm, h("button", { type: "button", class: "secondary", onclick: () => { form.hidden = true; } }, "Cancel")),
    message);

  const filterChanged = async () => {
    const selector = selectorOf();
    if (!selector) { open.hidden = true; form.hidden = true; return; }
    try {
      const m = await matching(selector, 10);
      if (selector !== selectorOf()) return;
      open.hidden = false;
      open.disabled = m.matched === 0;
      fill(open, `Change labels of these ${m.matched} router${m.matched === 1 ? "" : "s"}`);
      showMatches(preview, m);
      fill(confirm, `Apply to ${m.matched} router${m.matched === 1 ? "" : "s"}`);
    } catch (_) { open.hidden = true; form.hidden = true; }
  };
  open.addEventListener("click", () => { form.hidden = false; message.clear(); set.focus(); });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.clear();
    let body;
    try {
      body = { selector: selectorOf() };
      const labels = parseLabels(set.value);
      const keys = words(drop.value);
      if (Object.keys(labels).length) body.set = labels;
      if (keys.length) body.remove = keys;
    } catch (e) { message.say(e.message, "error"); return; }
    if (!body.set && !body.remove) { message.say("Give labels to set or keys to remove.", "error"); return; }
    try {
      const r = await post("/api/v1/devices/labels", body);
      message.say(`Done: ${r.matched} matched, ${r.changed} changed; ${r.recompiled.changed} configs changed.`, "ok");
      set.value = drop.value = "";
      await done();
      filterChanged();
    } catch (e) { message.say(errorText(e), "error"); }
  });
  const panel = h("div", { id: "bulk" }, open, form);
  panel.filterChanged = filterChanged;
  return panel;
}

// ---------------------------------------------------------------- a device

/** What the device page shows, fetched together; a part that fails shows its error. */
async function deviceData(id) {
  const soft = (p, otherwise) => p.catch((e) => (e.status === 404 ? otherwise : { error: e }));
  const [d, status, history, config, events, services, blocks, overTime] = await Promise.all([
    get(`/api/v1/devices/${id}`),
    soft(get(`/api/v1/devices/${id}/status`), null),
    soft(get(`/api/v1/devices/${id}/status/history?limit=20`), []),
    soft(get(`/api/v1/devices/${id}/config`), null),
    soft(get(`/api/v1/devices/${id}/events?limit=20`), { items: [], totals: [] }),
    soft(get(`/api/v1/devices/${id}/services`), { items: [] }),
    soft(get(`/api/v1/devices/${id}/blocks`), []),
    soft(get(`/api/v1/devices/${id}/history`), { reports: [], intervals: [] }),
  ]);
  return { d, status, history, config, events, services, blocks, overTime };
}

async function devicePage(gen, id) {
  const parts = {
    router: h("div", { class: "panel", id: "device-router" }),
    status: h("div", { class: "panel", id: "device-status" }),
    services: h("div", { id: "device-services" }),
    config: h("div", { id: "device-config" }),
    blocks: h("div", { id: "device-blocks" }),
    counters: h("div", { id: "device-counters" }),
    overTime: h("div", { id: "device-over-time" }),
    events: h("div", { id: "device-events" }),
    history: h("div", { id: "device-history" }),
  };
  const name = h("h1", { id: "device-name" });
  const labels = can("operator") ? labelEditor(id, () => refresh()) : null;
  const blockForm = can("operator") ? placeBlockForm(id, () => refresh()) : null;
  const refresh = async () => {
    const data = await deviceData(id);
    if (gen !== generation) return;
    fill(name, data.d.name);
    if (labels) labels.showCurrent(data.d.labels);
    drawDevice(parts, data, () => refresh());
  };
  await refresh();
  if (gen !== generation) return;
  show(h("section", { id: "device" },
    h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
    name,
    h("div", { class: "grid2" }, h("div", {}, parts.router, labels), parts.status),
    h("h2", {}, "Services in force"), parts.services,
    h("h2", {}, "Compiled config"), parts.config,
    h("h2", {}, "Blocks in force"), parts.blocks, blockForm,
    h("h2", { id: "counters-title" }, "Counters"), parts.counters,
    h("h2", {}, "Over time"), parts.overTime,
    h("h2", {}, "Recent events"), parts.events,
    h("h2", {}, "Status history"), parts.history));
  live(gen, refresh, (c) => (c.topic === "device" || c.topic === "config") && (c.id === id || !c.id));
}

function drawDevice(parts, data, refresh) {
  const { d, status, history, config, events, services, blocks, overTime } = data;
  const report = status && !status.error ? status.report : null;
  fill(parts.router, h("h2", {}, "Router"), facts([
    ["Id", h("span", { class: "mono" }, d.id)],
    ["Labels", h("span", { id: "device-labels", class: "mono" }, labelsText(d.labels) || "—")],
    ["Registered", when(d.created_at)],
    ["Certificate expires", d.certificate_expires_at ? new Date(d.certificate_expires_at).toLocaleDateString() : "not enrolled"],
  ]));
  fill(parts.status, h("h2", {}, "Status"), status && status.error ? errorBox(status.error) : statusFacts(status));
  fill(parts.services, servicesInForce(services));
  fill(parts.config, compiledConfig(config));
  fill(parts.blocks, blocksTable(d.id, blocks, refresh));
  fill(parts.counters, countersPart(status));
  fill(parts.overTime, overTime.error ? errorBox(overTime.error) : routerHistory(overTime));
  fill(parts.events, events.error ? errorBox(events.error) : eventsTable(events));
  fill(parts.history, history.error ? errorBox(history.error) : historyTable(history));
}

function statusFacts(status) {
  if (!status) return h("p", { class: "muted" }, "This router has not reported yet.");
  const r = status.report;
  return facts([
    ["Enforced version", h("span", { id: "enforced-version" }, r.enforced_version ?? "none")],
    ["Outcome", badge(r.outcome)],
    ["Attempted version", r.attempted_version ?? "—"],
    ["Errors", r.errors.length ? r.errors.join("; ") : "none"],
    ["Backend", r.backend],
    ["Agent", r.agent_version],
    ["Last report", when(status.received_at)],
    ["Tunnels", (r.tunnels || []).length || "none"],
  ]);
}

function servicesInForce(services) {
  if (services.error) return errorBox(services.error);
  return table(["Service", { label: "Type", cls: "wide-only" }, "Revision", "Selector", "Rollout"], services.items.map((s) =>
    h("tr", {},
      h("td", {}, h("a", { href: "#/services/" + s.service_id }, s.service_name)),
      h("td", { class: "wide-only" }, s.type),
      h("td", {}, h("a", { href: `#/services/${s.service_id}?to=${s.revision}` }, "revision " + s.revision)),
      h("td", { class: "mono" }, s.selector),
      h("td", {}, s.rollout_id ? h("a", { href: "#/rollouts/" + s.rollout_id }, "being rolled out") : "—"))),
  { id: "device-services-table", empty: "No service applies to this router." });
}

function compiledConfig(config) {
  if (!config) return h("p", { class: "muted" }, "Not compiled yet.");
  if (config.error) return errorBox(config.error);
  return h("div", { class: "panel" },
    h("p", { id: "config-summary" },
      `Version ${config.version} · digest `, h("code", { title: config.digest }, config.digest.slice(0, 16) + "…"),
      " · issued ", when(config.issued_at), " · expires ", new Date(config.expires_at).toLocaleString()),
    h("details", { id: "config-details" },
      h("summary", {}, "Decoded config"),
      h("pre", { class: "code", id: "config-json" }, JSON.stringify(config.config, null, 2))));
}

function flowText(f) {
  const any = (addr) => (addr === "0.0.0.0/0" || addr === "::/0" ? "any" : addr);
  const end = (addr, port) => (port ? `${any(addr)}:${port}` : any(addr));
  return `${f.protocol || "any"} ${end(f.src, f.sport)} → ${end(f.dst, f.dport)}`;
}

function blocksTable(deviceId, blocks, refresh) {
  if (blocks.error) return errorBox(blocks.error);
  const message = messageLine("block-end-message");
  const end = (b) => async () => {
    message.clear();
    try { await remove(`/api/v1/devices/${deviceId}/blocks/${b.id}`); await refresh(); }
    catch (e) { message.say(errorText(e), "error"); }
  };
  const wide = (label) => ({ label, cls: "wide-only" });
  return h("div", {}, table(["Flow", wide("Action"), wide("Origin"), "Reason", wide("By"), "Ends", ""], blocks.map((b) =>
    h("tr", { "data-block": b.id },
      h("td", { class: "mono" }, flowText(b.flow)),
      h("td", { class: "wide-only" }, b.action),
      h("td", { class: "wide-only" }, b.origin),
      h("td", { class: "wrap" }, b.reason || "—"),
      h("td", { class: "wide-only" }, b.created_by),
      h("td", {}, when(b.expires_at)),
      h("td", {}, b.origin === "operator" && can("operator")
        ? h("button", { type: "button", class: "secondary small end-block", onclick: end(b) }, "End now") : null))),
  { id: "blocks-table", empty: "No blocks in force." }), message);
}

function countersPart(status) {
  if (!status || status.error) return h("p", { class: "muted" }, "No counters reported.");
  return h("div", {},
    h("p", { class: "muted", id: "counters-as-of" }, "As of the report of ", when(status.received_at),
      ` (${new Date(status.received_at).toLocaleString()}, report #${status.sequence}).`),
    table(["Rule", "Packets", "Bytes"], status.report.counters.map((c) =>
      h("tr", {}, h("td", { class: "mono" }, c.rule_id), h("td", {}, c.packets.toLocaleString()), h("td", {}, c.bytes.toLocaleString()))),
    { id: "counters-table", empty: "No counters reported." }));
}

const OUTCOMES = ["applied", "rolled_back", "rejected", "stale"];
/** Rules charted one by one (those that matched most); the rest as other. */
const CHARTED_RULES = 5;

/**
 * A router's last 100 reports over time (`/api/v1/devices/{id}/history`):
 * each report's outcome held until the next, the packets its drop and
 * reject rules stopped per second, and its busiest rules' packets per second.
 */
function routerHistory(history) {
  if (!history.reports.length) return h("p", { class: "muted" }, "No reports yet.");
  const last = history.reports[history.reports.length - 1];
  const until = Math.max(Date.now(), Date.parse(last.at));
  const outcomes = history.reports.map((r) => ({ at: r.at, [r.outcome]: 1 }));
  const intervals = history.intervals;
  const untilLast = intervals.length ? Date.parse(intervals[intervals.length - 1].to) : until;
  const blocked = intervals.filter((i) => i.blocked_packets_per_second !== null)
    .map((i) => ({ at: i.from, blocked: i.blocked_packets_per_second }));
  const totals = {};
  for (const i of intervals) for (const [rule, r] of Object.entries(i.rules)) totals[rule] = (totals[rule] || 0) + r.packets_per_second;
  const ranked = Object.keys(totals).filter((r) => totals[r] > 0).sort((a, b) => totals[b] - totals[a]);
  const charted = ranked.slice(0, CHARTED_RULES);
  const ruleParts = [...charted, ...(ranked.length > charted.length ? ["other"] : [])];
  const ruleClass = (r) => "v" + ruleParts.indexOf(r);
  const rules = intervals.map((i) => {
    const row = { at: i.from };
    for (const [rule, r] of Object.entries(i.rules)) {
      const part = charted.includes(rule) ? rule : "other";
      if (ruleParts.includes(part)) row[part] = (row[part] || 0) + r.packets_per_second;
    }
    return row;
  });
  const chart = (id, title, body) => h("div", { id }, h("h3", {}, title), body);
  return h("div", { class: "panel" },
    chart("router-outcomes-chart", `Outcome of each report (${history.reports.length})`,
      [stackedChart({ samples: outcomes, parts: OUTCOMES, until, top: 1, height: 28, label: "outcomes over time", unit: "" }), chartLegend(OUTCOMES)]),
    h("div", { class: "grid2" },
      chart("router-blocked-chart", "Blocked packets per second",
        blocked.length ? stackedChart({ samples: blocked, parts: ["blocked"], until: untilLast, label: "blocked packets per second", unit: "packets/s", digits: 2 })
          : h("p", { class: "muted" }, "Not reported (an agent older than its counters), or a single report so far.")),
      chart("router-rules-chart", "Packets per second by rule",
        ruleParts.length ? [stackedChart({ samples: rules, parts: ruleParts, until: untilLast, label: "packets per second by rule", unit: "packets/s", classOf: ruleClass, digits: 2 }),
          chartLegend(ruleParts, [], ruleClass, (r) => r)]
          : h("p", { class: "muted" }, "No rule matched a packet between reports."))));
}

function eventsTable(events) {
  return table(["When", "Kind", "Origin", "Reason"], events.items.map((e) =>
    h("tr", {}, h("td", {}, when(e.received_at)), h("td", {}, e.event.kind),
      h("td", {}, e.event.block ? e.event.block.origin : "—"), h("td", { class: "wrap" }, e.event.block ? e.event.block.reason : "—"))),
  { id: "events-table", empty: "No events reported." });
}

function historyTable(history) {
  return table(["Received", "Sequence", "Outcome", "Enforced", "Errors"], history.map((s) =>
    h("tr", {}, h("td", {}, when(s.received_at)), h("td", {}, s.sequence), h("td", {}, badge(s.report.outcome)),
      h("td", {}, s.report.enforced_version ?? "—"), h("td", { class: "wrap" }, s.report.errors.join("; ") || "—"))),
  { id: "history-table", empty: "No reports yet." });
}

/** Edits one router's labels (the complete new set, `PATCH /api/v1/devices/{id}`). */
function labelEditor(id, done) {
  const input = h("input", { id: "labels-input", autocomplete: "off", spellcheck: "false", "aria-label": "Labels" });
  const message = messageLine("labels-message");
  let shown = null;
  const form = h("form", { class: "panel", id: "labels-form" },
    h("h2", {}, "Labels"),
    h("div", { class: "row" }, h("label", { class: "grow" }, "key=value, comma separated (the complete set)", input),
      h("button", { type: "submit", id: "labels-save" }, "Save labels")),
    message);
  form.showCurrent = (labels) => {
    const text = labelsText(labels);
    // Leave what the operator is typing alone.
    if (shown === null || input.value === shown) input.value = text;
    shown = text;
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.clear();
    let labels;
    try { labels = parseLabels(input.value); } catch (e) { message.say(e.message, "error"); return; }
    try {
      const r = await patch(`/api/v1/devices/${id}`, { labels });
      shown = null;
      message.say(`Saved. ${r.recompiled && r.recompiled.changed ? "Its config was recompiled." : "Its config is unchanged."}`, "ok");
      await done();
    } catch (e) { message.say(errorText(e), "error"); }
  });
  return form;
}

/** "90", "30m", "2h", "1d" → seconds (NaN when unreadable). */
function parseDuration(text) {
  const m = text.trim().match(/^(\d+)\s*(s|m|min|h|d)?$/);
  if (!m) return NaN;
  return Number(m[1]) * ({ s: 1, m: 60, min: 60, h: 3600, d: 86400 }[m[2] || "s"]);
}

/** Places a timed block on the router (`POST /api/v1/devices/{id}/blocks`). */
function placeBlockForm(id, done) {
  const protocol = h("select", { id: "block-protocol" }, ["tcp", "udp", "any", "icmp", "icmpv6"].map((p) => h("option", { value: p }, p)));
  const dst = h("input", { id: "block-dst", placeholder: "any, or 198.51.100.0/24" });
  const dport = h("input", { id: "block-dport", placeholder: "any, or 443 or 6881-6889" });
  const src = h("input", { id: "block-src", placeholder: "any, or 192.168.1.20" });
  const length = h("input", { id: "block-duration", value: "1h", placeholder: "30m, 2h, 1d" });
  const action = h("select", { id: "block-action" }, ["drop", "reject"].map((a) => h("option", { value: a }, a)));
  const reason = h("input", { id: "block-reason", maxlength: 200, placeholder: "why (kept with the block)" });
  const message = messageLine("block-message");
  const form = h("form", { class: "panel", id: "block-form" },
    h("h3", {}, "Place a timed block"),
    h("div", { class: "row" }, field("Protocol", protocol), field("Source", src), field("Destination", dst), field("Dest. port", dport),
      field("For", length), field("Action", action), h("label", { class: "grow" }, "Reason", reason)),
    h("p", {}, h("button", { type: "submit", id: "block-place" }, "Place block")), message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.clear();
    const secs = parseDuration(length.value);
    if (!(secs > 0)) { message.say("Give the duration as seconds or with a unit: 30m, 2h, 1d.", "error"); return; }
    const flow = {};
    if (protocol.value !== "any") flow.protocol = protocol.value;
    for (const [k, el] of [["src", src], ["dst", dst], ["dport", dport]]) if (el.value.trim()) flow[k] = el.value.trim();
    try {
      const r = await post(`/api/v1/devices/${id}/blocks`, { flows: [flow], duration_secs: secs, action: action.value, reason: reason.value.trim() });
      message.say(`Placed ${r.items.length} block${r.items.length === 1 ? "" : "s"} until ${new Date(r.items[0].expires_at).toLocaleString()} (config version ${r.config_version ?? "—"}).`, "ok");
      reason.value = "";
      await done();
    } catch (e) { message.say(errorText(e), "error"); }
  });
  return form;
}

// ---------------------------------------------------------------- services

/** A starting spec per service type, for the create form. */
const SPEC_EXAMPLES = {
  "flow-block": { flows: [{ protocol: "udp", dport: 27015 }] },
  "bittorrent-block": { block_secs: 3600 },
  "pay-per-site": { catalog: "default" },
  "agent-release": { version: "0.2.0" },
};

/** The type of a ServiceView: `type`, or `kind` from a controller before it was renamed. */
function typeOf(sv) {
  return sv.type ?? sv.kind;
}

async function servicesPage(gen) {
  const showArchived = h("input", { type: "checkbox", id: "services-archived", checked: hashParams().get("archived") === "true" });
  const list = h("div", { id: "service-list" });
  const refresh = async () => {
    const page = await get("/api/v1/services?limit=500" + (showArchived.checked ? "&archived=true" : ""));
    fill(list, table(["Name", "Type", "Latest revision", "Created"], page.items.map((sv) =>
      h("tr", { class: sv.archived ? "archived" : null },
        h("td", {}, h("a", { href: "#/services/" + sv.id }, sv.name), sv.archived ? [" ", badge("archived")] : null),
        h("td", {}, typeOf(sv)), h("td", {}, sv.latest_revision), h("td", {}, when(sv.created_at)))),
    { id: "service-table", empty: "No services yet." }));
  };
  showArchived.addEventListener("change", () => {
    history.replaceState(null, "", "#/services" + (showArchived.checked ? "?archived=true" : ""));
    refresh().catch((e) => fill(list, errorBox(e)));
  });
  await refresh();
  if (gen !== generation) return;
  show(h("section", { id: "services" },
    h("h1", {}, "Services"),
    h("p", {}, h("label", { class: "inline" }, showArchived, "Show archived services")),
    list,
    can("operator") ? serviceForm() : null));
  live(gen, refresh, (c) => c.topic === "audit");
}

/**
 * The spec textarea with its error line beside it. The spec is JSON; the
 * server checks its shape (`?dry_run=true`) before anything is saved.
 */
function specField(id, value) {
  const area = h("textarea", { id, rows: 8, spellcheck: "false", class: "code", "aria-label": "Spec (JSON)" });
  area.value = value;
  const error = h("p", { id: id + "-error", class: "field-error", role: "alert" });
  const parse = () => {
    try { return JSON.parse(area.value); } catch (e) { throw new FieldError(area, error, "Not JSON: " + e.message); }
  };
  return { area, error, parse };
}

/** An error to show beside one field rather than under the form. */
class FieldError extends Error {
  constructor(input, line, message) { super(message); this.input = input; this.line = line; }
}

/**
 * Validates with the server (`?dry_run=true`), then saves: the API's
 * error is shown beside the field it is about (`fieldOf(code)`), under the
 * form otherwise.
 */
async function validateThenSave(call, fieldOf, message, onSaved, saving = true) {
  message.clear();
  for (const el of document.querySelectorAll(".field-error")) fill(el);
  try {
    const body = call.body();
    await dryRun(call.method, call.path, body);
    if (!saving) { message.say("The server accepts it (nothing saved).", "ok"); return; }
    const saved = await api(call.method, call.path, body);
    await onSaved(saved);
  } catch (e) {
    const target = e instanceof FieldError ? e.line : e instanceof ApiError ? fieldOf(e.code) : null;
    if (target) fill(target, errorText(e));
    else message.say(errorText(e), "error");
  }
}

function serviceForm() {
  const name = h("input", { id: "service-name", required: true, placeholder: "games", autocomplete: "off" });
  const nameError = h("p", { id: "service-name-error", class: "field-error", role: "alert" });
  const type = h("select", { id: "service-type" }, Object.keys(SPEC_EXAMPLES).map((t) => h("option", { value: t }, t)));
  const spec = specField("service-spec", JSON.stringify(SPEC_EXAMPLES["flow-block"], null, 2));
  const message = messageLine("service-message");
  let untouched = spec.area.value;
  type.addEventListener("change", () => {
    // A new example for the new type, unless the operator wrote their own.
    if (spec.area.value === untouched) spec.area.value = untouched = JSON.stringify(SPEC_EXAMPLES[type.value], null, 2);
  });
  const call = { method: "POST", path: "/api/v1/services", body: () => ({ name: name.value.trim(), type: type.value, spec: spec.parse() }) };
  const fieldOf = (code) => ({ name_taken: nameError, invalid_name: nameError, invalid_request: null }[code] ?? spec.error);
  const saved = (sv) => { location.hash = "#/services/" + sv.id; };
  const form = h("form", { class: "panel", id: "service-form" },
    h("h2", {}, "New service"),
    h("div", { class: "row" }, field("Name", name, nameError), field("Type", type)),
    h("label", {}, "Spec (JSON)", spec.area, spec.error),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", id: "service-check", onclick: () => validateThenSave(call, fieldOf, message, saved, false) }, "Check"),
      h("button", { type: "submit", id: "service-save" }, "Create service")),
    message);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); validateThenSave(call, fieldOf, message, saved); });
  return form;
}

async function serviceData(id) {
  const [sv, revisions, assignments] = await Promise.all([
    get(`/api/v1/services/${id}`),
    get(`/api/v1/services/${id}/revisions?limit=500`),
    get(`/api/v1/assignments?limit=500&service_id=${id}`).catch(() => ({ items: [] })),
  ]);
  const mine = assignments.items.filter((a) => a.service_id === id);
  await Promise.all(mine.slice(0, 50).map(async (a) => {
    a.matched = await matching(a.selector, 0).then((m) => m.matched, () => null);
  }));
  return { sv, revisions: revisions.items, assignments: mine };
}

/** Deletes an assignment (its routers lose the service), after a confirmation. */
function unassignButton(a, message, done) {
  const click = async () => {
    message.clear();
    if (!window.confirm(`Remove this service from the routers ${a.selector} matches?`)) return;
    try { await remove(`/api/v1/assignments/${a.id}`); await done(); }
    catch (e) { message.say(errorText(e), "error"); }
  };
  return h("button", { type: "button", class: "secondary small unassign", onclick: click }, "Unassign");
}

/** How many routers an assignment reaches now; a warning when none. */
function reach(matched) {
  if (matched === undefined || matched === null) return "—";
  return matched === 0 ? badge("matches no router", "stale") : String(matched);
}

async function servicePage(gen, id) {
  let data = await serviceData(id);
  if (gen !== generation) return;
  const title = h("h1", { id: "service-title" });
  const revisionsPart = h("div", { id: "service-revisions" });
  const assignmentsPart = h("div", { id: "service-assignments" });
  const assignmentMessage = messageLine("unassign-message");
  const operator = can("operator");
  const lifecycle = operator ? lifecycleButtons(() => refresh()) : null;
  const revisionForm = operator ? newRevisionForm(id, data, () => refresh()) : null;
  const assign = operator ? assignForm(id, data, () => refresh()) : null;
  const diff = revisionDiff(id, data.revisions);
  const draw = () => {
    const { sv } = data;
    fill(title, sv.name, " ", badge(typeOf(sv), ""), sv.archived ? [" ", badge("archived")] : null);
    fill(revisionsPart, table(["Revision", "Created"], data.revisions.map((r) => h("tr", {}, h("td", {}, r.revision), h("td", {}, when(r.created_at)))), { id: "revision-table" }));
    fill(assignmentsPart, table(["Selector", "Revision", "Routers", { label: "Created", cls: "wide-only" }, ""], data.assignments.map((a) =>
      h("tr", { "data-assignment": a.id }, h("td", { class: "mono" }, a.selector), h("td", {}, a.revision),
        h("td", {}, reach(a.matched)), h("td", { class: "wide-only" }, when(a.created_at)),
        h("td", {}, operator ? unassignButton(a, assignmentMessage, () => refresh()) : null))),
    { id: "assignment-table", empty: "Not assigned." }), assignmentMessage);
    if (lifecycle) lifecycle.update(sv);
    if (revisionForm) revisionForm.update(data);
    if (assign) assign.update(data);
    diff.update(data.revisions);
  };
  async function refresh() {
    data = await serviceData(id);
    if (gen === generation) draw();
  }
  draw();
  show(h("section", { id: "service" },
    h("p", {}, h("a", { href: "#/services" }, "← Services")),
    h("div", { class: "title-row" }, title, lifecycle),
    h("h2", {}, "Revisions"), revisionsPart, revisionForm,
    h("h2", {}, "Assignments"), assignmentsPart, assign,
    h("h2", {}, "Diff"), diff));
  await diff.show();
  live(gen, refresh, (c) => c.topic === "audit");
}

/**
 * Archive / unarchive and delete; a refusal (409 naming the assignments:
 * only a service nothing assigns can be archived or deleted) is shown. Drawn once (its message survives live updates); `update` follows
 * the service's archived state.
 */
function lifecycleButtons(done) {
  let sv = null;
  const message = messageLine("service-lifecycle-message");
  const act = (fn) => async () => {
    message.clear();
    try { await fn(); } catch (e) { message.say(errorText(e), "error"); }
  };
  const archive = h("button", { type: "button", class: "secondary", id: "service-archive" }, "Archive");
  archive.addEventListener("click", act(async () => { await patch(`/api/v1/services/${sv.id}`, { archived: !sv.archived }); await done(); }));
  const destroy = act(async () => {
    if (!window.confirm(`Delete the service ${sv.name} and all its revisions?`)) return;
    await remove(`/api/v1/services/${sv.id}`);
    location.hash = "#/services";
  });
  const panel = h("div", { id: "service-lifecycle" },
    h("div", { class: "actions" }, archive,
      h("button", { type: "button", class: "danger", id: "service-delete", onclick: destroy }, "Delete")),
    message);
  panel.update = (current) => { sv = current; fill(archive, sv.archived ? "Unarchive" : "Archive"); };
  return panel;
}

function newRevisionForm(id, data, done) {
  const latest = () => data.revisions[data.revisions.length - 1];
  const spec = specField("revision-spec", JSON.stringify(latest() ? latest().spec : {}, null, 2));
  const message = messageLine("revision-message");
  const call = { method: "POST", path: `/api/v1/services/${id}/revisions`, body: () => ({ spec: spec.parse() }) };
  const fieldOf = (code) => (code === "service_archived" ? null : spec.error);
  const saved = async (r) => { message.say(`Saved as revision ${r.revision}.`, "ok"); await done(); };
  const form = h("form", { class: "panel", id: "revision-form" },
    h("h3", {}, "New revision"),
    h("label", {}, "Spec (JSON), starting from the latest revision", spec.area, spec.error),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", id: "revision-check", onclick: () => validateThenSave(call, fieldOf, message, saved, false) }, "Check"),
      h("button", { type: "submit", id: "revision-save" }, "Save revision")),
    message);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); validateThenSave(call, fieldOf, message, saved); });
  form.update = (d) => { data = d; form.hidden = !!d.sv.archived; };
  return form;
}

/** Assigns a revision to the routers a selector matches, previewing them as the operator types. */
function assignForm(id, data, done) {
  const revision = h("select", { id: "assign-revision" });
  const selector = selectorField("assign-selector", { placeholder: "plan=family" });
  const message = messageLine("assign-message");
  const warnings = h("div", { id: "assign-warnings" });
  const form = h("form", { class: "panel", id: "assign-form" },
    h("h3", {}, "Assign"),
    h("div", { class: "row" }, field("Revision", revision), h("label", { class: "grow" }, "Routers (label selector)", selector.input)),
    selector.preview,
    h("p", {}, h("button", { type: "submit", id: "assign-save" }, "Assign")),
    warnings, message);
  // The latest revision unless the operator picked another.
  let picked = null;
  revision.addEventListener("change", () => { picked = revision.value; });
  form.update = (d) => {
    fill(revision, d.revisions.map((r) => h("option", { value: r.revision }, "revision " + r.revision)).reverse());
    if (picked) revision.value = picked;
    form.hidden = !!d.sv.archived;
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.clear(); fill(warnings);
    try {
      const a = await post("/api/v1/assignments", { service_id: id, revision: Number(revision.value), selector: selector.input.value.trim() });
      const n = a.matched ?? (a.recompiled ? a.recompiled.devices : null);
      message.say(`Assigned revision ${a.revision} to ${a.selector}${n === null ? "" : ` (${n} router${n === 1 ? "" : "s"})`}.`, "ok");
      fill(warnings, warningsBox(a.warnings, "assign-warning-list"));
      await done();
    } catch (e) { message.say(errorText(e), "error"); }
  });
  form.update(data);
  return form;
}

/** Two revision pickers and the unified diff between them. */
function revisionDiff(id, revisions) {
  // #/services/{id}?from=1&to=2 (a rollout's page links here) picks the pair.
  const params = hashParams();
  const from = h("select", { id: "diff-from", "aria-label": "From revision" });
  const to = h("select", { id: "diff-to", "aria-label": "To revision" });
  const out = h("div", { id: "diff-out" });
  const options = (select, revs, chosen) => {
    fill(select, revs.map((r) => h("option", { value: r, selected: r === chosen }, "revision " + r)));
  };
  const panel = h("div", {}, h("div", { class: "row panel" }, field("From", from), field("To", to)), out);
  panel.update = (items) => {
    const revs = items.map((r) => r.revision);
    const latest = revs[revs.length - 1];
    const pick = (value, otherwise) => { const n = Number(value); return revs.includes(n) ? n : otherwise; };
    options(from, revs, pick(from.value || params.get("from"), latest > 1 ? latest - 1 : latest));
    options(to, revs, pick(to.value || params.get("to"), latest));
  };
  panel.show = async () => {
    try {
      const d = await get(`/api/v1/services/${id}/revisions/${from.value}/diff/${to.value}`);
      const lines = d.unified ? d.unified.replace(/\n$/, "").split("\n") : [];
      const cls = (l) => l.startsWith("+++") || l.startsWith("---") ? "head" : l.startsWith("@@") ? "hunk" : l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "";
      fill(out, lines.length
        ? h("pre", { class: "diff", id: "diff" }, lines.map((l) => h("span", { class: cls(l) }, l)))
        : h("p", { class: "muted", id: "diff" }, "The two revisions are identical."));
    } catch (e) { fill(out, errorBox(e)); }
  };
  from.addEventListener("change", panel.show);
  to.addEventListener("change", panel.show);
  panel.update(revisions);
  return panel;
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

/** A stacked chart of one wave's samples (counts held until the next sample). */
function waveChart(samples, routers, until) {
  return stackedChart({ samples, parts: CHART_PARTS, top: routers, until, label: "progress over time", unit: "routers" });
}

async function rolloutsPage(gen) {
  const stateFilter = hashParams().get("state") || "";
  const form = can("operator") ? await rolloutForm() : null;
  const list = h("div", { id: "rollout-list" });
  const load = async () => {
    const p = new URLSearchParams({ limit: "100" });
    if (stateFilter) p.set("state", stateFilter);
    const page = await get("/api/v1/rollouts?" + p);
    fill(list, table(["Service", { label: "Selector", cls: "wide-only" }, "Revisions", "State", "Progress", { label: "Started", cls: "wide-only" }],
      page.items.map((r) => h("tr", {},
        h("td", {}, h("a", { href: "#/rollouts/" + r.id }, r.service_name)),
        h("td", { class: "mono wide-only" }, r.selector),
        h("td", {}, `${r.from_revision ?? "new"} → ${r.to_revision}`),
        h("td", {}, rolloutStateBadge(r)),
        h("td", { class: "progress-cell", title: countsText(r.totals) }, progressBar(r.totals), `${r.totals.applied}/${r.totals.routers} applied`,
          r.totals.failed ? `, ${r.totals.failed} failed` : null, r.totals.waiting ? `, ${r.totals.waiting} waiting` : null),
        h("td", { class: "wide-only" }, when(r.created_at)))),
      { id: "rollout-table", empty: "No rollouts yet." }));
  };
  try { await load(); } catch (e) { fill(list, errorBox(e)); }
  if (gen !== generation) return;
  const filter = h("select", { id: "rollout-state", "aria-label": "State" },
    ["", "running", "paused", "completed", "aborted"].map((v) => h("option", { value: v, selected: v === stateFilter }, v || "any state")));
  filter.addEventListener("change", () => { location.hash = "#/rollouts" + (filter.value ? "?state=" + filter.value : ""); });
  show(h("section", { id: "rollouts" }, h("h1", {}, "Rollouts"),
    h("div", { class: "row" }, field("State", filter)), list, form));
  live(gen, load, (c) => c.topic === "rollout" || c.topic === "device");
}

/** Offline routers when it ended: "completed with 3 offline". */
function offlineCount(r) {
  return r.offline_devices ? r.offline_devices.length : r.totals.offline;
}

function rolloutStateBadge(r) {
  if (r.outcome === "completed_with_offline") return badge(`completed with ${offlineCount(r)} offline`, "stale");
  return badge(r.state);
}

/** "10%", "10 %", "5.5" → a share; anything else is a canary selector. */
function canaryOf(text) {
  return /^\d+(\.\d+)?\s*%?$/.test(text) ? { percent: Number(text.replace("%", "")) } : { selector: text };
}

/**
 * Starts a rollout of a service's revision, either to a new selector (with
 * its preview) or over one of the service's assignments. A wave that would
 * match no router is refused by the server (409 `empty_wave`) unless "allow
 * empty waves" is ticked.
 */
async function rolloutForm() {
  const [services, assignments] = await Promise.all([
    get("/api/v1/services?limit=500").catch(() => ({ items: [] })),
    get("/api/v1/assignments?limit=500").catch(() => ({ items: [] })),
  ]);
  const service = h("select", { id: "rollout-service", required: true }, services.items.map((sv) => h("option", { value: sv.id }, `${sv.name} (latest ${sv.latest_revision})`)));
  const revision = h("select", { id: "rollout-revision" });
  const target = h("select", { id: "rollout-target", "aria-label": "Routers" });
  const selector = selectorField("rollout-selector", { placeholder: "plan=family" });
  const canary = h("input", { id: "rollout-canary", placeholder: "10% or canary=true" });
  const canaryPreview = h("p", { id: "rollout-canary-preview", class: "preview muted" });
  const waves = h("input", { id: "rollout-waves", placeholder: "25, 100" });
  const minApplied = h("input", { id: "rollout-min-applied", type: "number", step: "0.01", min: 0, max: 1, placeholder: "0.9" });
  const maxFailed = h("input", { id: "rollout-max-failed", type: "number", step: "0.01", min: 0, max: 1, placeholder: "0" });
  const soak = h("input", { id: "rollout-soak", type: "number", min: 0, placeholder: "60" });
  const offline = h("input", { id: "rollout-offline", type: "number", min: 1, placeholder: "600" });
  const allowEmpty = h("input", { id: "rollout-allow-empty", type: "checkbox" });
  const refusal = h("div", { id: "rollout-refusal" });
  const error = h("p", { class: "error", id: "rollout-error", role: "alert" });
  const newTarget = h("div", { id: "rollout-new-target" }, h("div", { class: "row" }, h("label", { class: "grow" }, "Selector (a new assignment)", selector.input)), selector.preview);

  const chosenService = () => services.items.find((sv) => sv.id === service.value);
  const targetSelector = () => {
    const a = assignments.items.find((x) => x.id === target.value);
    return a ? a.selector : selector.input.value.trim();
  };
  const serviceChanged = () => {
    const sv = chosenService();
    const revs = sv ? Array.from({ length: sv.latest_revision }, (_, i) => sv.latest_revision - i) : [];
    fill(revision, revs.map((r) => h("option", { value: r }, r === sv.latest_revision ? `revision ${r} (latest)` : `revision ${r}`)));
    const mine = assignments.items.filter((a) => sv && a.service_id === sv.id);
    fill(target, h("option", { value: "" }, "a new selector…"),
      mine.map((a) => h("option", { value: a.id }, `assigned to ${a.selector} (revision ${a.revision})`)));
    targetChanged();
  };
  const targetChanged = () => { newTarget.hidden = target.value !== ""; previewCanary(); };
  // A canary selector's routers among the target's: the two selectors joined.
  const previewCanary = debounce(async () => {
    const c = canary.value.trim(), t = targetSelector();
    if (!c || !t || "percent" in canaryOf(c)) { fill(canaryPreview); return; }
    try { showMatches(canaryPreview, await matching(`${t},${c}`, 5)); }
    catch (e) { canaryPreview.className = "preview error"; fill(canaryPreview, errorText(e)); }
  }, 300);
  service.addEventListener("change", serviceChanged);
  target.addEventListener("change", targetChanged);
  canary.addEventListener("input", previewCanary);
  selector.input.addEventListener("input", previewCanary);

  const body = () => {
    const b = {};
    if (target.value) b.assignment_id = target.value;
    else { b.service_id = service.value; b.selector = selector.input.value.trim(); }
    if (revision.value) b.revision = Number(revision.value);
    if (canary.value.trim()) b.canary = canaryOf(canary.value.trim());
    if (waves.value.trim()) b.waves = waves.value.split(",").map((x) => Number(x.replace("%", "").trim()));
    if (minApplied.value) b.min_applied_share = Number(minApplied.value);
    if (maxFailed.value) b.max_failed_share = Number(maxFailed.value);
    if (soak.value) b.soak_secs = Number(soak.value);
    if (offline.value) b.offline_timeout_secs = Number(offline.value);
    if (allowEmpty.checked) b.allow_empty_waves = true;
    return b;
  };
  const form = h("form", { class: "panel", id: "rollout-form" },
    h("h2", {}, "Start a rollout"),
    h("div", { class: "row" }, field("Service", service), field("Revision", revision), field("Routers", target)),
    newTarget,
    h("div", { class: "row" }, field("Canary", canary), field("Waves (cumulative %)", waves), field("Min applied share", minApplied),
      field("Max failed share", maxFailed), field("Soak (s)", soak), field("Offline after (s)", offline)),
    canaryPreview,
    h("p", {}, h("label", { class: "inline" }, allowEmpty, "Allow empty waves (a wave that matches no router passes at once)")),
    refusal,
    h("p", {}, h("button", { type: "submit", id: "rollout-start" }, "Start rollout")), error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    fill(refusal);
    try {
      const r = await post("/api/v1/rollouts", body());
      location.hash = "#/rollouts/" + r.id;
    } catch (e) {
      if (e.code === "empty_wave") fill(refusal, emptyWaveRefusal(e));
      else error.textContent = errorText(e);
    }
  });
  serviceChanged();
  return form;
}

function emptyWaveRefusal(e) {
  return h("div", { class: "callout bad", id: "rollout-empty-wave", role: "alert" },
    h("strong", {}, "Refused: a wave matches no router. "), e.message,
    h("p", {}, "An empty canary would pass at once and release the change to every router. Fix the canary or the waves, or tick “Allow empty waves” to start anyway."));
}
/** "Completed with N offline" and the routers counted offline when it ended. */
function offlineAtEnd(r) {
  if (r.outcome !== "completed_with_offline") return null;
  const routers = r.offline_devices || [];
  return h("div", { class: "callout warn", id: "rollout-outcome", role: "status" },
    h("strong", {}, `Completed with ${offlineCount(r)} offline. `),
    "These routers had not reported the new revision when the rollout ended; they get it when they next poll.",
    h("ul", { id: "rollout-offline", class: "names" }, routers.map((d) => h("li", {}, h("a", { href: "#/devices/" + d.id }, d.name)))));
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
      offlineAtEnd(r),
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

/** A datetime-local input's value as RFC 3339 (the browser's time zone), or "". */
function rfc3339(local) {
  if (!local) return "";
  const t = new Date(local);
  return isNaN(t) ? "" : t.toISOString();
}

async function auditPage(gen) {
  const params = hashParams();
  const inputs = {
    actor: h("input", { id: "audit-actor", placeholder: "initial-admin", value: params.get("actor") || "" }),
    action: h("input", { id: "audit-action", placeholder: "POST /api/v1/devices", value: params.get("action") || "" }),
    target: h("input", { id: "audit-target", placeholder: "an id", value: params.get("target") || "" }),
    since: h("input", { id: "audit-since", type: "datetime-local", value: params.get("since") || "" }),
    until: h("input", { id: "audit-until", type: "datetime-local", value: params.get("until") || "" }),
  };
  // What the API and the export take (times in RFC 3339).
  const filters = () => ({
    actor: inputs.actor.value.trim(), action: inputs.action.value.trim(), target: inputs.target.value.trim(),
    since: rfc3339(inputs.since.value), until: rfc3339(inputs.until.value),
  });
  const csv = csvLink("audit-csv", "/api/v1/exports/audit.csv", filters(), "Export CSV");
  let rows = [], cursor = null, error = null;
  const body = h("div", { id: "audit-results" });
  const render = () => fill(body,
    error ? errorBox(error) : null,
    auditTable(rows),
    cursor ? h("button", { class: "secondary", id: "audit-more", onclick: more }, "More") : null);
  const query = (after) => "/api/v1/audit" + queryOf({ limit: "50", ...filters(), cursor: after });
  const load = async () => {
    try {
      const page = await get(query(null));
      rows = page.items; cursor = page.next_cursor; error = null;
    } catch (e) { error = e; rows = []; cursor = null; }
    render();
  };
  async function more() {
    const page = await get(query(cursor));
    rows = rows.concat(page.items); cursor = page.next_cursor;
    render();
  }
  const changed = debounce(() => {
    const shown = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
    history.replaceState(null, "", "#/audit" + queryOf(shown));
    csv.setFilters(filters());
    load();
  }, 300);
  for (const el of Object.values(inputs)) {
    el.addEventListener("input", changed);
    el.addEventListener("change", changed);
  }
  await load();
  if (gen !== generation) return;
  show(h("section", { id: "audit" },
    h("div", { class: "title-row" }, h("h1", {}, "Audit log"), csv),
    h("div", { class: "row panel", id: "audit-filters" },
      field("Actor", inputs.actor), field("Action starts with", inputs.action), field("Target", inputs.target),
      field("Since", inputs.since), field("Until", inputs.until)),
    body));
  live(gen, load, (c) => c.topic === "audit");
}

function auditTable(rows) {
  return table(["When", "Actor", "Action", { label: "Target", cls: "wide-only" }, "Status"], rows.map((e) =>
    h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", { class: "mono wrap" }, e.action),
      h("td", { class: "mono wide-only" }, e.target ?? "—"), h("td", {}, badge(String(e.status), e.status < 400 ? "applied" : "failed")))),
  { id: "audit-table", empty: "No entry matches." });
}

// ---------------------------------------------------------------- start

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", logout);
start();
