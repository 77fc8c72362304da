// The timeline: what the daemon saw and said (answers, descriptions, scene memories, rules turning on and off), per
// day, newest first, with thumbnails, from the event store's GET events (?source=&kind=&q=&limit=). Filter by source
// and kind, search the text, and "Ask about this" puts a question about the time around an event in the ask box (a
// question about the past: since/until, answered from the event store). A daemon without the event store answers
// 404: the panel stays hidden rather than empty.
"use strict";

const TIMELINE_EVERY_MS = 4000;
const TIMELINE_LIMIT = 100;
const PAST_AROUND_S = 60;  // "Ask about this" asks about the stored events this long before and after the event
const timeline = (window.agentTimeline = { available: null, events: [], thumbs: {}, busy: false, query: "" });

function timelineQuery() {
  const params = new URLSearchParams({ limit: String(TIMELINE_LIMIT) });
  for (const [id, key] of [["tl-source", "source"], ["tl-kind", "kind"], ["tl-q", "q"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  return params.toString();
}

function eventTitle(event) {
  if (event.kind === "rule") return "rule event";  // its text says which rule and how it turned
  if (event.kind === "answer" && event.question) return `Q: ${event.question}`;
  return event.kind;
}

function drawEvent(event) {
  const row = el("div", "event");
  row.dataset.id = String(event.id);
  row.dataset.kind = event.kind;
  let thumb;
  if (event.thumbnail) {
    thumb = el("img");
    thumb.alt = `${event.source} at ${new Date(event.at * 1000).toLocaleTimeString()}`;
    const cached = timeline.thumbs[event.id];
    if (cached) thumb.src = cached;
    else {
      authImage(thumb, event.thumbnail).then(() => { timeline.thumbs[event.id] = thumb.src; }).catch(() => {});
    }
  } else {
    thumb = el("div", "nothumb");
  }
  const body = el("div");
  const head = el("div", "meta", `${new Date(event.at * 1000).toLocaleTimeString()} · ${event.source} · ${eventTitle(event)}`);
  const text = el("div", "text", event.text);
  const ask = el("button", "small", "Ask about this");
  ask.type = "button";
  ask.addEventListener("click", () => {
    const when = new Date(event.at * 1000).toLocaleTimeString();
    const past = { since: event.at - PAST_AROUND_S, until: event.at + PAST_AROUND_S,
                   label: `${when} ± ${PAST_AROUND_S} s` };
    askAbout(event.source, `About ${when} (“${event.text.slice(0, 80)}”): `, past);
  });
  body.append(head, text, ask);
  row.append(thumb, body);
  return row;
}

function drawTimeline(events) {
  const box = $("timeline");
  const days = new Map();
  for (const event of events) {
    const day = new Date(event.at * 1000).toDateString();
    if (!days.has(day)) days.set(day, []);
    days.get(day).push(event);
  }
  const nodes = [];
  const today = new Date().toDateString();
  for (const [day, list] of days) {
    nodes.push(el("div", "day", day === today ? `Today · ${list.length}` : `${day} · ${list.length}`));
    list.forEach((e) => nodes.push(drawEvent(e)));
  }
  box.replaceChildren(...nodes);
  const filtered = ["tl-source", "tl-kind", "tl-q"].some((id) => $(id).value.trim());
  const empty = $("timeline-empty");
  empty.textContent = filtered
    ? "No event matches: change the source, the kind or the search words."
    : "No events yet: answers, descriptions and rule changes appear here as they happen.";
  empty.classList.toggle("hidden", events.length > 0);
  $("timeline-count").textContent = events.length ? `${events.length}${events.length === TIMELINE_LIMIT ? "+" : ""} shown` : "";
}

async function pollTimeline() {
  if (timeline.busy || timeline.available === false || konsole.problem === "token") return;
  timeline.busy = true;
  try {
    const query = timelineQuery();
    const result = await api(`events?${query}`);
    if (result.status === 404) { timeline.available = false; $("timeline-section").classList.add("hidden"); return; }
    if (result.status !== 200 || !result.body || !Array.isArray(result.body.events)) return;
    timeline.available = true;
    $("timeline-section").classList.remove("hidden");
    const events = result.body.events;
    const key = events.map((e) => e.id).join(",");
    if (key !== timeline.key || query !== timeline.query) drawTimeline(events);
    timeline.key = key;
    timeline.query = query;
    timeline.events = events;
    const shown = new Set(events.map((e) => String(e.id)));
    for (const id of Object.keys(timeline.thumbs)) if (!shown.has(id)) delete timeline.thumbs[id];  // bounded
  } catch (err) { /* the daemon is away: console.js says so; tried again */ } finally {
    timeline.busy = false;
  }
}

let searchTimer = null;
$("tl-q").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(pollTimeline, 300); });
$("tl-source").addEventListener("change", pollTimeline);
$("tl-kind").addEventListener("change", pollTimeline);
pollTimeline();
setInterval(pollTimeline, TIMELINE_EVERY_MS);
