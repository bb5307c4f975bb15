// msec dashboard: plain JS, no dependencies, no inline code (the CSP forbids it). Every value
// from the API is attacker-influenced, so text goes in through textContent, never innerHTML.
"use strict";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
const SVG = "http://www.w3.org/2000/svg";
const WINDOW = 200; // readings kept per device chart

let devices = [];
let route = "";
let listeners = []; // per-page live handlers, reset on navigation
let timers = [];

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function showError(msg) {
  banner.textContent = msg;
  banner.classList.remove("hidden");
}

function clearError() {
  banner.classList.add("hidden");
}

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${r.status} ${detail}`);
  }
  return r.json();
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function time(ms) {
  return new Date(ms).toLocaleString();
}

function bar(percent) {
  if (percent === null || percent === undefined) return el("span", { class: "muted" }, "–");
  const p = Math.max(0, Math.min(100, percent));
  const svg = el("svg:svg", { class: p < 20 ? "bar low" : "bar", viewBox: "0 0 100 8", preserveAspectRatio: "none" },
    el("svg:rect", { x: 0, y: 0, width: p, height: 8 }));
  return el("span", {}, svg, `${Math.round(p)}%`);
}

// ---- live stream ----------------------------------------------------------------------------

function connectStream() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/v1/stream");
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  for (const kind of ["reading", "security"]) {
    es.addEventListener(kind, (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      if (kind === "reading") {
        const d = devices.find((x) => x.id === data.device_id);
        if (d) d.last_seen_ms = data.received_ms;
      }
      for (const l of listeners) {
        try { l(kind, data); } catch (e) { console.error(e); }
      }
    });
  }
}

// ---- pages ----------------------------------------------------------------------------------

async function loadDevices() {
  devices = (await api("/api/v1/devices")).devices;
  return devices;
}

async function statsTiles() {
  const s = await api("/api/v1/stats");
  const tile = (n, label, cls) => el("div", { class: `tile ${cls || ""}` }, el("div", { class: "n" }, n), el("div", { class: "l" }, label));
  return el("div", { class: "tiles", id: "stats" },
    tile(s.devices, "devices registered"),
    tile(s.active_devices, "active"),
    tile(s.readings_stored, "readings stored"),
    tile(s.rejected, "rejected (security events)", s.rejected > 0 ? "alert" : ""));
}

function deviceRow(d) {
  return el("tr", { "data-device-id": d.id },
    el("td", {}, el("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id)),
    el("td", {}, d.tenant),
    el("td", {}, d.kind),
    el("td", {}, d.name),
    el("td", {}, el("span", { class: `badge ${d.status}` }, d.status)),
    el("td", { class: "seen", "data-ms": d.last_seen_ms }, ago(d.last_seen_ms)),
    el("td", {}, bar(d.battery)),
    el("td", {}, bar(d.link)));
}

async function devicesPage() {
  const [tiles] = await Promise.all([statsTiles(), loadDevices()]);
  const tenants = [...new Set(devices.map((d) => d.tenant))].sort();
  const select = el("select", { id: "tenant" }, el("option", { value: "" }, "all tenants"), ...tenants.map((t) => el("option", { value: t }, t)));
  const tbody = el("tbody");
  const render = () => {
    const t = select.value;
    tbody.replaceChildren(...devices.filter((d) => !t || d.tenant === t).map(deviceRow));
  };
  select.addEventListener("change", render);
  render();
  view.replaceChildren(
    tiles,
    el("div", { class: "filters" }, el("label", {}, "Tenant ", select)),
    el("table", { id: "devices-table" },
      el("thead", {}, el("tr", {}, ...["Device", "Tenant", "Kind", "Name", "Status", "Last seen", "Battery", "Link"].map((h) => el("th", {}, h)))),
      tbody));
  timers.push(setInterval(async () => {
    try {
      const fresh = await statsTiles();
      document.getElementById("stats")?.replaceWith(fresh);
      await loadDevices();
      render();
      clearError();
    } catch (e) { showError(e.message); }
  }, 5000));
  timers.push(setInterval(() => {
    for (const td of tbody.querySelectorAll("td.seen")) {
      const row = td.parentElement.getAttribute("data-device-id");
      const d = devices.find((x) => x.id === row);
      if (d) td.textContent = ago(d.last_seen_ms);
    }
  }, 1000));
}

async function mapPage() {
  await loadDevices();
  const byTenant = {};
  for (const d of devices.filter((x) => x.location)) (byTenant[d.tenant] ||= []).push(d);
  const maps = Object.entries(byTenant).sort().map(([tenant, list]) => {
    const lats = list.map((d) => d.location.lat), lons = list.map((d) => d.location.lon);
    const pad = 0.002;
    const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats) - pad, Math.max(...lats) + pad, Math.min(...lons) - pad, Math.max(...lons) + pad];
    const W = 400, H = 300;
    const x = (lon) => ((lon - minLon) / (maxLon - minLon)) * W;
    const y = (lat) => H - ((lat - minLat) / (maxLat - minLat)) * H;
    const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, "data-tenant": tenant });
    // Devices at one place (a home kit, a depot) share a marker and a label.
    const places = new Map();
    for (const d of list) {
      const key = `${d.location.lat},${d.location.lon}`;
      if (!places.has(key)) places.set(key, []);
      places.get(key).push(d);
    }
    for (const group of places.values()) {
      const d = group[0];
      const cx = x(d.location.lon).toFixed(1), cy = y(d.location.lat).toFixed(1);
      const names = group.map((g) => g.id).join(", ");
      const revoked = group.some((g) => g.status === "revoked") ? "revoked" : null;
      svg.appendChild(el("svg:circle", { cx, cy, r: 5, class: revoked },
        el("svg:title", {}, `${d.location.label}: ${names} (${d.location.lat.toFixed(4)}, ${d.location.lon.toFixed(4)})`)));
      const label = group.length > 1 ? `${d.location.label} (${group.length})` : d.id;
      svg.appendChild(el("svg:text", { x: (+cx + 7).toFixed(1), y: (+cy + 3).toFixed(1) }, label));
    }
    return el("div", { class: "map" }, el("h2", {}, tenant), svg);
  });
  const rows = devices.map((d) => el("tr", { "data-device-id": d.id },
    el("td", {}, el("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id)),
    el("td", {}, d.tenant),
    el("td", {}, d.location ? d.location.label : "–"),
    el("td", { class: "num" }, d.location ? d.location.lat.toFixed(5) : ""),
    el("td", { class: "num" }, d.location ? d.location.lon.toFixed(5) : "")));
  view.replaceChildren(
    el("div", { class: "maps" }, ...maps),
    el("h2", {}, "All locations"),
    el("table", { id: "locations-table" },
      el("thead", {}, el("tr", {}, ...["Device", "Tenant", "Place", "Latitude", "Longitude"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
}

function formatValue(m) {
  if ("v" in m) return `${m.v}${m.u ? " " + m.u : ""}`;
  if ("s" in m) return `Σ ${m.s}${m.u ? " " + m.u : ""}`;
  if ("vb" in m) return m.vb ? "true" : "false";
  if ("vs" in m) return m.vs;
  if ("vd" in m) return `${m.vd.length} b64 chars`;
  return "";
}

function chart(name, unit, points) {
  const W = 300, H = 100;
  const box = el("div", { class: "chart", "data-series": name });
  const latest = points.length ? points[points.length - 1].v : null;
  box.appendChild(el("h3", {}, el("span", {}, name), el("span", { class: "latest" }, latest === null ? "–" : `${latest} ${unit || ""}`)));
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  if (points.length > 1) {
    const ts = points.map((p) => p.t), vs = points.map((p) => p.v);
    const [t0, t1] = [Math.min(...ts), Math.max(...ts)];
    let [v0, v1] = [Math.min(...vs), Math.max(...vs)];
    if (v1 === v0) { v0 -= 1; v1 += 1; }
    const coords = points.map((p) => `${(((p.t - t0) / (t1 - t0 || 1)) * (W - 30) + 28).toFixed(1)},${(H - 8 - ((p.v - v0) / (v1 - v0)) * (H - 16)).toFixed(1)}`);
    svg.appendChild(el("svg:polyline", { points: coords.join(" ") }));
    svg.appendChild(el("svg:text", { x: 0, y: 10, class: "axis" }, v1.toPrecision(4)));
    svg.appendChild(el("svg:text", { x: 0, y: H - 2, class: "axis" }, v0.toPrecision(4)));
  }
  box.appendChild(svg);
  return box;
}

async function devicePage(id) {
  const [d, page] = await Promise.all([
    api(`/api/v1/devices/${encodeURIComponent(id)}`),
    api(`/api/v1/devices/${encodeURIComponent(id)}/readings?limit=${WINDOW}`),
  ]);
  let readings = page.readings.slice().reverse(); // oldest first
  const info = el("dl", { class: "info" },
    el("dt", {}, "Device"), el("dd", {}, `${d.id} — ${d.name}`),
    el("dt", {}, "Tenant / kind"), el("dd", {}, `${d.tenant} / ${d.kind}`),
    el("dt", {}, "Status"), el("dd", {}, el("span", { class: `badge ${d.status}` }, d.status)),
    el("dt", {}, "Location"), el("dd", {}, d.location ? `${d.location.label} (${d.location.lat.toFixed(4)}, ${d.location.lon.toFixed(4)})` : "–"),
    el("dt", {}, "Key id"), el("dd", {}, el("code", {}, d.key_id)),
    el("dt", {}, "Last seen"), el("dd", { id: "last-seen" }, ago(d.last_seen_ms)),
    el("dt", {}, "Battery / link"), el("dd", {}, bar(d.battery), " ", bar(d.link)));
  const charts = el("div", { class: "charts", id: "charts" });
  const states = el("div", { class: "states", id: "states" });
  const tbody = el("tbody");
  const render = () => {
    const series = new Map(), flags = new Map();
    for (const r of readings) {
      for (const m of r.measurements) {
        const v = "v" in m ? m.v : "s" in m ? m.s : null;
        if (v !== null) {
          if (!series.has(m.n)) series.set(m.n, { unit: m.u, points: [] });
          series.get(m.n).points.push({ t: m.t, v });
        } else {
          flags.set(m.n, m);
        }
      }
    }
    charts.replaceChildren(...[...series].map(([n, s]) => chart(n, s.unit, s.points)));
    states.replaceChildren(...[...flags].map(([n, m]) => el("div", { class: `state ${"vb" in m ? m.vb : ""}`, "data-series": n }, `${n}: ${formatValue(m)}`)));
    tbody.replaceChildren(...readings.slice(-20).reverse().map((r) => el("tr", { "data-sequence": r.sequence },
      el("td", { class: "num" }, r.sequence),
      el("td", {}, time(r.issued_at * 1000)),
      el("td", {}, r.measurements.map((m) => `${m.n}=${formatValue(m)}`).join("  ")))));
  };
  render();
  view.replaceChildren(
    el("h2", {}, d.name), info,
    el("h2", {}, "Live measurements"), charts, states,
    el("h2", {}, "Latest readings"),
    el("table", { id: "readings-table" },
      el("thead", {}, el("tr", {}, ...["Sequence", "Issued", "Measurements"].map((h) => el("th", {}, h)))),
      tbody));
  listeners.push((kind, data) => {
    if (kind !== "reading" || data.device_id !== d.id) return;
    readings.push(data);
    if (readings.length > WINDOW) readings = readings.slice(-WINDOW);
    document.getElementById("last-seen").textContent = "just now";
    render();
  });
}

function eventRow(e) {
  return el("tr", { "data-event-id": e.id },
    el("td", {}, time(e.at_ms)),
    el("td", {}, el("span", { class: "badge reason" }, e.reason)),
    el("td", {}, e.device_id || "–"),
    el("td", {}, e.source),
    el("td", {}, e.detail));
}

async function securityPage() {
  const [page, stats] = await Promise.all([api("/api/v1/security-events?limit=200"), api("/api/v1/stats")]);
  const counts = stats.rejected_by_reason || {};
  const tiles = el("div", { class: "tiles", id: "reason-counts" }, ...Object.entries(counts).sort().map(([r, n]) =>
    el("div", { class: "tile alert", "data-reason": r }, el("div", { class: "n" }, n), el("div", { class: "l" }, r))));
  if (!Object.keys(counts).length) tiles.appendChild(el("p", { class: "muted" }, "No security events: every reading so far was accepted."));
  const tbody = el("tbody", {}, ...page.events.map(eventRow));
  view.replaceChildren(
    el("h2", {}, "Security events"),
    el("p", { class: "muted" }, "Every rejected reading is stored with its reason; new events appear here as they happen."),
    tiles,
    el("table", { id: "events-table" },
      el("thead", {}, el("tr", {}, ...["Time", "Reason", "Device", "Source", "Detail"].map((h) => el("th", {}, h)))),
      tbody));
  listeners.push((kind, e) => {
    if (kind !== "security") return;
    tbody.prepend(eventRow(e));
    const tile = tiles.querySelector(`[data-reason="${CSS.escape(e.reason)}"] .n`);
    if (tile) tile.textContent = String(Number(tile.textContent) + 1);
  });
}

// ---- routing --------------------------------------------------------------------------------

async function navigate() {
  route = location.hash || "#/";
  listeners = [];
  for (const t of timers) clearInterval(t);
  timers = [];
  const [, page, arg] = route.split("/");
  for (const a of document.querySelectorAll("nav a[data-nav]")) {
    a.classList.toggle("active", a.getAttribute("data-nav") === (page === "device" || !page ? "devices" : page));
  }
  try {
    if (page === "device" && arg) await devicePage(decodeURIComponent(arg));
    else if (page === "map") await mapPage();
    else if (page === "security") await securityPage();
    else await devicesPage();
    clearError();
  } catch (e) {
    showError(`Cannot load this page: ${e.message}`);
  }
}

window.addEventListener("hashchange", navigate);
connectStream();
navigate();
