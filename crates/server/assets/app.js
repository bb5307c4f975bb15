// msec dashboard: plain JS, no dependencies, no build step, no inline code (the CSP forbids it).
// Every value from the API is attacker-influenced (device names, labels, event details), so text
// goes into the page through textContent / createTextNode only, never innerHTML, and attributes
// are set with setAttribute on names chosen here.
//
// This one file runs in two places: as the page script, and as a dedicated Worker that holds the
// Server-Sent Events connection and hands the page batches of parsed events. Keeping the stream
// in a worker takes JSON parsing off the page's thread and, as a side effect, keeps the
// never-ending stream from freezing Chromium's virtual time (headless --virtual-time-budget waits
// for the page's own pending fetches, and a stream never finishes).
"use strict";

if (typeof WorkerGlobalScope !== "undefined" && self instanceof WorkerGlobalScope) {
  runStream((msg) => self.postMessage(msg));
} else {
  dashboard();
}

// ---- live stream (worker side, or page side as a fallback) -------------------------------------

/** Connects to /api/v1/stream and reports through `post`: {type:"state", state} and
 * {type:"batch", items:[{kind, data}], dropped}. Batches at most every 150 ms so that a burst of
 * readings costs the page one render, not hundreds. Reconnects for ever, with backoff. */
function runStream(post) {
  const MAX_PENDING = 5000;
  let pending = [];
  let dropped = 0;
  let flushTimer = null;
  let retryMs = 1000;

  const flush = () => {
    flushTimer = null;
    if (!pending.length) return;
    const items = pending;
    pending = [];
    post({ type: "batch", items, dropped });
    dropped = 0;
  };
  const push = (kind, raw) => {
    let data;
    try { data = JSON.parse(raw); } catch (_) { return; }
    if (!data || typeof data !== "object") return;
    if (pending.length >= MAX_PENDING) { pending.shift(); dropped++; }
    pending.push({ kind, data });
    if (flushTimer === null) flushTimer = setTimeout(flush, 150);
  };
  const retry = () => {
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  };
  function connect() {
    post({ type: "state", state: "connecting" });
    let es;
    try { es = new EventSource("/api/v1/stream"); } catch (_) { post({ type: "state", state: "offline" }); retry(); return; }
    es.addEventListener("open", () => { retryMs = 1000; post({ type: "state", state: "live" }); });
    es.addEventListener("error", () => {
      // CONNECTING: the browser retries by itself. CLOSED (an HTTP error, a wrong content type):
      // it gave up, so retry here.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        post({ type: "state", state: "offline" });
        retry();
      } else {
        post({ type: "state", state: "reconnecting" });
      }
    });
    es.addEventListener("reading", (e) => push("reading", e.data));
    es.addEventListener("security", (e) => push("security", e.data));
  }
  connect();
}

// ---- the page -----------------------------------------------------------------------------------

function dashboard() {
  const view = document.getElementById("view");
  const bannerEl = document.getElementById("banner");
  const liveEl = document.getElementById("live");
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW = 200; // readings kept per device for the charts
  const TABLE_READINGS = 50; // rows in the device page's readings table
  const MAX_EVENTS = 1000; // rows kept in the security events table
  const MAX_DEVICE_ROWS = 1000; // rows drawn in the devices table (the filter narrows it)

  const REASONS = {
    bad_signature: "the COSE signature did not verify with the device's registered key",
    unknown_device: "no registered device has this id or key",
    revoked_device: "the device's key was revoked",
    replayed_sequence: "a sequence number at or below one already accepted (replay)",
    stale_timestamp: "issued too long ago",
    future_timestamp: "issued in the future (clock skew or forgery)",
    oversized: "the message exceeded the size limit",
    malformed_envelope: "not a valid COSE_Sign1 envelope",
    malformed_senml: "the signed payload is not valid SenML",
    topic_mismatch: "published on another device's MQTT topic",
    events_suppressed: "refusals came faster than the event budget allows; their counts by reason are in the detail",
  };

  const reasonText = (r) => (typeof r === "string" && Object.hasOwn(REASONS, r) ? REASONS[r] : "");

  const devices = new Map(); // id -> device object, the latest known
  let streamState = "connecting";
  let ctx = null; // the current page: { alive, timers, listeners }
  const filters = { tenant: "", text: "" }; // overview filters, kept across navigation

  // ---- helpers ----------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(e, children);
    return e;
  }

  function append(parent, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(parent, c);
      else parent.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const str = (x) => (x === null || x === undefined ? "" : String(x));

  function clip(s, n) {
    s = str(s);
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  function fmtNum(v) {
    if (!isNum(v)) return str(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e9)) return v.toExponential(3);
    return String(Number(v.toPrecision(6)));
  }

  function fmtCount(v) {
    return isNum(v) ? v.toLocaleString("en-US") : "–";
  }

  const pad = (n, w = 2) => String(n).padStart(w, "0");

  function fmtTime(ms) {
    if (!isNum(ms)) return "–";
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return "–";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function ago(ms) {
    if (!isNum(ms)) return "never";
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < -5) return "in the future";
    if (s < 60) return `${Math.max(0, s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  /** A cell or span whose text is "N s ago", kept current by the global ticker. */
  function agoEl(tag, ms, attrs) {
    const e = el(tag, attrs);
    setAgo(e, ms);
    return e;
  }

  function setAgo(e, ms) {
    if (isNum(ms)) {
      e.setAttribute("data-ago", String(ms));
      e.setAttribute("title", fmtTime(ms));
    } else {
      e.removeAttribute("data-ago");
      e.removeAttribute("title");
    }
    e.textContent = ago(ms);
    freshness(e, ms);
  }

  function freshness(e, ms) {
    const age = isNum(ms) ? Date.now() - ms : Infinity;
    e.classList.toggle("fresh", age < 60000);
    e.classList.toggle("stale", age > 3600000);
  }

  function deviceHref(id) {
    return `#/device/${encodeURIComponent(id)}`;
  }

  function badge(status) {
    const s = str(status);
    return el("span", { class: `badge status-${s === "active" || s === "revoked" ? s : "other"}` }, clip(s, 20));
  }

  /** A percent as a small SVG bar plus the number; null as a dash. */
  function bar(percent, what) {
    if (!isNum(percent)) return el("span", { class: "muted" }, "–");
    const p = Math.max(0, Math.min(100, percent));
    const svg = el("svg:svg", { class: p < 20 ? "bar low" : p < 50 ? "bar mid" : "bar", viewBox: "0 0 100 8", preserveAspectRatio: "none", "aria-hidden": "true" },
      el("svg:rect", { class: "track", x: 0, y: 0, width: 100, height: 8, rx: 3 }),
      el("svg:rect", { class: "fill", x: 0, y: 0, width: p.toFixed(1), height: 8, rx: 3 }));
    return el("span", { class: "pct", title: `${what} ${Math.round(p)}%` }, svg, `${Math.round(p)}%`);
  }

  function table(id, headers, tbody) {
    return el("div", { class: "table-wrap" },
      el("table", { id },
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
        tbody));
  }

  function flash(node) {
    node.classList.remove("pulse");
    void node.getBoundingClientRect(); // restart the CSS animation
    node.classList.add("pulse");
  }

  // ---- errors -----------------------------------------------------------------------------------

  const problems = new Map(); // key -> message shown in the banner

  function showError(key, msg) {
    problems.set(key, clip(msg, 400));
    renderBanner();
  }

  function clearError(key) {
    if (problems.delete(key)) renderBanner();
  }

  function renderBanner() {
    if (!problems.size) {
      bannerEl.classList.add("hidden");
      bannerEl.replaceChildren();
      return;
    }
    const close = el("button", { type: "button", class: "close", "aria-label": "dismiss" }, "×");
    close.addEventListener("click", () => { problems.clear(); renderBanner(); });
    bannerEl.replaceChildren(el("ul", {}, [...problems.values()].map((m) => el("li", {}, m))), close);
    bannerEl.classList.remove("hidden");
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  /** GET a JSON API path; throws ApiError with a readable message (problem+json detail if any). */
  async function api(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 20000);
    let r;
    try {
      r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store", signal: abort.signal });
    } catch (e) {
      throw new ApiError(`cannot reach the server for ${path}${e && e.name === "AbortError" ? " (timed out)" : ""}`, 0);
    } finally {
      clearTimeout(timer);
    }
    if (r.status === 401) {
      // The session ended (expired, logged out elsewhere): back to the login page.
      location.reload();
    }
    if (!r.ok) {
      let detail = r.statusText;
      try {
        const p = await r.json();
        detail = [p.title, p.detail].filter((x) => typeof x === "string" && x).join(": ") || detail;
      } catch (_) { /* not JSON */ }
      throw new ApiError(`${path}: HTTP ${r.status} ${detail}`, r.status);
    }
    try {
      return await r.json();
    } catch (_) {
      throw new ApiError(`${path}: the response is not JSON`, r.status);
    }
  }

  function message(e) {
    return e && e.message ? e.message : str(e);
  }

  window.addEventListener("error", (e) => showError("uncaught", `Unexpected error: ${message(e.error || e.message)}`));
  window.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    showError("uncaught", `Unexpected error: ${message(e.reason)}`);
  });

  // ---- page lifecycle: timers and live listeners die with the page -----------------------------

  function later(c, ms, fn) {
    const h = setTimeout(() => {
      c.timers.delete(h);
      if (c.alive) fn();
    }, ms);
    c.timers.add(h);
  }

  /** Runs fn every ms while the page is shown; a failure shows in the banner until a success. */
  function every(c, ms, key, fn) {
    const tick = async () => {
      if (!document.hidden) {
        try {
          await fn();
          if (c.alive) clearError(key);
        } catch (e) {
          if (c.alive) showError(key, message(e));
        }
      }
      if (c.alive) later(c, ms, tick);
    };
    later(c, ms, tick);
  }

  // ---- live stream (page side) --------------------------------------------------------------------

  function setLive(state) {
    streamState = state;
    const labels = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", offline: "offline" };
    liveEl.textContent = labels[state] || "offline";
    liveEl.classList.toggle("on", state === "live");
    liveEl.classList.toggle("off", state !== "live");
  }

  function onStream(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "state") {
      setLive(msg.state);
      // The stream was refused or lost. If the session ended (logged out in another tab,
      // expired) `api` goes back to the login page; otherwise a hidden tab, whose polling has
      // stopped, would retry the stream without end, each try a refusal on the security log.
      if (msg.state === "offline") api("/api/v1/me").catch(() => {});
      return;
    }
    if (msg.type !== "batch" || !Array.isArray(msg.items)) return;
    for (const { kind, data } of msg.items) {
      if (kind !== "reading") continue;
      const d = devices.get(data.device_id);
      if (d && isNum(data.received_ms) && !(data.received_ms <= d.last_seen_ms)) {
        d.last_seen_ms = data.received_ms;
        if (isNum(data.sequence)) d.last_sequence = data.sequence;
      }
    }
    if (!ctx) return;
    for (const l of ctx.listeners) {
      try { l(msg.items); } catch (e) { showError("live", `Live update failed: ${message(e)}`); }
    }
  }

  function startStream() {
    let fellBack = false;
    const fallback = () => {
      if (fellBack) return;
      fellBack = true;
      runStream(onStream);
    };
    if (typeof Worker !== "function") { fallback(); return; }
    try {
      const w = new Worker("/app.js");
      w.addEventListener("message", (m) => onStream(m.data));
      w.addEventListener("error", (e) => {
        e.preventDefault();
        w.terminate();
        fallback();
      });
    } catch (_) {
      fallback();
    }
  }

  // ---- data -------------------------------------------------------------------------------------

  async function loadDevices() {
    const body = await api("/api/v1/devices");
    if (!body || !Array.isArray(body.devices)) throw new ApiError("/api/v1/devices: unexpected response", 200);
    const fresh = new Map();
    for (const d of body.devices) {
      if (!d || typeof d.id !== "string") continue;
      // A reading seen on the stream may be newer than this snapshot.
      const old = devices.get(d.id);
      if (old && isNum(old.last_seen_ms) && !(d.last_seen_ms >= old.last_seen_ms)) {
        d.last_seen_ms = old.last_seen_ms;
        d.last_sequence = old.last_sequence;
      }
      fresh.set(d.id, d);
    }
    devices.clear();
    for (const [k, v] of fresh) devices.set(k, v);
    return [...devices.values()];
  }

  function hasLocation(d) {
    return d.location && isNum(d.location.lat) && isNum(d.location.lon);
  }

  // ---- page: overview / devices -----------------------------------------------------------------

  const STAT_TILES = [
    ["devices", "devices registered"],
    ["active_devices", "active devices"],
    ["readings_stored", "readings stored"],
    ["accepted", "readings accepted"],
    ["duplicates", "duplicates dropped"],
    ["rejected", "rejected (security events)"],
  ];

  function statTiles() {
    const tiles = new Map();
    const box = el("div", { class: "tiles", id: "stats" });
    for (const [key, label] of STAT_TILES) {
      const n = el("div", { class: "n" }, "–");
      const tile = key === "rejected"
        ? el("a", { class: "tile", href: "#/security", "data-stat": key }, n, el("div", { class: "l" }, label))
        : el("div", { class: "tile", "data-stat": key }, n, el("div", { class: "l" }, label));
      tiles.set(key, { tile, n });
      box.appendChild(tile);
    }
    const update = (s) => {
      for (const [key, { tile, n }] of tiles) {
        const v = s ? s[key] : undefined;
        tile.classList.toggle("hidden", !isNum(v));
        n.textContent = fmtCount(v);
        if (key === "rejected") tile.classList.toggle("alert", isNum(v) && v > 0);
      }
    };
    return { box, update };
  }

  function deviceRow(d) {
    const tr = el("tr", { "data-device-id": d.id, class: d.status === "revoked" ? "revoked" : null },
      el("td", {}, el("a", { href: deviceHref(d.id) }, clip(d.id, 80))),
      el("td", {}, clip(d.tenant, 40)),
      el("td", {}, clip(d.kind, 40)),
      el("td", { class: "name" }, clip(d.name, 120)),
      el("td", {}, badge(d.status)),
      agoEl("td", d.last_seen_ms, { class: "seen" }),
      el("td", {}, bar(d.battery, "battery")),
      el("td", {}, bar(d.link, "link quality")));
    return tr;
  }

  /** What a row shows apart from "last seen", to know when to redraw it. */
  function rowKey(d) {
    return JSON.stringify([d.tenant, d.kind, d.name, d.status, d.battery, d.link]);
  }

  async function overviewPage(c) {
    const stats = statTiles();
    const tenantSel = el("select", { id: "tenant-filter", "aria-label": "tenant" });
    const search = el("input", { id: "device-search", type: "search", placeholder: "filter id, name, kind…", "aria-label": "filter devices" });
    search.value = filters.text;
    const count = el("span", { class: "muted count" });
    const tbody = el("tbody");
    const rows = new Map(); // id -> { tr, key }
    let order = "";

    const [s] = await Promise.all([api("/api/v1/stats"), loadDevices()]);
    if (!c.alive) return;
    stats.update(s);

    const renderTenants = () => {
      const counts = new Map();
      for (const d of devices.values()) counts.set(str(d.tenant), (counts.get(str(d.tenant)) || 0) + 1);
      if (filters.tenant && !counts.has(filters.tenant)) counts.set(filters.tenant, 0);
      const opts = [el("option", { value: "" }, `all tenants (${devices.size})`)];
      for (const t of [...counts.keys()].sort()) opts.push(el("option", { value: t }, `${clip(t, 40)} (${counts.get(t)})`));
      tenantSel.replaceChildren(...opts);
      tenantSel.value = filters.tenant;
    };

    const render = () => {
      const text = filters.text.trim().toLowerCase();
      const all = [...devices.values()].sort((a, b) => str(a.tenant).localeCompare(str(b.tenant)) || str(a.id).localeCompare(str(b.id)));
      const match = all.filter((d) => (!filters.tenant || d.tenant === filters.tenant) &&
        (!text || [d.id, d.name, d.kind, d.tenant].some((x) => str(x).toLowerCase().includes(text))));
      const shown = match.slice(0, MAX_DEVICE_ROWS);
      const keep = new Set();
      for (const d of shown) {
        keep.add(d.id);
        const key = rowKey(d);
        const have = rows.get(d.id);
        if (!have || have.key !== key) {
          const tr = deviceRow(d);
          if (have) have.tr.replaceWith(tr);
          rows.set(d.id, { tr, key });
        } else {
          const seen = have.tr.querySelector("td.seen");
          if (seen && seen.getAttribute("data-ago") !== str(d.last_seen_ms)) setAgo(seen, d.last_seen_ms);
        }
      }
      for (const id of [...rows.keys()]) if (!keep.has(id)) rows.delete(id);
      const newOrder = shown.map((d) => d.id).join("\n");
      if (newOrder !== order || tbody.children.length !== shown.length) {
        tbody.replaceChildren(...shown.map((d) => rows.get(d.id).tr));
        order = newOrder;
      }
      if (!shown.length) {
        tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 8, class: "muted" },
          devices.size ? "No device matches the filter." : "No devices registered yet.")));
        order = "";
      }
      count.textContent = match.length > shown.length
        ? `showing ${shown.length} of ${match.length} matching devices — narrow the filter`
        : `${match.length} of ${devices.size} devices`;
    };

    tenantSel.addEventListener("change", () => { filters.tenant = tenantSel.value; render(); });
    search.addEventListener("input", () => { filters.text = search.value; render(); });
    renderTenants();
    render();

    view.replaceChildren(
      stats.box,
      el("div", { class: "toolbar" },
        el("h2", {}, "Devices"),
        el("label", {}, "Tenant ", tenantSel),
        search, count),
      table("devices-table", ["Device", "Tenant", "Kind", "Name", "Status", "Last seen", "Battery", "Link"], tbody));

    every(c, 2000, "stats", async () => {
      const fresh = await api("/api/v1/stats");
      if (c.alive) stats.update(fresh);
    });
    every(c, 3000, "devices", async () => {
      await loadDevices();
      if (!c.alive) return;
      renderTenants();
      render();
    });
    c.listeners.push((items) => {
      const seen = new Set();
      for (const { kind, data } of items) if (kind === "reading") seen.add(data.device_id);
      for (const id of seen) {
        const row = rows.get(id);
        const d = devices.get(id);
        if (!row || !d) continue;
        const td = row.tr.querySelector("td.seen");
        if (td) setAgo(td, d.last_seen_ms);
        flash(row.tr);
      }
    });
  }

  // ---- page: locations ----------------------------------------------------------------------------

  const M_PER_DEG = 111320;

  function niceDistance(m) {
    const steps = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000];
    let best = steps[0];
    for (const s of steps) if (s <= m) best = s;
    return best;
  }

  /** An SVG plot of one tenant's devices, scaled to their bounding box (equirectangular, with
   * longitude shrunk by cos(latitude) so distances look right). */
  function tenantMap(tenant, list) {
    const W = 480, H = 320, M = 34;
    const lats = list.map((d) => d.location.lat), lons = list.map((d) => d.location.lon);
    let [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
    const midLat = (minLat + maxLat) / 2;
    const kx = Math.max(0.05, Math.cos((midLat * Math.PI) / 180));
    const minSpan = 0.002; // about 200 m, so one device alone is not a zero-size box
    const spanX = Math.max((maxLon - minLon) * kx, minSpan), spanY = Math.max(maxLat - minLat, minSpan);
    const scale = Math.min((W - 2 * M) / spanX, (H - 2 * M) / spanY); // px per degree of latitude
    const cLat = (minLat + maxLat) / 2, cLon = (minLon + maxLon) / 2;
    const x = (lon) => W / 2 + (lon - cLon) * kx * scale;
    const y = (lat) => H / 2 - (lat - cLat) * scale;

    const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, "data-tenant": tenant, role: "img", "aria-label": `device locations of ${tenant}` },
      el("svg:rect", { class: "ground", x: 0, y: 0, width: W, height: H }));
    // graticule: a few meridians/parallels with their values
    const grid = el("svg:g", { class: "grid" });
    for (let i = 1; i < 4; i++) {
      const gx = (W * i) / 4, gy = (H * i) / 4;
      grid.appendChild(el("svg:line", { x1: gx, y1: 0, x2: gx, y2: H }));
      grid.appendChild(el("svg:line", { x1: 0, y1: gy, x2: W, y2: gy }));
      const lon = cLon + (gx - W / 2) / (kx * scale), lat = cLat - (gy - H / 2) / scale;
      grid.appendChild(el("svg:text", { x: gx + 2, y: 10 }, `${lon.toFixed(4)}°`));
      grid.appendChild(el("svg:text", { x: 3, y: gy - 3 }, `${lat.toFixed(4)}°`));
    }
    svg.appendChild(grid);
    // scale bar
    const metres = niceDistance(((W / 4) / scale) * M_PER_DEG);
    const barPx = (metres / M_PER_DEG) * scale;
    svg.appendChild(el("svg:g", { class: "scale" },
      el("svg:line", { x1: 12, y1: H - 10, x2: (12 + barPx).toFixed(1), y2: H - 10 }),
      el("svg:text", { x: 12, y: H - 15 }, metres >= 1000 ? `${metres / 1000} km` : `${metres} m`)));
    svg.appendChild(el("svg:text", { class: "north", x: W - 10, y: H - 10, "text-anchor": "end" }, "N ↑"));

    // One marker per place: devices at one spot (a home kit, a depot) share it.
    const places = new Map();
    for (const d of list) {
      const key = `${d.location.lat.toFixed(6)},${d.location.lon.toFixed(6)}`;
      if (!places.has(key)) places.set(key, []);
      places.get(key).push(d);
    }
    const markers = el("svg:g", { class: "markers" });
    const labels = el("svg:g", { class: "labels" });
    for (const group of places.values()) {
      const d = group[0];
      const cx = x(d.location.lon), cy = y(d.location.lat);
      const revoked = group.some((g) => g.status === "revoked");
      const stale = group.every((g) => !isNum(g.last_seen_ms) || Date.now() - g.last_seen_ms > 3600000);
      const cls = revoked ? "revoked" : stale ? "stale" : "active";
      const place = clip(d.location.label || "", 60);
      const names = group.map((g) => `${g.id} (${str(g.kind)}, ${str(g.status)})`).join("\n");
      const title = el("svg:title", {}, `${place ? place + "\n" : ""}${names}\n${d.location.lat.toFixed(5)}, ${d.location.lon.toFixed(5)}`);
      const circle = el("svg:circle", {
        cx: cx.toFixed(1), cy: cy.toFixed(1), r: group.length > 1 ? 7 : 5, class: cls,
        "data-device-ids": group.map((g) => g.id).join(" "),
      }, title);
      markers.appendChild(group.length === 1 ? el("svg:a", { href: deviceHref(d.id) }, circle) : circle);
      if (group.length > 1) {
        markers.appendChild(el("svg:text", { class: "count", x: cx.toFixed(1), y: (cy + 3).toFixed(1), "text-anchor": "middle" }, String(group.length)));
      }
      const right = cx < W - 110;
      labels.appendChild(el("svg:text", {
        x: (right ? cx + 9 : cx - 9).toFixed(1), y: (cy + 3).toFixed(1), "text-anchor": right ? "start" : "end",
      }, group.length > 1 ? clip(place || d.id, 28) : clip(d.id, 28)));
    }
    svg.appendChild(markers);
    svg.appendChild(labels);
    return el("figure", { class: "map" },
      el("figcaption", {}, el("strong", {}, clip(tenant, 60)), " ", el("span", { class: "muted" }, `${list.length} device${list.length === 1 ? "" : "s"} at ${places.size} place${places.size === 1 ? "" : "s"}`)),
      svg);
  }

  function locationRow(d) {
    const loc = hasLocation(d) ? d.location : null;
    return el("tr", { "data-device-id": d.id, class: d.status === "revoked" ? "revoked" : null },
      el("td", {}, el("a", { href: deviceHref(d.id) }, clip(d.id, 80))),
      el("td", {}, clip(d.tenant, 40)),
      el("td", { class: "name" }, clip(d.name, 120)),
      el("td", {}, loc ? clip(loc.label, 120) : el("span", { class: "muted" }, "no location")),
      el("td", { class: "num" }, loc ? loc.lat.toFixed(5) : ""),
      el("td", { class: "num" }, loc ? loc.lon.toFixed(5) : ""),
      el("td", {}, badge(d.status)));
  }

  async function mapPage(c) {
    await loadDevices();
    if (!c.alive) return;
    const mapsBox = el("div", { class: "maps", id: "maps" });
    const tbody = el("tbody");
    const note = el("p", { class: "muted" });
    let signature = null;
    const render = () => {
      const list = [...devices.values()].sort((a, b) => str(a.tenant).localeCompare(str(b.tenant)) || str(a.id).localeCompare(str(b.id)));
      const sig = JSON.stringify(list.map((d) => [d.id, d.tenant, d.status, d.location, d.name]));
      if (sig === signature) return;
      signature = sig;
      const byTenant = new Map();
      for (const d of list.filter(hasLocation)) {
        const t = str(d.tenant);
        if (!byTenant.has(t)) byTenant.set(t, []);
        byTenant.get(t).push(d);
      }
      const maps = [...byTenant.keys()].sort().map((t) => tenantMap(t, byTenant.get(t)));
      mapsBox.replaceChildren(...(maps.length ? maps : [el("p", { class: "muted" }, "No device has a location yet.")]));
      const without = list.filter((d) => !hasLocation(d)).length;
      note.textContent = without ? `${without} device${without === 1 ? " has" : "s have"} no location.` : "";
      tbody.replaceChildren(...list.map(locationRow));
    };
    render();
    view.replaceChildren(
      el("h2", {}, "Device locations"),
      el("p", { class: "muted" }, "One map per tenant, scaled to its devices. Hover a marker for details; click it to open the device."),
      el("ul", { class: "legend" },
        el("li", { class: "active" }, "active"), el("li", { class: "stale" }, "not seen for an hour"), el("li", { class: "revoked" }, "revoked")),
      mapsBox, note,
      el("h2", {}, "All locations"),
      table("locations-table", ["Device", "Tenant", "Name", "Place", "Latitude", "Longitude", "Status"], tbody));
    every(c, 10000, "devices", async () => {
      await loadDevices();
      if (c.alive) render();
    });
  }

  // ---- page: one device -----------------------------------------------------------------------

  function measurementValue(m) {
    if (isNum(m.v)) return { kind: "number", value: m.v };
    if (isNum(m.s)) return { kind: "number", value: m.s, sum: true };
    if (typeof m.vb === "boolean") return { kind: "bool", value: m.vb };
    if (typeof m.vs === "string") return { kind: "string", value: m.vs };
    if (typeof m.vd === "string") return { kind: "data", value: m.vd };
    return { kind: "none", value: null };
  }

  function formatMeasurement(m) {
    const mv = measurementValue(m);
    const unit = typeof m.u === "string" && m.u ? ` ${clip(m.u, 20)}` : "";
    switch (mv.kind) {
      case "number": return `${mv.sum ? "Σ " : ""}${fmtNum(mv.value)}${unit}`;
      case "bool": return mv.value ? "true" : "false";
      case "string": return `“${clip(mv.value, 120)}”`;
      case "data": return `${Math.floor((mv.value.length * 3) / 4)} bytes of data`;
      default: return "–";
    }
  }

  /** Splits readings (oldest first) into numeric and boolean series and other latest values. */
  function extractSeries(readings) {
    const numeric = new Map(), bools = new Map(), others = new Map();
    for (const r of readings) {
      for (const m of r.measurements) {
        if (!m || typeof m.n !== "string" || !m.n) continue;
        const t = isNum(m.t) ? m.t * 1000 : isNum(r.issued_at) ? r.issued_at * 1000 : r.received_ms;
        const mv = measurementValue(m);
        if (mv.kind === "number") {
          if (!numeric.has(m.n)) numeric.set(m.n, { unit: "", points: [] });
          const s = numeric.get(m.n);
          if (typeof m.u === "string") s.unit = m.u;
          s.points.push({ t, v: mv.value });
        } else if (mv.kind === "bool") {
          if (!bools.has(m.n)) bools.set(m.n, { unit: "", points: [] });
          bools.get(m.n).points.push({ t, v: mv.value ? 1 : 0 });
        } else if (mv.kind !== "none") {
          others.set(m.n, { m, t });
        }
      }
    }
    for (const name of numeric.keys()) bools.delete(name);
    for (const s of [...numeric.values(), ...bools.values()]) s.points.sort((a, b) => a.t - b.t);
    return { numeric, bools, others };
  }

  /** A hand-written SVG line chart (or step chart for booleans) updated in place. */
  function makeChart(name, kind) {
    const W = 420, H = 150, L = 48, R = 10, T = 10, B = 22;
    const latest = el("span", { class: "latest" }, "–");
    const meta = el("div", { class: "meta muted" });
    const grid = el("svg:g", { class: "grid" });
    const area = el("svg:path", { class: "area" });
    const line = el("svg:polyline", { class: "line" });
    const dot = el("svg:circle", { class: "dot", r: 3, cx: -10, cy: -10 });
    const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": `${name} over time` }, grid, area, line, dot);
    const box = el("figure", { class: `chart ${kind === "bool" ? "bool" : "number"}`, "data-series": name },
      el("figcaption", {}, el("span", { class: "series-name" }, clip(name, 60)), latest), svg, meta);

    function update(series) {
      const pts = series.points;
      const unit = series.unit ? ` ${clip(series.unit, 20)}` : "";
      const last = pts[pts.length - 1];
      latest.textContent = kind === "bool" ? (last.v ? "true" : "false") : `${fmtNum(last.v)}${unit}`;
      latest.setAttribute("title", `latest at ${fmtTime(last.t)}`);
      const t0 = pts[0].t, t1 = last.t;
      let v0, v1;
      if (kind === "bool") { v0 = 0; v1 = 1; } else {
        v0 = Infinity; v1 = -Infinity;
        for (const p of pts) { if (p.v < v0) v0 = p.v; if (p.v > v1) v1 = p.v; }
        const padV = v1 > v0 ? (v1 - v0) * 0.08 : Math.max(Math.abs(v0) * 0.05, 1);
        v0 -= padV; v1 += padV;
      }
      const x = (t) => (t1 > t0 ? L + ((t - t0) / (t1 - t0)) * (W - L - R) : L + (W - L - R) / 2);
      const y = (v) => T + (1 - (v - v0) / (v1 - v0)) * (H - T - B);
      const coords = [];
      for (let i = 0; i < pts.length; i++) {
        const px = x(pts[i].t), py = y(pts[i].v);
        if (kind === "bool" && i > 0) coords.push(`${px.toFixed(1)},${y(pts[i - 1].v).toFixed(1)}`);
        coords.push(`${px.toFixed(1)},${py.toFixed(1)}`);
      }
      if (pts.length === 1) coords.push(`${(x(t0) + 1).toFixed(1)},${y(pts[0].v).toFixed(1)}`);
      line.setAttribute("points", coords.join(" "));
      area.setAttribute("d", pts.length > 1 ? `M${coords[0]} L${coords.join(" L")} L${x(t1).toFixed(1)},${H - B} L${x(t0).toFixed(1)},${H - B} Z` : "");
      dot.setAttribute("cx", x(t1).toFixed(1));
      dot.setAttribute("cy", y(last.v).toFixed(1));

      const ticks = kind === "bool" ? [[1, "true"], [0, "false"]] : [[v1, fmtTick(v1)], [(v0 + v1) / 2, fmtTick((v0 + v1) / 2)], [v0, fmtTick(v0)]];
      const g = [];
      for (const [v, label] of ticks) {
        g.push(el("svg:line", { x1: L, x2: W - R, y1: y(v).toFixed(1), y2: y(v).toFixed(1) }));
        g.push(el("svg:text", { x: L - 4, y: (y(v) + 3).toFixed(1), "text-anchor": "end" }, label));
      }
      g.push(el("svg:text", { x: L, y: H - 6, "text-anchor": "start" }, fmtClock(t0)));
      if (t1 > t0) g.push(el("svg:text", { x: W - R, y: H - 6, "text-anchor": "end" }, fmtClock(t1)));
      grid.replaceChildren(...g);

      if (kind === "bool") {
        const on = pts.filter((p) => p.v).length;
        meta.textContent = `${pts.length} samples · true in ${Math.round((on / pts.length) * 100)}%`;
      } else {
        let min = Infinity, max = -Infinity, sum = 0;
        for (const p of pts) { min = Math.min(min, p.v); max = Math.max(max, p.v); sum += p.v; }
        meta.textContent = `${pts.length} samples · min ${fmtNum(min)} · avg ${fmtNum(sum / pts.length)} · max ${fmtNum(max)}${unit}`;
      }
    }
    return { box, update };
  }

  function fmtTick(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  }

  function validReading(r) {
    return r && typeof r === "object" && isNum(r.sequence) && Array.isArray(r.measurements);
  }

  function readingRow(r) {
    return el("tr", { "data-sequence": r.sequence },
      el("td", { class: "num" }, String(r.sequence)),
      el("td", { class: "time" }, isNum(r.issued_at) ? fmtTime(r.issued_at * 1000) : "–"),
      el("td", { class: "time", title: isNum(r.received_ms) && isNum(r.issued_at) ? `received ${((r.received_ms - r.issued_at * 1000) / 1000).toFixed(2)} s after issue` : null },
        isNum(r.received_ms) ? fmtTime(r.received_ms) : "–"),
      el("td", { class: "values" }, r.measurements.filter((m) => m && typeof m.n === "string").slice(0, 40).map((m) =>
        el("span", { class: "mv" }, el("span", { class: "mn" }, clip(m.n, 40)), " ", formatMeasurement(m)))));
  }

  function deviceInfo(d) {
    const loc = hasLocation(d) ? d.location : null;
    const row = (label, ...value) => [el("dt", {}, label), el("dd", {}, ...value)];
    return el("dl", { class: "info", id: "device-info" },
      row("Device id", el("code", {}, clip(d.id, 120))),
      row("Name", clip(d.name, 200)),
      row("Tenant", clip(d.tenant, 80)),
      row("Kind", clip(d.kind, 80)),
      row("Status", badge(d.status)),
      row("Location", loc ? `${clip(loc.label, 120)} (${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)})` : el("span", { class: "muted" }, "none")),
      row("Key id", el("code", {}, clip(d.key_id, 80))),
      row("Registered", isNum(d.created_ms) ? fmtTime(d.created_ms) : "–"),
      row("Last seen", agoEl("span", d.last_seen_ms, { id: "last-seen" })),
      row("Last sequence", el("span", { id: "last-sequence" }, isNum(d.last_sequence) ? String(d.last_sequence) : "–")),
      row("Battery", bar(d.battery, "battery")),
      row("Link", bar(d.link, "link quality")));
  }

  async function devicePage(c, id) {
    const path = `/api/v1/devices/${encodeURIComponent(id)}`;
    let readings = []; // oldest first, at most WINDOW
    const seqs = new Set();
    let queued = []; // stream readings that arrive before the first load
    let loaded = false;
    let ingest = null;
    c.listeners.push((items) => {
      const mine = items.filter((it) => it.kind === "reading" && it.data.device_id === id).map((it) => it.data);
      if (!mine.length) return;
      if (loaded) ingest(mine, true); else queued.push(...mine);
    });

    let d, page;
    try {
      [d, page] = await Promise.all([api(path), api(`${path}/readings?limit=${WINDOW}`)]);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        if (!c.alive) return;
        view.replaceChildren(el("h2", {}, "Unknown device"),
          el("p", {}, "No device is registered with the id ", el("code", {}, clip(id, 120)), ". ", el("a", { href: "#/" }, "Back to the device list"), "."));
        return;
      }
      throw e;
    }
    if (!c.alive) return;
    if (!d || typeof d.id !== "string" || !page || !Array.isArray(page.readings)) throw new ApiError(`${path}: unexpected response`, 200);
    devices.set(d.id, Object.assign(devices.get(d.id) || {}, d));

    const infoBox = el("div", { class: "info-box" }, deviceInfo(d));
    const charts = el("div", { class: "charts", id: "charts" });
    const states = el("div", { class: "states", id: "states" });
    const tbody = el("tbody");
    const chartMap = new Map(); // name -> chart
    const empty = el("p", { class: "muted" }, "No readings stored for this device yet; charts appear with the first one.");
    const updated = el("span", { class: "muted" });

    const renderCharts = () => {
      const { numeric, bools, others } = extractSeries(readings);
      const wanted = [...[...numeric.keys()].sort().map((n) => [n, "number", numeric.get(n)]),
        ...[...bools.keys()].sort().map((n) => [n, "bool", bools.get(n)])];
      const keys = new Set();
      const boxes = [];
      for (const [name, kind, series] of wanted) {
        const key = `${kind}:${name}`;
        keys.add(key);
        if (!chartMap.has(key)) chartMap.set(key, makeChart(name, kind));
        const ch = chartMap.get(key);
        ch.update(series);
        boxes.push(ch.box);
      }
      for (const k of [...chartMap.keys()]) if (!keys.has(k)) chartMap.delete(k);
      const same = boxes.length === charts.children.length && boxes.every((b, i) => charts.children[i] === b);
      if (!same) charts.replaceChildren(...boxes);
      states.replaceChildren(...[...others.keys()].sort().map((n) => {
        const { m, t } = others.get(n);
        return el("div", { class: "state", "data-series": n, title: `at ${fmtTime(t)}` },
          el("span", { class: "series-name" }, clip(n, 60)), " ", formatMeasurement(m));
      }));
      empty.classList.toggle("hidden", readings.length > 0);
    };

    ingest = (list, live) => {
      let added = [];
      for (const r of list) {
        if (!validReading(r) || seqs.has(r.sequence)) continue;
        seqs.add(r.sequence);
        added.push(r);
      }
      if (!added.length) return;
      readings.push(...added);
      readings.sort((a, b) => a.sequence - b.sequence);
      if (readings.length > WINDOW) {
        for (const r of readings.slice(0, readings.length - WINDOW)) seqs.delete(r.sequence);
        readings = readings.slice(-WINDOW);
      }
      added = added.filter((r) => seqs.has(r.sequence)).sort((a, b) => a.sequence - b.sequence).slice(-TABLE_READINGS);
      // newest first in the table
      for (const r of added) {
        const tr = readingRow(r);
        const first = tbody.firstElementChild;
        if (!first || r.sequence > Number(first.getAttribute("data-sequence"))) tbody.prepend(tr);
        else {
          let at = first;
          while (at && Number(at.getAttribute("data-sequence")) > r.sequence) at = at.nextElementSibling;
          tbody.insertBefore(tr, at);
        }
        if (live) flash(tr);
      }
      while (tbody.children.length > TABLE_READINGS) tbody.lastElementChild.remove();
      const newest = readings[readings.length - 1];
      const known = devices.get(id);
      if (known && isNum(newest.received_ms) && !(newest.received_ms <= known.last_seen_ms)) {
        known.last_seen_ms = newest.received_ms;
        known.last_sequence = newest.sequence;
      }
      const seen = document.getElementById("last-seen");
      if (seen && known) setAgo(seen, known.last_seen_ms);
      const seq = document.getElementById("last-sequence");
      if (seq && known && isNum(known.last_sequence)) seq.textContent = String(known.last_sequence);
      updated.textContent = ` · updated ${fmtClock(Date.now())}`;
      renderCharts();
    };

    view.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "#/" }, "Devices"), " / ", el("code", {}, clip(id, 120))),
      el("h2", {}, clip(d.name || d.id, 200), " ", badge(d.status)),
      infoBox,
      el("h2", {}, "Live measurements", updated),
      el("p", { class: "muted" }, `The last ${WINDOW} readings; new ones are appended from the live stream.`),
      empty, charts, states,
      el("h2", {}, "Latest readings"),
      table("readings-table", ["Sequence", "Issued", "Received", "Values"], tbody));
    loaded = true;
    ingest(page.readings.concat(queued), false);
    queued = [];
    renderCharts();

    every(c, 5000, "device", async () => {
      const fresh = await api(path);
      if (!c.alive || !fresh || typeof fresh.id !== "string") return;
      const known = devices.get(id);
      if (known && isNum(known.last_seen_ms) && !(fresh.last_seen_ms >= known.last_seen_ms)) {
        fresh.last_seen_ms = known.last_seen_ms;
        fresh.last_sequence = known.last_sequence;
      }
      devices.set(id, Object.assign(known || {}, fresh));
      infoBox.replaceChildren(deviceInfo(fresh));
    });
    // Without the live stream (disconnected, or a browser that cannot hold one), poll instead.
    every(c, 3000, "readings", async () => {
      if (streamState === "live") return;
      const fresh = await api(`${path}/readings?limit=50`);
      if (c.alive && fresh && Array.isArray(fresh.readings)) ingest(fresh.readings, true);
    });
  }

  // ---- page: security events --------------------------------------------------------------------

  function eventRow(e, known) {
    const dev = typeof e.device_id === "string" && e.device_id
      ? (known ? el("a", { href: deviceHref(e.device_id) }, clip(e.device_id, 80)) : el("code", { title: "not a registered device" }, clip(e.device_id, 80)))
      : el("span", { class: "muted" }, "–");
    return el("tr", { "data-event-id": str(e.id), "data-reason": str(e.reason) },
      el("td", { class: "time", title: isNum(e.at_ms) ? ago(e.at_ms) : null }, fmtTime(e.at_ms)),
      el("td", {}, el("span", { class: "badge reason", title: reasonText(e.reason) || null }, clip(e.reason, 40))),
      el("td", { class: "dev" }, dev),
      el("td", { class: "tenant" }, typeof e.tenant === "string" && e.tenant ? clip(e.tenant, 64) : el("span", { class: "muted", title: "platform-wide: administrators only" }, "platform")),
      el("td", { class: "source" }, el("code", {}, clip(e.source, 120))),
      el("td", { class: "detail" }, clip(e.detail, 400)));
  }

  async function securityPage(c) {
    const [page, stats] = await Promise.all([api("/api/v1/security-events?limit=200"), api("/api/v1/stats"), loadDevices().catch(() => null)]);
    if (!c.alive) return;
    if (!page || !Array.isArray(page.events)) throw new ApiError("/api/v1/security-events: unexpected response", 200);

    const counts = new Map(Object.entries((stats && stats.rejected_by_reason) || {}).filter(([, n]) => isNum(n)));
    const tilesBox = el("div", { class: "tiles", id: "reason-counts" });
    const total = el("span", { class: "total" });
    const tbody = el("tbody");
    const ids = new Set();
    let selected = null; // reason filter
    let nextCursor = page.next_cursor;
    let newestId = -Infinity;

    const applyFilter = (tr) => tr.classList.toggle("filtered-out", selected !== null && tr.getAttribute("data-reason") !== selected);
    const renderTiles = () => {
      const tiles = [...counts.keys()].sort().map((r) => {
        const tile = el("button", { type: "button", class: `tile alert${selected === r ? " selected" : ""}`, "data-reason": r, title: reasonText(r) || r, "aria-pressed": selected === r ? "true" : "false" },
          el("div", { class: "n" }, fmtCount(counts.get(r))), el("div", { class: "l" }, clip(r, 40)));
        tile.addEventListener("click", () => {
          selected = selected === r ? null : r;
          for (const tr of tbody.children) applyFilter(tr);
          renderTiles();
        });
        return tile;
      });
      tilesBox.replaceChildren(...(tiles.length ? tiles : [el("p", { class: "muted" }, "No security events: every message so far was accepted.")]));
      let sum = 0;
      for (const n of counts.values()) sum += n;
      total.textContent = ` (${fmtCount(sum)})`;
    };
    const add = (events, where, live) => {
      const fresh = [];
      for (const e of events) {
        if (!e || typeof e !== "object" || e.id === undefined || ids.has(str(e.id))) continue;
        ids.add(str(e.id));
        if (isNum(e.id) && e.id > newestId) newestId = e.id;
        const tr = eventRow(e, devices.has(e.device_id));
        applyFilter(tr);
        if (live) tr.classList.add("new");
        fresh.push(tr);
      }
      if (where === "top") tbody.prepend(...fresh.reverse()); else tbody.append(...fresh);
      while (tbody.children.length > MAX_EVENTS) {
        const last = tbody.lastElementChild;
        ids.delete(last.getAttribute("data-event-id"));
        last.remove();
      }
      return fresh.length;
    };
    add(page.events, "bottom", false);
    renderTiles();

    const more = el("button", { type: "button", id: "older-events", class: "more" }, "Load older events");
    const syncMore = () => { more.disabled = !nextCursor || tbody.children.length >= MAX_EVENTS; };
    more.addEventListener("click", async () => {
      more.disabled = true;
      try {
        const older = await api(`/api/v1/security-events?limit=200&cursor=${encodeURIComponent(nextCursor)}`);
        if (!c.alive) return;
        add(older.events || [], "bottom", false);
        nextCursor = older.next_cursor;
        clearError("older");
      } catch (e) {
        showError("older", message(e));
      }
      syncMore();
    });
    syncMore();
    const emptyNote = el("p", { class: "muted" }, "No security events recorded.");
    emptyNote.classList.toggle("hidden", tbody.children.length > 0);

    view.replaceChildren(
      el("h2", {}, "Security events", total),
      el("p", { class: "muted" }, "Every rejected message is stored with its reason (during a flood, counted in an events_suppressed event); new events appear at the top as they happen. The counts cover every tenant; the list shows the events you may read (an auditor, those of their tenant). Click a count to filter."),
      tilesBox,
      table("events-table", ["Time", "Reason", "Device", "Tenant", "Source", "Detail"], tbody),
      emptyNote,
      el("div", { class: "more-box" }, more));

    c.listeners.push((items) => {
      const events = items.filter((it) => it.kind === "security").map((it) => it.data);
      if (!events.length) return;
      events.sort((a, b) => (isNum(a.id) && isNum(b.id) ? a.id - b.id : 0));
      const before = new Set(ids);
      if (!add(events, "top", true)) return;
      for (const e of events) {
        if (before.has(str(e.id)) || typeof e.reason !== "string") continue;
        counts.set(e.reason, (counts.get(e.reason) || 0) + 1);
      }
      renderTiles();
      emptyNote.classList.add("hidden");
    });
    every(c, 5000, "stats", async () => {
      const s = await api("/api/v1/stats");
      if (!c.alive || !s || !s.rejected_by_reason) return;
      for (const [r, n] of Object.entries(s.rejected_by_reason)) {
        if (isNum(n)) counts.set(r, Math.max(n, counts.get(r) || 0));
      }
      renderTiles();
    });
    // Without the live stream, poll for new events.
    every(c, 3000, "events", async () => {
      if (streamState === "live") return;
      const fresh = await api("/api/v1/security-events?limit=100");
      if (!c.alive || !fresh || !Array.isArray(fresh.events)) return;
      if (add(fresh.events.filter((e) => !(isNum(e.id) && e.id <= newestId)).reverse(), "top", true)) emptyNote.classList.add("hidden");
    });
  }

  // ---- routing ------------------------------------------------------------------------------------

  async function navigate() {
    if (ctx) {
      ctx.alive = false;
      for (const h of ctx.timers) clearTimeout(h);
    }
    const c = { alive: true, timers: new Set(), listeners: [] };
    ctx = c;
    for (const key of [...problems.keys()]) if (key !== "uncaught") problems.delete(key);
    renderBanner();

    const hash = location.hash.replace(/^#\/?/, "");
    const [page, ...rest] = hash.split("/");
    const nav = page === "map" || page === "security" ? page : "overview";
    for (const a of document.querySelectorAll("nav a[data-nav]")) {
      const on = a.getAttribute("data-nav") === nav && page !== "device";
      a.classList.toggle("active", on);
      if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    view.replaceChildren(el("p", { class: "muted loading" }, "Loading…"));
    try {
      if (page === "device" && rest.length && rest.join("/")) {
        let id;
        try { id = decodeURIComponent(rest.join("/")); } catch (_) { throw new Error("the device id in the address is not valid"); }
        document.title = `msec — ${clip(id, 60)}`;
        await devicePage(c, id);
      } else if (page === "map") {
        document.title = "msec — locations";
        await mapPage(c);
      } else if (page === "security") {
        document.title = "msec — security events";
        await securityPage(c);
      } else {
        document.title = "msec — devices";
        await overviewPage(c);
      }
      if (c.alive) clearError("page");
    } catch (e) {
      if (!c.alive) return;
      showError("page", `Cannot load this page: ${message(e)}`);
      const retry = el("button", { type: "button", class: "more" }, "Retry");
      retry.addEventListener("click", navigate);
      view.replaceChildren(el("p", { class: "muted" }, "The data could not be loaded. "), retry);
      later(c, 5000, navigate); // the server may be restarting: try again by itself
    }
  }

  // Relative times ("5 s ago") stay current everywhere.
  setInterval(() => {
    for (const e of view.querySelectorAll("[data-ago]")) {
      const ms = Number(e.getAttribute("data-ago"));
      e.textContent = ago(ms);
      freshness(e, ms);
    }
  }, 1000);

  // ---- login ------------------------------------------------------------------------------------

  const session = { csrf: null, principal: null, started: false };
  const whoEl = document.getElementById("who");

  function showWho() {
    whoEl.replaceChildren();
    if (!session.principal) return;
    const out = el("button", { type: "button", id: "logout", class: "more" }, "Log out");
    out.addEventListener("click", async () => {
      try {
        await fetch("/api/v1/logout", { method: "POST", headers: { "X-CSRF-Token": session.csrf || "" }, cache: "no-store" });
      } finally {
        location.hash = "#/";
        location.reload();
      }
    });
    whoEl.append(el("span", { id: "whoami" }, session.principal.id), " ", out);
  }

  /** The login form; resolves once logged in. */
  function loginPage(reason) {
    return new Promise((resolve) => {
      const user = el("input", { id: "login-user", name: "user", autocomplete: "username", required: true });
      const pass = el("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true });
      const status = el("p", { id: "login-status", class: "muted", role: "status" }, reason || "");
      const form = el("form", { id: "login", class: "login" },
        el("h2", null, "Log in"),
        el("label", null, "User ", user),
        el("label", null, "Password ", pass),
        el("button", { type: "submit" }, "Log in"),
        status);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        status.textContent = "Checking…";
        let r;
        try {
          r = await fetch("/api/v1/login", {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "application/json" },
            body: JSON.stringify({ user: user.value, password: pass.value }),
            cache: "no-store",
          });
        } catch (_) {
          status.textContent = "Cannot reach the server.";
          return;
        }
        let body = {};
        try { body = await r.json(); } catch (_) { /* not JSON */ }
        if (!r.ok) {
          status.textContent = typeof body.detail === "string" ? body.detail : `Login failed (HTTP ${r.status}).`;
          pass.value = "";
          return;
        }
        resolve(body);
      });
      view.replaceChildren(form);
      user.focus();
    });
  }

  async function start() {
    let me = null;
    try {
      const r = await fetch("/api/v1/me", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (r.ok) me = await r.json();
    } catch (_) { /* shown as the login page */ }
    if (!me) {
      setLive("off");
      const login = await loginPage("");
      me = { principal: login.principal, csrf: login.csrf, may_audit: null };
      try {
        const r = await fetch("/api/v1/me", { headers: { Accept: "application/json" }, cache: "no-store" });
        if (r.ok) me = await r.json();
      } catch (_) { /* keep the login answer */ }
    }
    session.principal = me.principal;
    session.csrf = me.csrf;
    showWho();
    for (const a of document.querySelectorAll('nav a[data-nav="security"]')) a.classList.toggle("hidden", me.may_audit === false);
    if (!session.started) {
      session.started = true;
      window.addEventListener("hashchange", navigate);
      setLive("connecting");
      startStream();
    }
    navigate();
  }
  start();
}
