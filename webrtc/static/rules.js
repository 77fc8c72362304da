// The rules panel: every standing question with its live state (on/off, since, last answer and reason), its newest
// evidence picture and look-back strip; create, edit and delete from the page (PUT/DELETE api/rules/<name>). The
// server checks a rule with the same parser as <prefix>/rules/set and answers with the same messages, shown as is.
"use strict";

const rulesPanel = (window.rulesPanel = { items: {}, editing: null, lastState: null });

function sinceText(unix) {
  if (!unix) return "";
  const when = new Date(unix * 1000);
  const today = new Date().toDateString() === when.toDateString();
  return today ? when.toLocaleTimeString() : when.toLocaleString();
}

function ruleItem(name) {
  let item = rulesPanel.items[name];
  if (item) return item;
  const li = el("li", "rule");
  li.id = `rule-${name}`;
  const line = el("div", "line");
  const question = el("div", "meta");
  const detail = el("div", "meta");
  const evidence = el("div", "evidence");
  const shot = el("img", "hidden");
  shot.alt = `evidence: the frame that last turned ${name} on`;
  const strip = el("img", "strip hidden");
  strip.alt = `look-back before ${name} last turned on`;
  const noEvidence = el("span", "meta", "No evidence yet: it is kept when the rule turns on.");
  const caption = el("div", "meta caption hidden");
  evidence.append(caption, shot, strip, noEvidence);
  const buttons = el("div", "row");
  const edit = el("button", "small", "Edit");
  edit.type = "button";
  edit.addEventListener("click", () => openRuleForm(rulesPanel.items[name].rule));
  const remove = el("button", "small", "Delete");
  remove.type = "button";
  remove.addEventListener("click", () => deleteRule(name, remove));
  const ask = el("button", "small", "Ask this now");
  ask.type = "button";
  ask.addEventListener("click", () => askAbout(rulesPanel.items[name].rule.source, rulesPanel.items[name].rule.question));
  buttons.append(edit, remove, ask);
  li.append(line, question, detail, evidence, buttons);
  $("rules").appendChild(li);
  item = rulesPanel.items[name] = { li, line, question, detail, shot, strip, noEvidence, caption, edit, remove, urls: {} };
  return item;
}

function drawRule(rule) {
  const item = ruleItem(rule.rule);
  item.rule = { ...(item.rule || {}), ...(rule.config || {}), ...rule, source: rule.source || (rule.config || {}).source };
  const on = rule.state === "on";
  item.li.className = `rule ${on ? "on" : "off"}`;
  item.line.replaceChildren(document.createTextNode(ruleLine(rule) + " "), el("span", `badge ${on ? "on" : "off"}`, on ? "ON" : "off"));
  if (rule.question) item.question.textContent = `${rule.source} · “${rule.question}”`;
  const bits = [];
  if (rule.since) bits.push(`${on ? "on" : "off"} since ${sinceText(rule.since)}`);
  if (rule.answer !== undefined && rule.answer !== null) {
    const newest = rule.reason && rule.since_reason && rule.reason !== rule.since_reason ? ` (${rule.reason})` : "";
    bits.push(`last answer ${rule.answer ? "yes" : "no"}${newest}`);
  }
  if (rule.checks !== undefined) bits.push(`${rule.checks} checks`);
  if (rule.model) bits.push(rule.model);
  if (rule.error) bits.push(`error: ${rule.error}`);
  if (rule.origin === "config") bits.push("from the config file (edit it there)");
  item.detail.textContent = bits.join(" · ");
  const editable = rule.editable !== undefined ? rule.editable : rule.origin !== "config";
  item.edit.classList.toggle("hidden", !editable);
  item.remove.classList.toggle("hidden", !editable);
  if ("evidence" in rule) showEvidence(item, rule);
}

async function showEvidence(item, rule) {
  item.noEvidence.classList.toggle("hidden", !!rule.evidence);
  item.caption.classList.toggle("hidden", !rule.evidence_at);
  if (rule.evidence_at) item.caption.textContent = `Last turned on at ${sinceText(rule.evidence_at)}: the frame, and the seconds before it`;
  for (const [key, img] of [["evidence", item.shot], ["lookback", item.strip]]) {
    const url = rule[key];
    if (!url) { img.classList.add("hidden"); item.urls[key] = null; continue; }
    if (item.urls[key] === url) continue;
    item.urls[key] = url;  // a new `on` has a new URL
    try {
      await authImage(img, url);
      img.classList.remove("hidden");
    } catch (err) { item.urls[key] = null; }  // tried again at the next poll
  }
}

rulesPanel.show = (state) => {
  const rules = state.rules;
  rulesPanel.lastState = rules;
  const names = rules.items.map((r) => r.rule);
  for (const name of Object.keys(rulesPanel.items)) {
    if (!names.includes(name)) { rulesPanel.items[name].li.remove(); delete rulesPanel.items[name]; }
  }
  rules.items.forEach(drawRule);
  $("rules-empty").classList.toggle("hidden", names.length > 0);
  $("rules-truth").textContent = rules.source_of_truth === "mqtt"
    ? "saved as the retained set on <prefix>/rules/set" : rules.source_of_truth === "memory"
      ? "MQTT is off: page rules last until the daemon stops" : "";
};

rulesPanel.live = (msg) => {  // a state pushed on the data channel: drawn at once, the next poll adds the rest
  drawRule(msg);
  $("rules-empty").classList.add("hidden");
};

const RULE_FIELDS = {  // form input -> rule key, and how to read it
  "rule-name": ["name", String], "rule-source": ["source", String], "rule-question": ["question", String],
  "rule-every": ["check_every_s", Number], "rule-lookback": ["lookback_s", Number], "rule-on": ["on_after", Number],
  "rule-off": ["off_after", Number], "rule-cooldown": ["cooldown_s", Number], "rule-change": ["only_on_change", (v) => v === "true"],
};
const RULE_DEFAULTS = { check_every_s: 2, lookback_s: 3, on_after: 2, off_after: 3, cooldown_s: 30, only_on_change: true };

function openRuleForm(rule) {
  const form = $("rule-form");
  rulesPanel.editing = rule ? rule.name || rule.rule : null;
  const values = { ...RULE_DEFAULTS, ...(rule || {}) };
  if (rule && !values.name) values.name = rule.rule;
  for (const [id, [key]] of Object.entries(RULE_FIELDS)) {
    const input = $(id);
    const value = values[key];
    if (input.tagName === "SELECT" && value !== undefined && ![...input.options].some((o) => o.value === String(value))) {
      input.add(new Option(String(value), String(value)));
    }
    input.value = value === undefined ? "" : String(value);
  }
  $("rule-name").readOnly = !!rulesPanel.editing;
  $("rule-save").textContent = rulesPanel.editing ? "Save changes" : "Add rule";
  $("rule-error").textContent = "";
  form.classList.remove("hidden");
  $(rulesPanel.editing ? "rule-question" : "rule-name").focus();
}

function closeRuleForm() {
  $("rule-form").classList.add("hidden");
  rulesPanel.editing = null;
}

async function saveRule(event) {
  event.preventDefault();
  const rule = {};
  for (const [id, [key, read]] of Object.entries(RULE_FIELDS)) {
    const raw = $(id).value.trim();
    if (raw !== "") rule[key] = read(raw);
  }
  const name = rule.name || "";
  $("rule-error").textContent = "";
  if (!name) { $("rule-error").textContent = "name: give the rule a name (a-z, 0-9 and _)"; return; }
  $("rule-save").disabled = true;
  try {
    const result = await api(`api/rules/${encodeURIComponent(name)}`, { method: "PUT", body: rule });
    if (result.status === 200) { closeRuleForm(); await pollState(); return; }
    if (result.status === 401) { $("rule-error").textContent = tokenProblem(); return; }
    $("rule-error").textContent = (result.body && result.body.error) || `the server answered ${result.status}`;
  } catch (err) {
    $("rule-error").textContent = `the daemon does not answer: ${err.message || err}`;
  } finally {
    $("rule-save").disabled = false;
  }
}

async function deleteRule(name, button) {
  if (button.dataset.confirm !== "1") {  // a second press deletes: no modal dialog
    button.dataset.confirm = "1";
    button.textContent = "Delete: sure?";
    setTimeout(() => { button.dataset.confirm = ""; button.textContent = "Delete"; }, 4000);
    return;
  }
  const result = await api(`api/rules/${encodeURIComponent(name)}`, { method: "DELETE" });
  if (result.status !== 200) log(`rule ${name} not deleted: ${(result.body && result.body.error) || result.status}`);
  await pollState();
}

$("rule-new").addEventListener("click", () => openRuleForm(null));
$("rule-cancel").addEventListener("click", closeRuleForm);
$("rule-form").addEventListener("submit", saveRule);
