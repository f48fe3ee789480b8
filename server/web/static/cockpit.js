// The TAMC cockpit: the fleet by region, one machine live (3D view, gauges, earnings, queue),
// its proposals with Yes / No and the tally, the chat, and for operators the console: the queue
// of handoffs, take over, a control pad and hand back. Everything comes from the API with the
// bearer token; live updates come from its server-sent event streams (read with fetch, so the
// token goes in a header, never in a URL).

const $ = (sel) => document.querySelector(sel);
const units = (micros) => (micros / 1e6).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const state = { token: null, me: null, machines: new Map(), regions: [], selected: null, detail: null, view: null,
  machineStream: null, fleetStream: null, refresher: null, handoffs: [], telemetry: null };

// -- token and API ----------------------------------------------------------------------------

function takeTokenFromUrl() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("tamc.token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  state.token = localStorage.getItem("tamc.token");
}

class ApiError extends Error {
  constructor(status, problem) { super(problem?.detail || `HTTP ${status}`); this.status = status; this.problem = problem; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, ...(options.body ? { "Content-Type": "application/json" } : {}) };
  const res = await fetch(path, { ...options, headers: { ...headers, ...(options.headers || {}) } });
  if (res.status === 401) { logout("Your token is not valid (any more): log in again."); throw new ApiError(401); }
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// Server-sent events over fetch: calls onEvent(name, data) per event until aborted or closed.
async function stream(path, onEvent, { method = "GET", body, signal } = {}) {
  const res = await fetch(path, {
    method, signal, body: body ? JSON.stringify(body) : undefined,
    headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream", ...(body ? { "Content-Type": "application/json" } : {}) },
  });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      let name = "message"; const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// A stream that comes back after the server drops it.
function live(path, onEvent) {
  const ctl = new AbortController();
  (async () => {
    while (!ctl.signal.aborted) {
      try { await stream(path, onEvent, { signal: ctl.signal }); } catch (e) { if (ctl.signal.aborted) return; }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return ctl;
}

function toast(text) {
  const t = $("#toast"); t.textContent = text; t.classList.add("show");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.remove("show"), 4000);
}

// -- login ------------------------------------------------------------------------------------

function logout(message) {
  localStorage.removeItem("tamc.token"); state.token = null;
  state.fleetStream?.abort(); state.machineStream?.abort(); clearInterval(state.refresher);
  state.machines.clear(); state.selected = null;
  $("#cockpit").hidden = true; $("#login").hidden = false; $("#who").textContent = "";
  $("#login-error").textContent = message || "";
}

$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("#token-input").value.trim();
  localStorage.setItem("tamc.token", state.token);
  start();
});

// -- fleet ------------------------------------------------------------------------------------

const STATE_COLOR = { working: "#3fb950", idle: "#58a6ff", charging: "#d29922", offline: "#555" };

function renderFleet() {
  const list = $("#machines"); list.innerHTML = "";
  const sorted = [...state.machines.values()].sort((a, b) => (b.roles.length - a.roles.length) || a.id.localeCompare(b.id));
  for (const m of sorted) {
    const li = document.createElement("li");
    li.dataset.id = m.id;
    li.className = (m.roles.length ? "mine " : "") + (m.id === state.selected ? "selected" : "");
    li.innerHTML = `<span><b>${esc(m.id)}</b> <span class="muted">${esc(m.kind)} · ${esc(m.region)}</span></span>` +
      `<span class="muted">${m.online ? esc(m.state || "") : "offline"}${m.status !== "active" ? " · " + esc(m.status) : ""}</span>`;
    li.addEventListener("click", () => select(m.id));
    list.appendChild(li);
  }
  renderMap();
}

function renderMap() {
  const svg = $("#fleet-map");
  if (!state.regions.length) return;
  const xs = state.regions.flatMap((r) => r.x_km), ys = state.regions.flatMap((r) => r.y_km);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 10 + ((x - x0) / (x1 - x0 || 1)) * 280, sy = (y) => 290 - ((y - y0) / (y1 - y0 || 1)) * 280;
  let out = "";
  for (const r of state.regions) {
    out += `<rect class="region" x="${sx(r.x_km[0])}" y="${sy(r.y_km[1])}" width="${sx(r.x_km[1]) - sx(r.x_km[0])}" height="${sy(r.y_km[0]) - sy(r.y_km[1])}"/>`;
    out += `<text x="${sx(r.x_km[0]) + 6}" y="${sy(r.y_km[1]) + 14}">${esc(r.name)}</text>`;
  }
  const byRegion = {};
  for (const m of state.machines.values()) (byRegion[m.region] ||= []).push(m);
  for (const r of state.regions) {
    (byRegion[r.name] || []).forEach((m, i) => {
      let x, y;
      if (m.position) { x = sx(m.position.x_km); y = sy(m.position.y_km); } else {
        const cols = 5, w = (r.x_km[1] - r.x_km[0]) / (cols + 1), h = (r.y_km[1] - r.y_km[0]) / 4;
        x = sx(r.x_km[0] + w * (1 + (i % cols))); y = sy(r.y_km[1] - h * (1.3 + Math.floor(i / cols) * 0.8));
      }
      const color = m.online ? STATE_COLOR[m.state] || "#58a6ff" : STATE_COLOR.offline;
      out += `<circle data-id="${esc(m.id)}" cx="${x}" cy="${y}" r="${m.id === state.selected ? 8 : 6}" fill="${color}"><title>${esc(m.id)} (${esc(m.state || "?")})</title></circle>`;
    });
  }
  svg.innerHTML = out;
  svg.querySelectorAll("circle").forEach((c) => c.addEventListener("click", () => select(c.dataset.id)));
}

function onFleetEvent(name, e) {
  if (e.type === "handoff") { debounce("handoffs", refreshHandoffs, 200); return; }
  const m = state.machines.get(e.machine_id);
  if (!m) { if (e.type === "presence") refreshFleet(); return; }
  if (e.type === "telemetry") {
    m.state = e.data.state; m.wear_pct = e.data.wear_pct; m.progress = e.data.progress; m.position = e.data.position;
  } else if (e.type === "presence") {
    m.online = e.data.state === "online"; m.region = e.data.region;
  }
  scheduleFleetRender();
}

function scheduleFleetRender() {
  if (scheduleFleetRender.pending) return;
  scheduleFleetRender.pending = true;
  setTimeout(() => { scheduleFleetRender.pending = false; renderFleet(); }, 500);
}

async function refreshFleet() {
  const list = await api("/v1/machines");
  for (const m of list) state.machines.set(m.id, { ...state.machines.get(m.id), ...m });
  renderFleet();
}

// -- one machine ------------------------------------------------------------------------------

async function select(id) {
  state.selected = id;
  renderFleet();
  const m = state.machines.get(id);
  $("#pick").hidden = true;
  if (!m.roles.length) {
    $("#machine-panel").hidden = true; $("#pick").hidden = false;
    $("#pick").textContent = `You hold no shares of ${id} and do not operate it: only its stakeholders and operators see inside.`;
    return;
  }
  $("#machine-panel").hidden = false;
  state.machineStream?.abort();
  const detail = await api(`/v1/machines/${id}`);
  state.detail = detail;
  $("#m-name").textContent = `${detail.name} (${detail.id})`;
  $("#m-status").textContent = detail.status;
  $("#m-roles").textContent = "you: " + detail.roles.join(", ");
  $("#m-wallet").textContent = units(detail.wallet);
  $("#m-reserve").textContent = units(detail.reserve);
  await mountView(detail);
  if (detail.telemetry) onTelemetry(detail.telemetry);
  renderQueue(detail.queue);
  renderConsole();
  $("#c-log").innerHTML = "";
  $("#chat-log").innerHTML = "";
  await Promise.all([refreshEarnings(), refreshProposals(), loadChat()]);
  state.machineStream = live(`/v1/machines/${id}/stream`, onMachineEvent);
}

function onMachineEvent(name, e) {
  if (e.machine_id !== state.selected) return;
  if (e.type === "handoff") debounce("handoffs", refreshHandoffs, 100);
  if (e.type === "telemetry") onTelemetry(e.data);
  else if (e.type === "job") { debounce("queue", refreshQueue, 300); if (e.data.kind === "paid" || e.data.kind === "done") debounce("earn", refreshEarnings, 800); }
  else if (e.type === "proposal" || e.type === "governance") debounce("props", refreshProposals, 200);
}

const timers = {};
function debounce(key, fn, ms) { clearTimeout(timers[key]); timers[key] = setTimeout(fn, ms); }

function onTelemetry(t) {
  state.telemetry = t;
  $("#m-state").textContent = t.state;
  $("#m-job").textContent = t.job_id ? `job ${t.job_id} · ${(t.progress * 100).toFixed(0)}%` : "no job running";
  const at = $("#telemetry-at"); at.dateTime = t.at; at.textContent = new Date(t.at).toISOString().replace("T", " ").slice(0, 19);
  $("#view3d").dataset.progress = t.progress.toFixed(4);
  state.view?.update(t);
  renderGauges(t);
}

function gauge(label, value, max, unit, warnAt, badAt) {
  const share = Math.max(0, Math.min(1, value / max));
  const angle = Math.PI * (1 - share);
  const x = 55 + 45 * Math.cos(angle), y = 58 - 45 * Math.sin(angle);
  const color = value >= badAt ? "#f85149" : value >= warnAt ? "#d29922" : "#3fb950";
  return `<div class="gauge" data-gauge="${esc(label)}"><svg viewBox="0 0 110 66">
    <path d="M10 58 A45 45 0 0 1 100 58" stroke="#2a3440" stroke-width="9" fill="none"/>
    <path d="M10 58 A45 45 0 0 1 ${x.toFixed(2)} ${y.toFixed(2)}" stroke="${color}" stroke-width="9" fill="none"/>
    </svg><div class="value">${value.toFixed(1)}${unit}</div><div class="label">${esc(label)}</div></div>`;
}

function renderGauges(t) {
  const policy = state.detail?.profile?.policy || {};
  const wearLimit = policy.wear_limit_pct ?? 80;
  let html = gauge("wear", t.wear_pct, 100, "%", wearLimit * 0.75, wearLimit);
  for (const [name, c] of Object.entries(t.temperatures_c)) html += gauge(`${name} °C`, c, name === "nozzle" ? 260 : 100, "", name === "nozzle" ? 240 : 70, name === "nozzle" ? 250 : 85);
  if (t.battery_pct !== null && t.battery_pct !== undefined) html += gauge("battery", t.battery_pct, 100, "%", 101, 101);
  $("#gauges").innerHTML = html;
}

async function mountView(detail) {
  state.view?.dispose();
  state.view = null;
  const host = $("#view3d");
  host.innerHTML = "";
  try {
    const { MachineView } = await import("./view3d.js");
    state.view = new MachineView(host, detail.kind);
  } catch (err) {
    host.innerHTML = `<p class="fallback muted">The 3D view needs three.js (run <code>make setup</code>): ${esc(err.message)}</p>`;
  }
}

async function refreshQueue() { if (state.selected) renderQueue(await api(`/v1/machines/${state.selected}/jobs`)); }

function renderQueue(queue) {
  $("#queue tbody").innerHTML = queue.length
    ? queue.map((q) => `<tr><td title="${esc(q.description)}">${esc(q.job_id)} <span class="muted">${esc(q.capability)}</span></td><td>${esc(q.state)}</td><td>${units(q.price)}</td></tr>`).join("")
    : `<tr><td colspan="3" class="muted">no jobs in hand</td></tr>`;
}

async function refreshEarnings() {
  if (!state.selected) return;
  const s = await api(`/v1/machines/${state.selected}/statement?limit=20`);
  $("#m-wallet").textContent = units(s.balance);
  const pts = s.earnings;
  const svg = $("#earnings");
  if (pts.length < 2) { svg.innerHTML = `<text x="10" y="70" fill="#8a97a5" font-size="12">no earnings yet</text>`; return; }
  const t0 = Date.parse(pts[0].at), t1 = Date.parse(pts[pts.length - 1].at) || t0 + 1;
  const vals = pts.flatMap((p) => [p.revenue, p.net]); const lo = Math.min(0, ...vals), hi = Math.max(1, ...vals);
  const px = (p) => 5 + ((Date.parse(p.at) - t0) / (t1 - t0 || 1)) * 410, py = (v) => 135 - ((v - lo) / (hi - lo)) * 125;
  const line = (key, color) => `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${px(p).toFixed(1)},${py(p[key]).toFixed(1)}`).join(" ")}"/>`;
  svg.innerHTML = line("revenue", "#3fb950") + line("net", "#58a6ff") +
    `<text x="8" y="14" fill="#3fb950" font-size="11">revenue ${units(pts[pts.length - 1].revenue)}</text>` +
    `<text x="150" y="14" fill="#58a6ff" font-size="11">net ${units(pts[pts.length - 1].net)}</text>`;
}

// -- proposals --------------------------------------------------------------------------------

async function refreshProposals() {
  if (!state.selected) return;
  renderProposals(await api(`/v1/machines/${state.selected}/proposals`));
}

function renderProposals(rows) {
  const canVote = state.detail?.roles.includes("stakeholder");
  const list = $("#proposals");
  const shown = rows.filter((p) => p.state.startsWith("open")).concat(rows.filter((p) => !p.state.startsWith("open")).slice(-5).reverse());
  list.innerHTML = shown.length ? "" : `<li class="muted">no proposals</li>`;
  for (const p of shown) {
    const li = document.createElement("li");
    li.dataset.id = p.id;
    const pct = (n) => (p.total ? (100 * n) / p.total : 0).toFixed(1);
    li.innerHTML = `<b>${esc(p.title)}</b> <span class="badge">${esc(p.kind)}</span> <span class="badge state">${esc(p.state)}</span>
      <div class="tally"><span class="yes" style="width:${pct(p.yes)}%"></span><span class="no" style="width:${pct(p.no)}%"></span><span class="abstain" style="width:${pct(p.abstain)}%"></span></div>
      <span class="tally-text muted">yes ${p.yes} · no ${p.no} · abstain ${p.abstain} of ${p.total} units</span>
      ${p.state === "open" && canVote ? `<div><button class="yes">Yes</button> <button class="no">No</button></div>` : ""}`;
    li.querySelector("button.yes")?.addEventListener("click", () => vote(p.id, "yes", li));
    li.querySelector("button.no")?.addEventListener("click", () => vote(p.id, "no", li));
    list.appendChild(li);
  }
}

async function vote(id, choice, li) {
  li.querySelectorAll("button").forEach((b) => (b.disabled = true));
  try {
    const r = await api(`/v1/proposals/${id}/votes`, { method: "POST", body: JSON.stringify({ choice }) });
    toast(r.said);
  } catch (e) {
    toast(`vote refused: ${e.message}`);
  }
  await refreshProposals();
}

// -- operator console ---------------------------------------------------------------------------

const operates = (id) => { const m = state.machines.get(id); return !!m && (m.roles.includes("operator") || m.roles.includes("admin") || state.me?.admin); };

async function refreshHandoffs() {
  if (![...state.machines.keys()].some(operates)) { $("#handoffs").hidden = true; return; }
  state.handoffs = await api("/v1/handoffs");
  $("#handoffs").hidden = false;
  $("#handoff-count").textContent = state.handoffs.length;
  const list = $("#handoff-queue");
  list.innerHTML = state.handoffs.length ? "" : `<li class="muted">nothing waits for a person</li>`;
  for (const h of state.handoffs) {
    const li = document.createElement("li");
    li.dataset.id = h.id; li.className = h.state;
    const waited = Math.round((Date.now() - Date.parse(h.raised_at)) / 1000);
    li.innerHTML = `<b>${esc(h.machine_id)}</b> ${esc(h.reason)} <span class="badge">${esc(h.state)}</span><br>` +
      `<span class="muted">${esc(h.job_id || "no job")} · ${waited} s ago</span>`;
    li.addEventListener("click", () => select(h.machine_id));
    list.appendChild(li);
  }
  renderConsole();
}

function renderConsole() {
  const id = state.selected;
  const box = $("#console");
  box.hidden = !id || !operates(id);
  if (box.hidden) return;
  const h = state.handoffs.find((x) => x.machine_id === id);
  const mine = h && h.state === "taken" && h.operator === state.me.did;
  $("#c-handoff").innerHTML = h
    ? `<b>${esc(h.reason)}</b> ${esc(h.detail)}<br>The agent proposes: ${esc(h.proposal)}<br>` +
      `<span class="muted">${esc(h.job_id || "no job")} · ${h.state === "pending" ? `escalates at ${new Date(h.wait_until).toLocaleTimeString()}` : `held by ${esc(h.operator)}`}</span>`
    : "No handoff: the agent runs this machine.";
  $("#c-held").textContent = mine ? "you hold this machine" : h?.state === "taken" ? "held by another operator" : "";
  $("#c-takeover").disabled = !!mine || h?.state === "taken";
  for (const b of document.querySelectorAll("#c-pad button, #c-back button")) b.disabled = !mine;
  $("#c-back").querySelectorAll("button").forEach((b) => { b.hidden = !h?.job_id && b.dataset.decision !== "continue"; });
  const names = Object.keys(state.telemetry?.temperatures_c || {});
  const sel = $("#c-name");
  if (sel.dataset.names !== names.join()) { sel.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join(""); sel.dataset.names = names.join(); }
  box.querySelector(".move").hidden = !state.telemetry?.position;
}

async function command(body) {
  const id = state.selected;
  const h = state.handoffs.find((x) => x.machine_id === id);
  if (body.command === "takeover" && h) body.handoff_id = h.id;
  const li = document.createElement("li");
  li.textContent = `${body.command}${body.decision ? " " + body.decision : ""}…`;
  $("#c-log").prepend(li);
  try {
    const r = await api(`/v1/machines/${id}/control`, { method: "POST", body: JSON.stringify(body) });
    li.textContent = `${body.command}: ${r.result} (${r.answered_ms} ms)`;
  } catch (e) {
    li.textContent = `${body.command} refused: ${e.message}`; li.className = "refused";
  }
  await refreshHandoffs();
}

$("#c-takeover").addEventListener("click", () => command({ command: "takeover" }));
document.querySelectorAll("#c-pad button[data-cmd]").forEach((b) => b.addEventListener("click", () => command({ command: b.dataset.cmd })));
document.querySelectorAll("#c-back button").forEach((b) => b.addEventListener("click", () => command({ command: "handback", decision: b.dataset.decision })));
$("#c-set").addEventListener("click", () => command({ command: "set", name: $("#c-name").value, value: Number($("#c-value").value) }));
$("#c-move").addEventListener("click", () => command({ command: "move_to", point: { x_km: Number($("#c-x").value), y_km: Number($("#c-y").value) } }));

// -- chat -------------------------------------------------------------------------------------

async function loadChat() {
  const lines = await api(`/v1/machines/${state.selected}/chat`);
  for (const l of lines.slice(-20)) addChat(l.role, l.text);
}

function addChat(role, text) {
  const li = document.createElement("li");
  li.className = role; li.textContent = text;
  $("#chat-log").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

$("#chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("#chat-input"); const message = input.value.trim();
  if (!message || !state.selected) return;
  input.value = "";
  addChat("you", message);
  const li = addChat("machine", "");
  li.classList.add("streaming");
  try {
    await stream(`/v1/machines/${state.selected}/chat`, (name, data) => {
      if (name === "delta") li.textContent += data.text;
      else if (name === "answer") { li.textContent = data.text; li.dataset.mode = data.mode; }
      else if (name === "error") li.textContent = `(error: ${data.detail})`;
    }, { method: "POST", body: { message } });
  } catch (err) {
    li.textContent = `(refused: ${err.message})`;
  }
  li.classList.remove("streaming");
});

// -- start ------------------------------------------------------------------------------------

async function start() {
  if (!state.token) { logout(); return; }
  try {
    state.me = await api("/v1/me");
  } catch (e) {
    if (e.status !== 401) logout(`cannot reach the server: ${e.message}`);
    return;
  }
  $("#login").hidden = true; $("#cockpit").hidden = false;
  $("#who").innerHTML = `${esc(state.me.name)} <span class="muted">${state.me.admin ? "admin" : ""}</span> <button id="logout">Log out</button>`;
  $("#logout").addEventListener("click", () => logout());
  state.regions = await api("/v1/regions");
  await refreshFleet();
  state.fleetStream?.abort();
  state.fleetStream = live("/v1/stream", onFleetEvent);
  clearInterval(state.refresher);  // a second login replaces the first one's stream and timer
  state.refresher = setInterval(() => { refreshFleet(); refreshHandoffs(); if (state.selected) { refreshEarnings(); refreshProposals(); } }, 15000);
  await refreshHandoffs();
  const mine = [...state.machines.values()].find((m) => m.roles.length);
  if (mine) select(mine.id);
}

takeTokenFromUrl();
start();
