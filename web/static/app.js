// refengine /ui: a chat that streams from /v1/chat/completions, and an inspector for request traces
// (the document of refengine/trace.py). Plain browser JavaScript: no build step, nothing fetched from
// outside this server. Every piece of model or user text is set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null, trace: null, selected: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text) { $("status").textContent = text; }

// ---- the request ----

function numberField(body, id, fallback) {
  const raw = $(id).value.trim();
  if (raw === "") return;
  const value = Number(raw);
  if (value !== fallback) body[id] = value;
}

function jsonField(id) {
  const raw = $(id).value.trim();
  if (!raw) return undefined;
  try { return JSON.parse(raw); } catch (error) { throw new Error(`${id} is not valid JSON: ${error.message}`); }
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.messages.filter((m) => !m.failed).map(({ role, content }) => ({ role, content })));
  const body = { model: "default", messages, stream: true, stream_options: { include_usage: true } };
  body.temperature = Number($("temperature").value || 0.7);
  numberField(body, "top_p", 1);
  numberField(body, "top_k", 0);
  numberField(body, "min_p", 0);
  numberField(body, "repetition_penalty", 1);
  numberField(body, "max_tokens");
  numberField(body, "seed");
  if ($("trace").checked) {
    body.trace = true;
    body.trace_top_k = Number($("trace_top_k").value || 10);
  }
  for (const id of ["response_format", "grammar", "tools"]) {
    const value = jsonField(id);
    if (value !== undefined) body[id] = value;
  }
  Object.assign(body, jsonField("extra") || {});
  return body;
}

// ---- server-sent events ----

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { name, data: data.join("\n") };
    }
  }
}

// ---- the chat ----

function addMessage(role, content) {
  const message = { role, content, node: element("div", "message " + role) };
  message.text = element("span", "text", content);
  message.meta = element("span", "meta");
  message.node.append(message.text, message.meta);
  $("messages").append(message.node);
  state.messages.push(message);
  $("messages").scrollTop = $("messages").scrollHeight;
  return message;
}

function finishMessage(message, usage, finish) {
  const parts = [];
  if (finish) parts.push(`finish: ${finish}`);
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  message.meta.textContent = parts.join(" · ");
  if (message.trace) {
    const button = element("button", "open-trace", "trace");
    button.type = "button";
    button.addEventListener("click", () => showTrace(message.trace));
    message.meta.append(button);
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  let body;
  addMessage("user", text);
  try { body = requestBody(); } catch (error) { state.messages.pop().node.remove(); setStatus(error.message); return; }
  $("prompt").value = "";
  const reply = addMessage("assistant", "");
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("waiting for the first token…");
  let usage = null, finish = null, calls = {};
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
    }
    for await (const item of sseEvents(response)) {
      if (item.data === "[DONE]") break;
      const payload = JSON.parse(item.data);
      if (item.name === "trace") { reply.trace = payload; continue; }
      if (payload.error) throw new Error(payload.error.message);
      if (payload.usage) usage = payload.usage;
      for (const choice of payload.choices || []) {
        const delta = choice.delta || {};
        if (delta.reasoning_content) reply.content += delta.reasoning_content;
        if (delta.content) reply.content += delta.content;
        for (const call of delta.tool_calls || []) {
          const entry = calls[call.index] = calls[call.index] || { name: "", arguments: "" };
          if (call.function && call.function.name) entry.name += call.function.name;
          if (call.function && call.function.arguments) entry.arguments += call.function.arguments;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      const shownCalls = Object.values(calls).map((c) => `\n→ ${c.name}(${c.arguments})`).join("");
      reply.text.textContent = reply.content + shownCalls;
      setStatus("streaming…");
    }
    finishMessage(reply, usage, finish);
    setStatus("");
    if (reply.trace) showTrace(reply.trace);
  } catch (error) {
    reply.failed = true;
    reply.node.className = "message error";
    reply.text.textContent = error.name === "AbortError" ? "(stopped)" : error.message;
    setStatus("");
  } finally {
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

// ---- the inspector ----

function visible(text) {
  return text.replace(/\n/g, "↵\n").replace(/\t/g, "→").replace(/^ | $/g, "·") || "∅";
}

function tokenTitle(token, extra) {
  return [`id ${token.id}`, `bytes [${token.bytes.join(", ")}]`, ...(extra || [])].join("\n");
}

function probabilityColor(p) {
  return `hsl(${Math.round(120 * p)}, 70%, ${Math.round(88 - 10 * p)}%)`;
}

function changedStage(record) {
  // the first stage whose best candidate differs from the one before: the processor that changed the choice
  for (let i = 1; i < record.stages.length; i++) {
    const before = record.stages[i - 1].top[0], after = record.stages[i].top[0];
    if (before && after && before.id !== after.id) return record.stages[i].stage;
  }
  return null;
}

function showTrace(trace) {
  state.trace = trace;
  $("drop-hint").hidden = true;
  $("trace-view").hidden = false;
  $("save-trace").disabled = false;
  const prompt = trace.prompt || { tokens: [], cached_positions: 0 };
  $("prompt-summary").textContent = `${prompt.tokens.length} tokens, ${prompt.cached_positions} from the prefix cache`;
  const promptView = $("prompt-tokens");
  promptView.replaceChildren(...prompt.tokens.map((token, i) => {
    const span = element("span", "token" + (i < prompt.cached_positions ? " cached" : ""), visible(token.text));
    span.title = tokenTitle(token);
    return span;
  }));
  const choice = (trace.choices || [])[0] || { tokens: [] };
  $("output-summary").textContent =
    `${choice.tokens.length} tokens · finish: ${choice.finish_reason} (${choice.why}) · colored by probability`;
  $("output-tokens").replaceChildren(...choice.tokens.map((record, i) => {
    const sampled = record.sampled;
    const changed = changedStage(record);
    const forced = record.constraint && record.constraint.forced;
    const span = element("span", "token out" + (forced ? " forced" : "") + (changed ? " changed" : ""),
                         visible(record.piece));
    span.style.background = probabilityColor(sampled.probability);
    span.title = tokenTitle(sampled, [`p = ${sampled.probability.toFixed(4)}`,
      forced ? "forced by the constraint" : null, changed ? `choice changed by ${changed}` : null].filter(Boolean));
    span.dataset.index = i;
    span.addEventListener("click", () => selectToken(i));
    return span;
  }));
  $("token-detail").replaceChildren();
  drawTimeline(trace);
  if (choice.tokens.length) selectToken(0);
}

function selectToken(index) {
  const record = state.trace.choices[0].tokens[index];
  for (const span of $("output-tokens").children) span.classList.toggle("selected", Number(span.dataset.index) === index);
  const detail = $("token-detail");
  const sampled = record.sampled;
  const lines = [`token ${index}: “${sampled.text}” (id ${sampled.id}), p = ${sampled.probability.toFixed(4)}, ` +
                 `draw u = ${sampled.draw.toFixed(4)}, forward pass #${record.step}`];
  if (record.constraint) lines.push(`constraint state ${record.constraint.state}: ${record.constraint.allowed} tokens allowed` +
                                    (record.constraint.forced ? " (forced)" : ""));
  if (record.emitted !== record.piece) lines.push(`detokenized “${record.piece}”, emitted “${record.emitted}” (a stop string held text back)`);
  const t = record.timings_ms || {};
  lines.push(`mask ${t.mask} ms · processors ${t.processors} ms · sample ${t.sample} ms`);
  const summary = element("div", "detail-summary");
  for (const line of lines) summary.append(element("div", null, line));
  const table = element("table", "stages");
  const head = element("tr");
  head.append(element("th", null, "stage"), element("th", null, "possible"));
  const width = Math.max(...record.stages.map((s) => s.top.length));
  for (let r = 1; r <= width; r++) head.append(element("th", null, `#${r}`));
  table.append(head);
  let previousBest = null;
  for (const stage of record.stages) {
    const row = element("tr");
    const best = stage.top[0] && stage.top[0].id;
    if (previousBest !== null && best !== previousBest) row.className = "changed";
    previousBest = best;
    row.append(element("th", null, stage.stage), element("td", null, String(stage.possible)));
    for (const candidate of stage.top) {
      const logit = candidate.logit === null ? "−∞" : candidate.logit.toFixed(3);
      const cell = element("td", candidate.id === sampled.id ? "chosen" : "", `${visible(candidate.text)} ${logit}`);
      cell.title = tokenTitle(candidate);
      row.append(cell);
    }
    table.append(row);
  }
  detail.replaceChildren(summary, table);
}

function drawTimeline(trace) {
  const total = Math.max(trace.wall_ms || 0, 0.001);
  const rows = [...(trace.timings || []).map((t) => ({ name: t.stage, at: t.at_ms, ms: t.ms, kind: "" })),
                ...(trace.steps || []).map((s) => ({ name: `${s.kind} #${s.step} (batch ${s.batch_size})`,
                                                     at: s.at_ms, ms: s.ms, kind: s.kind }))];
  $("timeline-summary").textContent = `${total.toFixed(1)} ms in all, ${(trace.steps || []).length} forward passes`;
  $("timeline").replaceChildren(...rows.map((row) => {
    const line = element("div", "bar-row");
    const track = element("div", "track");
    const bar = element("div", "bar " + row.kind);
    bar.style.left = `${(100 * row.at / total).toFixed(3)}%`;
    bar.style.width = `${(100 * row.ms / total).toFixed(3)}%`;
    bar.title = `${row.name}: ${row.ms} ms at ${row.at} ms`;
    track.append(bar);
    line.append(element("span", "name", row.name), track);
    return line;
  }));
}

// ---- loading and saving traces ----

async function loadTraceFile(file) {
  try {
    const trace = JSON.parse(await file.text());
    if (!trace || trace.format !== "refengine.trace/1") throw new Error("not a refengine trace (format refengine.trace/1)");
    showTrace(trace);
    setStatus(`loaded ${file.name}`);
  } catch (error) {
    setStatus(`cannot load ${file.name}: ${error.message}`);
  }
}

function saveTrace() {
  const blob = new Blob([JSON.stringify(state.trace, null, 1)], { type: "application/json" });
  const link = element("a");
  link.href = URL.createObjectURL(blob);
  link.download = "trace.json";
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---- wiring ----

$("send-form").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("send-form").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("reset").addEventListener("click", () => { state.messages = []; $("messages").replaceChildren(); setStatus(""); });
$("trace-file").addEventListener("change", (event) => event.target.files[0] && loadTraceFile(event.target.files[0]));
$("save-trace").addEventListener("click", saveTrace);
const inspector = $("inspector");
inspector.addEventListener("dragover", (event) => { event.preventDefault(); inspector.classList.add("dragging"); });
inspector.addEventListener("dragleave", () => inspector.classList.remove("dragging"));
inspector.addEventListener("drop", (event) => {
  event.preventDefault();
  inspector.classList.remove("dragging");
  if (event.dataTransfer.files[0]) loadTraceFile(event.dataTransfer.files[0]);
});
$("api-key").value = localStorage.getItem("refengine-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("refengine-api-key", $("api-key").value));
fetch("/v1/models", { headers: headers() })
  .then((response) => response.json())
  .then((models) => { $("model").textContent = models.data.map((m) => m.id).join(", "); })
  .catch(() => { $("model").textContent = "(models: enter the API key)"; });
