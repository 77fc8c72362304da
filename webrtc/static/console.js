// The console's state at a glance and its source tiles: polls GET api/state about once a second, draws the header's
// chips (daemon, LLM, broker, event store, token), one tile per source with a live snapshot (GET sources/<name>.jpg, sent with
// the token, so the picture is fetched and shown as a data: URL), and says in the notice what to do next.
// A server without the console API (the webrtc package alone) answers 404: the page is then the camera page only.
"use strict";

const STATE_EVERY_MS = 1000;
const SNAPSHOT_EVERY_MS = 1000;
const konsole = (window.agentConsole = {
  state: null, available: null, problem: null, tiles: {}, polls: 0,
});

async function api(path, options = {}) {  // fetch with the token; {status, body} (body: JSON, text, or null)
  const headers = { ...(options.headers || {}), ...authHeaders() };
  let body = options.body;
  if (body !== undefined && typeof body !== "string") { body = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, { ...options, headers, body, cache: "no-store" });
  const text = await response.text();
  let parsed = text;
  try { parsed = text ? JSON.parse(text) : null; } catch (e) { /* plain text: the guard's refusals */ }
  return { status: response.status, body: parsed, headers: response.headers };
}

// An image behind the token: fetched with it, shown as a data: URL (the page's policy allows data: images).
// `etag` makes an unchanged picture a 304 with no body; returns the new ETag.
async function authImage(img, url, etag) {
  const headers = authHeaders();
  if (etag) headers["If-None-Match"] = etag;
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 304) return etag;
  if (!response.ok) throw new Error(`${response.status}`);
  const blob = await response.blob();
  img.src = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  return response.headers.get("ETag");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function chip(id, text, level) {
  const node = $(id);
  node.textContent = text;
  node.className = `chip ${level || ""}`;
}

function notice(text, bad) {
  const node = $("notice");
  node.textContent = text || "";
  node.className = text ? (bad ? "bad" : "") : "hidden";
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "no frame yet";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms old`;
  if (seconds < 120) return `${seconds.toFixed(1)} s old`;
  return `${Math.round(seconds / 60)} min old`;
}

function showChips(state) {
  const d = state.daemon;
  chip("chip-daemon", `daemon ${d.status}${d.uptime_s != null ? ` · up ${Math.round(d.uptime_s)} s` : ""}`, d.status === "ok" ? "ok" : "bad");
  const llm = state.llm;
  const model = llm.model || "model ?";
  if (llm.reachable === false) chip("chip-llm", `LLM unreachable · ${model}`, "bad");
  else if (llm.reachable) chip("chip-llm", `LLM ${model}${llm.last_error ? " · last error: " + (llm.last_error.type || "error") : ""}`, llm.last_error ? "warn" : "ok");
  else chip("chip-llm", `LLM ${model} · checking`, "warn");
  $("chip-llm").title = llm.detail || (llm.last_error ? `${llm.last_error.type}: ${llm.last_error.message}` : "");
  const b = state.broker;
  if (b.state === "disabled") chip("chip-broker", "MQTT off", "");
  else chip("chip-broker", `broker ${b.state}${b.outbox ? ` · ${b.outbox} waiting` : ""}`, b.state === "connected" ? "ok" : "bad");
  $("chip-broker").title = b.last_error || b.broker || "";
  const store = state.storage || { state: "disabled" };
  if (store.state === "disabled") chip("chip-storage", "events not kept", "");
  else chip("chip-storage", `events ${store.state}${store.used_mb != null ? ` · ${store.used_mb} MB` : ""}`, store.state === "ok" ? "ok" : "bad");
  $("chip-storage").title = store.error || "";
  chip("chip-token", state.token.required ? "token accepted" : "no token (open to this network)", state.token.required ? "ok" : "warn");
}

function whatToDo(state) {  // the one next step, in words
  if (state.llm.reachable === false) {
    return [`The LLM (${state.llm.provider}) does not answer: ${state.llm.detail || "unreachable"}. Questions and rules get errors until it is up; \`visual-agent check\` says what to fix.`, true];
  }
  if (!state.sources.length) return ["No source yet: press Connect to publish this device's camera, or add sources to the config.", false];
  return [null, false];
}

function drawTile(source) {
  let tile = konsole.tiles[source.name];
  if (!tile) {
    const node = el("div", "tile");
    node.dataset.source = source.name;
    const img = el("img", "shot hidden");
    img.alt = `newest frame of ${source.name}`;
    const placeholder = el("div", "noshot", "waiting for the first frame…");
    const body = el("div", "body");
    const name = el("div", "name");
    const label = el("span");
    const askButton = el("button", "small", "Ask");
    askButton.type = "button";
    askButton.addEventListener("click", () => askAbout(source.name));
    name.append(label, askButton);
    const line = el("div", "meta");
    const pub = el("div", "meta");
    body.append(name, line, pub);
    node.append(img, placeholder, body);
    tile = konsole.tiles[source.name] = { node, img, placeholder, label, line, pub, etag: null, busy: false };
    $("tiles").appendChild(node);
  }
  tile.source = source;
  tile.label.replaceChildren(el("span", `dot ${source.state}`), document.createTextNode(source.name));
  const size = source.width ? `${source.width}×${source.height} · ` : "";
  tile.line.textContent = `${source.state} · ${size}${source.fps ?? 0} fps · ${ago(source.newest_age_s)}`;
  const p = source.publisher || {};
  const mine = page.source === source.name ? " (this device)" : "";
  tile.pub.textContent = `${p.kind || "?"} ${p.state || ""}${mine}${p.error ? " · " + p.error : ""}${source.last_error ? " · " + source.last_error : ""}`;
  if (source.newest_age_s == null) tile.placeholder.textContent = source.state === "ended" ? "ended before its first frame" : "waiting for the first frame…";
  return tile;
}

async function refreshSnapshot(tile) {
  if (tile.busy || document.visibilityState === "hidden" || tile.source.newest_age_s == null) return;
  tile.busy = true;
  try {
    tile.etag = await authImage(tile.img, tile.source.snapshot, tile.etag);
    tile.img.classList.remove("hidden");
    tile.placeholder.classList.add("hidden");
  } catch (err) { /* the next round tries again; the tile's text says why there is no frame */ } finally {
    tile.busy = false;
  }
}

function showSources(state) {
  const names = state.sources.map((s) => s.name);
  for (const name of Object.keys(konsole.tiles)) {
    if (!names.includes(name)) { konsole.tiles[name].node.remove(); delete konsole.tiles[name]; }
  }
  for (const source of state.sources) {
    drawTile(source);
    if (source.name === page.source) noteFrameRate(source.fps);
  }
  $("sources-count").textContent = names.length ? `${names.length} · snapshots every second` : "";
  const empty = $("sources-empty");
  empty.textContent = "No source yet. Press Connect to publish this device's camera, or add `sources:` to the config.";
  empty.classList.toggle("hidden", names.length > 0);
  fillSourceSelect($("ask-source"), names, ownCameraLabel());
  fillSourceSelect($("rule-source"), names, null);
  if ($("tl-source")) fillSourceSelect($("tl-source"), names, "all sources");
}

function fillSourceSelect(select, names, firstLabel) {  // keeps the choice; a chosen source that went stays listed
  const chosen = select.value;
  const wanted = [...(firstLabel ? [""] : []), ...names];
  if (chosen && !wanted.includes(chosen)) wanted.push(chosen);
  const have = [...select.options].map((o) => o.value);
  if (have.join("\n") === wanted.join("\n")) return;
  select.replaceChildren(...wanted.map((v) => new Option(v || firstLabel, v)));
  select.value = chosen && wanted.includes(chosen) ? chosen : wanted[0] || "";
}

function ownCameraLabel() {  // "my camera" is a choice once this page publishes one; before, the first source is
  return page.pc ? "my camera" : null;
}

// Put a question about `source` in the ask box; `past` ({since, until, label}) makes it a question about that time.
function askAbout(source, question, past) {
  const label = ownCameraLabel();
  fillSourceSelect($("ask-source"), [...new Set([...Object.keys(konsole.tiles), source])], label);
  $("ask-source").value = source === page.source && label ? "" : source;
  setAskPast(past);
  if (question) $("question").value = question;
  $("question").focus();
  $("ask").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function pollState() {
  let result;
  try {
    result = await api("api/state");
  } catch (err) {
    konsole.problem = "offline";
    chip("chip-daemon", "daemon not answering", "bad");
    notice("The daemon does not answer (stopped, or the network is gone). This page retries every second.", true);
    return;
  }
  konsole.polls += 1;
  if (result.status === 404) {  // no console API here: the camera page alone
    konsole.available = false;
    for (const id of ["sources-section", "rules-section"]) $(id).classList.add("hidden");
    for (const id of ["chip-daemon", "chip-llm", "chip-broker", "chip-storage", "chip-token"]) $(id).classList.add("hidden");
    return "stop";
  }
  document.body.classList.toggle("locked", result.status === 401);  // nothing to show without the token
  if (result.status === 401) {
    konsole.problem = "token";
    chip("chip-token", sessionStorage.getItem(TOKEN_KEY) ? "token refused" : "token needed", "bad");
    notice(`${tokenProblem().replace(/^./, (c) => c.toUpperCase())}.`, true);
    return;
  }
  if (result.status !== 200 || !result.body || !result.body.daemon) {
    notice(`The daemon answered ${result.status} to api/state; this page retries every second.`, true);
    return;
  }
  konsole.available = true;
  konsole.problem = null;
  const state = (konsole.state = result.body);
  showChips(state);
  showSources(state);
  if (window.rulesPanel) window.rulesPanel.show(state);
  const [todo, bad] = whatToDo(state);
  notice(todo, bad);
}

(function startPolling() {
  let stopped = false;
  const loop = async () => {
    if (stopped) return;
    const result = await pollState();
    updateButtons();  // whether the ask box can use POST api/ask
    if (result === "stop") { stopped = true; return; }
    setTimeout(loop, STATE_EVERY_MS);
  };
  loop();
  setInterval(updateButtons, STATE_EVERY_MS);  // asking over HTTP follows the console API's answers
  setInterval(() => { if (!stopped) Object.values(konsole.tiles).forEach(refreshSnapshot); }, SNAPSHOT_EVERY_MS);
})();
