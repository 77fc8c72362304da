// The console page's camera and ask panels: publish the camera over WebRTC, ask questions about any source, show
// the answers. A question about this page's own connected camera goes over its data channel (answers stream); any
// other, and every question before Connect, goes to POST api/ask (the answer streams back as NDJSON), so a phone can
// ask the garage camera without streaming its own. Plain JavaScript, no build step; works in Chromium and Firefox. The other
// panels (console.js: state and sources, rules.js, timeline.js) use the helpers defined here.
// URL parameters (optional): ?source=name&res=1280x720&fps=30&autostart=1
// The camera's source name is kept in localStorage (one per browser), so `visual-agent ask -s <name>` keeps working
// across reloads; a reconnect proves it held the name with the session secret the server gave it.
// The server's token (webrtc.auth_token) comes in the fragment, /#token=..., which browsers never send to a
// server: the page moves it to sessionStorage (this tab only), drops it from the address bar, and sends it as
// "Authorization: Bearer" on its requests.
"use strict";

const $ = (id) => document.getElementById(id);
const page = (window.agentPage = {
  pc: null, dc: null, stream: null, peerId: null, source: null,
  state: "idle", answers: {}, messages: 0, errors: [],
  attempt: 0,  // bumped by stop() and connect(): an older connect() that sees it change gives up
  maxMessageBytes: null,  // the server drops longer data-channel messages (from /webrtc-config)
});

const TOKEN_KEY = "visual-agent-token";
const SECRET_KEY = "visual-agent-session";  // {source, secret} of this browser's last session: proves a reconnect
const SOURCE_KEY = "visual-agent-source";  // this browser's camera name, the same across reloads

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
}
takeTokenFromFragment();
window.addEventListener("hashchange", takeTokenFromFragment);  // a URL with a new token pasted into this tab

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function tokenProblem() {  // what a 401 means for this page, and what to do
  return sessionStorage.getItem(TOKEN_KEY)
    ? "the token was refused (the daemon has another one now): open the URL that `visual-agent url` prints"
    : "this server needs its token: open the URL the daemon printed (…/#token=…), or run `visual-agent url`";
}

function lastSession() {
  try { return JSON.parse(localStorage.getItem(SECRET_KEY) || "null"); } catch (e) { return null; }
}

function stored(key, value) {  // localStorage, tolerating a browser that refuses it (privacy mode)
  try {
    if (value === undefined) return localStorage.getItem(key);
    localStorage.setItem(key, value);
  } catch (e) { /* the name is then only kept for this page */ }
  return value;
}

function cameraName() {  // the name kept for this browser, else a new one: cam-<6 hex>
  let name = stored(SOURCE_KEY);
  if (!name || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    const hex = [...crypto.getRandomValues(new Uint8Array(3))].map((b) => b.toString(16).padStart(2, "0")).join("");
    name = stored(SOURCE_KEY, `cam-${hex}`);
  }
  return name;
}

function log(text) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(line);
}

function setPill(id, text) {
  const el = $(id);
  el.textContent = text;
  el.className = `pill ${text}`;
}

function channelOpen() {
  return !!(page.dc && page.dc.readyState === "open");
}

function canAskOverHttp() {  // the console API answered with the token (console.js); null before its first answer
  const konsole = window.agentConsole;
  return !!(konsole && konsole.available === true && konsole.problem !== "token");
}

function updateButtons() {
  const live = page.pc !== null;
  $("connect").textContent = live ? "Reconnect" : "Connect";
  $("stop").disabled = !live;
  $("ask-button").disabled = !(channelOpen() || canAskOverHttp());
  // only a server without the console API (the webrtc package alone) takes questions over the camera's connection only
  const cameraOnly = window.agentConsole && window.agentConsole.available === false;
  $("ask-hint").classList.toggle("hidden", !(cameraOnly && !channelOpen()));
}

function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);  // send what we have; the server learns the rest from checks
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function openCamera() {
  const [width, height] = $("resolution").value.split("x").map(Number);
  const fps = Number($("fps").value);
  const wanted = { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: fps } };
  const stream = await navigator.mediaDevices.getUserMedia({ video: wanted, audio: false });
  const track = stream.getVideoTracks()[0];
  if ("contentHint" in track) track.contentHint = "detail";
  const s = track.getSettings();
  log(`camera ${s.width}×${s.height} @ ${s.frameRate ? Math.round(s.frameRate) : "?"} fps`);
  page.askedFps = fps;
  page.cameraFps = s.frameRate || null;
  noteFrameRate(null);
  return stream;
}

async function stop() {
  page.attempt += 1;
  const { pc, stream } = page;
  page.pc = null; page.dc = null; page.stream = null; page.peerId = null;
  if (pc) pc.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  $("self").srcObject = null;
  $("self").classList.remove("live");
  page.state = "stopped";
  setPill("pc-state", "stopped");
  setPill("dc-state", "—");
  $("peer").textContent = "";
  updateButtons();
}

async function connect() {
  await stop();
  const attempt = ++page.attempt;
  const superseded = () => page.attempt !== attempt;  // stop() or a newer connect() came meanwhile
  page.state = "connecting";
  setPill("pc-state", "connecting");
  try {
    const configResponse = await fetch("webrtc-config", { headers: authHeaders() });
    if (configResponse.status === 401) throw new Error(tokenProblem());  // missing or refused: what to do
    if (configResponse.status !== 200) throw new Error(`the server answered ${configResponse.status} to webrtc-config`);
    const config = await configResponse.json();
    page.maxMessageBytes = config.maxMessageBytes || null;
    const stream = await openCamera();
    if (superseded()) { stream.getTracks().forEach((t) => t.stop()); return; }
    // from here on page.pc/page.stream are this attempt's: a later stop() closes them
    page.stream = stream;
    $("self").srcObject = stream;
    $("self").classList.add("live");

    const pc = new RTCPeerConnection({ iceServers: config.iceServers || [] });
    page.pc = pc;
    // the data channel must exist before createOffer, or the offer has no SCTP section
    const dc = pc.createDataChannel("agent", { ordered: true });
    page.dc = dc;
    dc.onopen = () => { setPill("dc-state", "open"); updateButtons(); log("data channel open"); };
    dc.onclose = () => { setPill("dc-state", "closed"); updateButtons(); };
    dc.onmessage = (event) => onMessage(event.data);

    const track = stream.getVideoTracks()[0];
    pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    // connectionState where the browser has it, else the ICE state (older Firefox)
    const onState = () => {
      const state = pc.connectionState || ({ checking: "connecting", completed: "connected" }[pc.iceConnectionState] || pc.iceConnectionState);
      if (state === page.state) return;
      page.state = state;
      setPill("pc-state", state);
      log(`connection ${state}`);
      if (state === "failed") log("connection failed: press Reconnect");
    };
    pc.addEventListener("connectionstatechange", onState);
    pc.addEventListener("iceconnectionstatechange", onState);

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 2000);
    if (superseded()) return;  // do not hold a server slot with an offer nobody will answer
    const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
    const source = $("source").value.trim();
    if (source) { body.source = source; stored(SOURCE_KEY, source); }
    const last = lastSession();
    if (source && last && last.source === source && last.secret) body.replaces = last.secret;
    const response = await fetch("offer", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(`server refused the offer (${response.status}): ${answer.error}`);
    if (superseded()) return;
    page.peerId = answer.peer_id;
    page.source = answer.source;
    if (answer.session_secret) {
      stored(SECRET_KEY, JSON.stringify({ source: answer.source, secret: answer.session_secret }));
    }
    $("peer").textContent = `source ${answer.source} · peer ${answer.peer_id}`;
    $("camera-name").textContent = `as “${answer.source}”`;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    updateButtons();
  } catch (err) {
    if (superseded()) return;  // its peer connection was closed under it
    await stop();  // no camera left on, no half-open connection; Connect tries again
    page.errors.push(String(err));
    log(`error: ${err.message || err}`);
    setPill("pc-state", "error");
    page.state = "error";
    updateButtons();
  }
}

function answerBox(id, question) {
  let entry = page.answers[id];
  if (!entry) {
    const el = document.createElement("div");
    el.className = "answer streaming";
    el.innerHTML = '<div class="q"></div><div class="text"></div><div class="meta"></div>';
    $("answers").appendChild(el);
    entry = page.answers[id] = { el, question: question || "", text: "", parts: {}, nextSeq: null, done: false };
  }
  if (question && !entry.question) entry.question = question;
  entry.el.querySelector(".q").textContent = entry.question || `(question ${id})`;
  return entry;
}

function onMessage(data) {
  page.messages += 1;
  let msg;
  try { msg = JSON.parse(data); } catch (e) { msg = null; }
  if (!msg || typeof msg !== "object") {  // plain text from the agent
    const entry = answerBox(`text-${page.messages}`, "");
    entry.el.querySelector(".text").textContent = String(data);
    entry.el.className = "answer done";
    return;
  }
  if (msg.type === "rule" && typeof msg.rule === "string") { showRule(msg); return; }  // a rule's live state
  if ("delta" in msg && "id" in msg) {  // {"id", "seq", "delta"}: a streamed piece, in seq order
    const entry = answerBox(msg.id);
    if (entry.done) return;
    const seq = Number.isInteger(msg.seq) ? msg.seq : Object.keys(entry.parts).length;
    entry.parts[seq] = msg.delta;
    if (entry.nextSeq === null) entry.nextSeq = Math.min(...Object.keys(entry.parts).map(Number));
    while (entry.nextSeq in entry.parts) { entry.text += entry.parts[entry.nextSeq]; delete entry.parts[entry.nextSeq]; entry.nextSeq += 1; }
    entry.el.querySelector(".text").textContent = entry.text;
    return;
  }
  if ("id" in msg && ("text" in msg || "error" in msg)) { showAnswer(msg); return; }  // the final answer
  log(`message: ${data}`);
}

function showAnswer(msg) {  // a final answer (or error answer), from the data channel or POST api/ask
  const entry = answerBox(msg.id, msg.question);
  entry.done = true;
  entry.final = msg;
  const failed = msg.error && msg.error !== null;
  entry.text = failed ? `${msg.error.type || "error"}: ${msg.error.message || ""}` : (msg.text || "");
  entry.el.querySelector(".text").textContent = entry.text;
  const meta = [];
  if (msg.model) meta.push(msg.model);
  if (msg.provider) meta.push(msg.provider);
  if (typeof msg.latency_s === "number") meta.push(`${msg.latency_s.toFixed(2)} s`);
  if (Array.isArray(msg.frames) && msg.frames.length) {
    meta.push(`${msg.frames.length} frame(s), newest ${Math.min(...msg.frames.map((f) => f.age_s ?? Infinity)).toFixed(3)} s old`);
  }
  if (Array.isArray(msg.events)) meta.push(`from ${msg.events.length} stored event(s)`);
  entry.el.querySelector(".meta").textContent = meta.join(" · ");
  entry.el.className = `answer ${failed ? "failed" : "done"}`;
}

// One conversation per browser tab: its id lives in sessionStorage, so the history survives a reconnect (and a
// reload) of this tab, and another tab starts its own.
function conversationId() {
  try {
    let id = sessionStorage.getItem("visual-agent-conversation");
    if (!id) {
      id = `tab-${crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`}`.slice(0, 40);
      sessionStorage.setItem("visual-agent-conversation", id);
    }
    return id;
  } catch (err) {  // storage refused (privacy mode): the server makes the connection the conversation
    return null;
  }
}

// The camera's measured rate against the one asked: the camera's own settings, then the server's count
// (console.js passes the source's fps from /api/state).
function noteFrameRate(serverFps) {
  const asked = page.askedFps;
  const measured = serverFps ?? page.cameraFps;
  const low = page.pc && asked && measured && measured < asked * 0.85;
  $("camera-note").textContent = low
    ? `The camera delivers ${Math.round(measured)} fps of the ${asked} asked (its own limit, or the light).` : "";
}

// A rule's state sent on the data channel: rules.js draws it when loaded (with the console API), else one line.
function showRule(msg) {
  if (window.rulesPanel) { window.rulesPanel.live(msg); return; }
  const id = `rule-${msg.rule}`;
  let li = document.getElementById(id);
  if (!li) { li = document.createElement("li"); li.id = id; $("rules").appendChild(li); }
  li.className = `rule ${msg.state === "on" ? "on" : "off"}`;
  li.textContent = ruleLine(msg);
}

function ruleLine(msg) {
  // Why the rule is in its state (the check that turned it), not the newest check's reason: held "on" by its
  // hysteresis while the newest check says no, "lamp: on — mean brightness 28" would contradict itself.
  const why = msg.since_reason || msg.reason;
  return `${msg.rule}: ${msg.state}${msg.degraded ? " (slowed: budget)" : ""}${why ? " — " + why : ""}`;
}

// This tab's name for the daemon's fair share (X-Console-Tab): each tab waits its own turn when the model is busy.
function tabId() {
  if (!page.tab) {
    try { page.tab = sessionStorage.getItem("visual-agent-tab"); } catch (e) { /* privacy mode: this load only */ }
    if (!page.tab || !/^[A-Za-z0-9_-]{1,64}$/.test(page.tab)) {
      page.tab = `tab-${[...crypto.getRandomValues(new Uint8Array(8))].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
      try { sessionStorage.setItem("visual-agent-tab", page.tab); } catch (e) { /* kept for this load */ }
    }
  }
  return page.tab;
}

// A question about the past (timeline.js's "Ask about this"): {since, until, label} until asked or cleared.
function setAskPast(past) {
  page.askPast = past || null;
  $("ask-past").classList.toggle("hidden", !past);
  $("ask-past-label").textContent = past ? past.label : "";
}

function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const id = (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`).slice(0, 12);
  const message = { id, question };
  const about = $("ask-source").value || page.source;
  if (about) message.source = about;
  const conversation = conversationId();
  if (conversation) message.conversation = conversation;
  const past = page.askPast;
  if (past) { message.since = past.since; message.until = past.until; }
  const said = [...(about && about !== page.source ? [about] : []), ...(past ? [past.label] : [])];
  const label = said.length ? `${question} (${said.join(", ")})` : question;
  if (channelOpen() && (!about || about === page.source)) {
    if (!askOverChannel(message, label)) return;  // too long: kept in the box, to be shortened
  } else if (canAskOverHttp()) askOverHttp(message, label);
  else { log("cannot ask yet: the daemon has not answered with the token; press Connect to ask your camera"); return; }
  $("question").value = "";
  setAskPast(null);
}

async function askOverHttp(message, label) {
  const entry = answerBox(message.id, label);
  entry.el.querySelector(".text").textContent = "…";
  let answer;
  try {
    const response = await fetch("api/ask", {
      method: "POST", cache: "no-store", body: JSON.stringify(message),
      headers: { "Content-Type": "application/json", "Accept": "application/x-ndjson", "X-Console-Tab": tabId(), ...authHeaders() },
    });
    if ((response.headers.get("Content-Type") || "").startsWith("application/x-ndjson") && response.body) {
      await readLines(response.body, onMessage);  // pieces, then the answer: the data channel's messages
      if (!entry.done) showAnswer({ id: message.id, error: { type: "network", message: "the answer stopped halfway; ask again" } });
      return;
    }
    const text = await response.text();
    try { answer = JSON.parse(text); } catch (e) { answer = null; }
    if (response.status === 401) answer = { error: { type: "token", message: tokenProblem() } };
    else if (!answer || typeof answer !== "object" || !("error" in answer)) {
      answer = { error: { type: `HTTP ${response.status}`, message: text.trim().slice(0, 300) } };
    }
  } catch (err) {
    answer = { error: { type: "network", message: `the daemon did not answer (${err.message || err}); ask again` } };
  }
  if (!entry.done) showAnswer({ ...answer, id: message.id });  // a refusal before parsing has a fresh id: this box is its
}

async function readLines(body, each) {  // an NDJSON body, one line at a time as it arrives
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    rest += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = rest.split("\n");
    rest = lines.pop();
    lines.filter((line) => line.trim()).forEach(each);
    if (done) break;
  }
  if (rest.trim()) each(rest);
}

function askOverChannel(message, label) {  // answers stream back on the channel (onMessage)
  message.stream = true;
  const text = JSON.stringify(message);
  const bytes = new TextEncoder().encode(text).length;
  if (page.maxMessageBytes && bytes > page.maxMessageBytes) {  // the server would drop it: no answer would come
    log(`question too long: ${bytes} bytes, the server takes at most ${page.maxMessageBytes}`);
    return false;
  }
  page.dc.send(text);
  answerBox(message.id, label);
  return true;
}

$("connect").addEventListener("click", connect);
window.addEventListener("pagehide", () => { if (page.pc) page.pc.close(); });  // tell the server at once
$("stop").addEventListener("click", stop);
$("ask-form").addEventListener("submit", ask);
$("ask-past-clear").addEventListener("click", () => setAskPast(null));

// a value the list lacks is added to it (setting it alone would leave the list empty: a 0x0, 0-fps camera)
function choose(select, value, pattern) {
  if (!pattern.test(value)) { log(`ignored ${select.id}=${value}`); return; }
  if (![...select.options].some((o) => o.value === value)) select.add(new Option(value.replace("x", "×"), value));
  select.value = value;
}

(function applyUrlParameters() {
  const params = new URLSearchParams(location.search);
  $("source").value = params.get("source") || cameraName();
  if (params.get("res")) choose($("resolution"), params.get("res"), /^[1-9]\d{1,4}x[1-9]\d{1,4}$/);
  if (params.get("fps")) choose($("fps"), params.get("fps"), /^[1-9]\d{0,2}$/);
  updateButtons();
  if (params.get("autostart") === "1") connect();
})();
