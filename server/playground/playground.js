// The playground's logic. It uses the public API only, as any OpenAI client would: GET /v1/models for the
// variants (with long2short's extra fields: budget ceiling, effort budgets, card, calibration) and streamed
// POST /v1/chat/completions, one per pane. Stopping aborts the fetches; the server sees the client leave and
// aborts the generations.
"use strict";

const STORE = "l2s-playground"; // the last question, the settings and the panes, kept across reloads
const KEY_STORE = "l2s-playground-key"; // the API key, for this browser tab only
const EFFORTS = ["none", "low", "medium", "high"];
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

const $ = (selector, root = document) => root.querySelector(selector);
const state = { models: [], panes: [], running: null };

// --- storage -----------------------------------------------------------------------------------------------
function loadSaved() {
  try { return JSON.parse(localStorage.getItem(STORE)) || {}; } catch { return {}; }
}

function save() {
  localStorage.setItem(STORE, JSON.stringify({
    question: $("#question").value,
    temperature: $("#temperature").value,
    maxTokens: $("#max-tokens").value,
    panes: state.panes.map(paneConfig),
  }));
}

// --- the API ------------------------------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorMessage(response) {
  // OpenAI's error shape: {"error": {"message", "type", "code", "param"}}
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    return `${response.status} ${error.code || error.type || ""}: ${error.message}`;
  } catch {
    return `${response.status}: ${text.slice(0, 300) || response.statusText}`;
  }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("#key-row").hidden = false;
    setStatus("This server needs an API key: enter it above.");
    return false;
  }
  if (!response.ok) {
    setStatus(`Could not list the models: ${await errorMessage(response)}`);
    return false;
  }
  state.models = (await response.json()).data;
  setStatus("");
  return true;
}

const variants = () => state.models.filter((m) => m.id !== "auto");
const model = (id) => state.models.find((m) => m.id === id);

function budgetCeiling(id) {
  // A budget above the variant's ceiling is capped by the server; above its context it cannot be reached.
  const ceiling = (m) => m.max_thinking_tokens ?? m.max_model_len ?? 1024;
  if (id === "auto") return Math.max(...variants().map(ceiling), 0);
  const m = model(id);
  return m ? ceiling(m) : 1024;
}

// --- panes --------------------------------------------------------------------------------------------------
function paneConfig(pane) {
  return {
    model: $(".model", pane).value,
    limit: $(".limit", pane).value,
    budget: Number($(".budget-number", pane).value || 0),
  };
}

function addPane(config = {}) {
  const pane = $("#pane-template").content.firstElementChild.cloneNode(true);
  const select = $(".model", pane);
  for (const m of state.models) {
    const option = new Option(m.id === "auto" ? "auto (the server picks)" : m.id, m.id);
    select.add(option);
  }
  if (config.model && model(config.model)) select.value = config.model;
  $(".limit", pane).value = config.limit || "unlimited";
  setBudget(pane, config.budget ?? 32);
  select.addEventListener("change", () => { setBudget(pane, paneConfig(pane).budget); showLimit(pane); save(); });
  $(".limit", pane).addEventListener("change", () => { showLimit(pane); save(); });
  $(".budget", pane).addEventListener("input", (e) => { $(".budget-number", pane).value = e.target.value; save(); });
  $(".budget-number", pane).addEventListener("input", (e) => { $(".budget", pane).value = e.target.value; save(); });
  $(".remove", pane).addEventListener("click", () => {
    state.panes = state.panes.filter((p) => p !== pane);
    pane.remove();
    save();
  });
  showLimit(pane);
  $("#panes").append(pane);
  state.panes.push(pane);
  return pane;
}

function setBudget(pane, value) {
  const ceiling = budgetCeiling($(".model", pane).value);
  const slider = $(".budget", pane);
  slider.max = ceiling;
  slider.value = Math.min(value, ceiling);
  $(".budget-number", pane).value = slider.value;
  $(".budget-number", pane).max = ceiling;
}

function showLimit(pane) {
  const limit = $(".limit", pane).value;
  $(".budget-row", pane).hidden = limit !== "budget";
  const m = model($(".model", pane).value);
  for (const option of $(".limit", pane).options) { // say what each effort means on this variant
    if (!option.value.startsWith("effort:")) continue;
    const effort = option.value.slice(7);
    const budget = m && m.efforts ? m.efforts[effort] : undefined;
    option.text = `effort: ${effort}` + (budget === undefined ? "" : budget === null ? " (unlimited)" : ` (${budget})`);
  }
}

function defaultPanes() {
  // One pane per hosted variant (up to three), unbudgeted: the long/short story at a glance.
  return variants().slice(0, 3).map((m) => ({ model: m.id, limit: "unlimited" }));
}

// --- one request per pane -----------------------------------------------------------------------------------
function requestBody(pane, question) {
  const config = paneConfig(pane);
  const body = {
    model: config.model,
    messages: [{ role: "user", content: question }],
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("#temperature").value || 0),
  };
  const maxTokens = $("#max-tokens").value;
  if (maxTokens) body.max_completion_tokens = Number(maxTokens);
  if (config.limit === "budget") body.thinking_token_budget = config.budget;
  else if (config.limit.startsWith("effort:")) body.reasoning_effort = config.limit.slice(7);
  return body;
}

function resetPane(pane) {
  pane.dataset.state = "streaming";
  for (const key of ["reasoningTokens", "answerTokens", "completionTokens", "cut", "servedBy"]) delete pane.dataset[key];
  $(".reasoning", pane).open = true; // open while it streams
  $(".reasoning summary", pane).textContent = "Reasoning";
  $(".reasoning-text", pane).textContent = "";
  $(".answer", pane).textContent = "";
  $(".error", pane).hidden = true;
  $(".stats", pane).replaceChildren();
}

function showError(pane, message) {
  pane.dataset.state = "error";
  const box = $(".error", pane);
  box.textContent = message;
  box.hidden = false;
}

async function runPane(pane, question, signal) {
  resetPane(pane);
  const body = requestBody(pane, question);
  const started = performance.now();
  const timing = { firstToken: null, firstAnswer: null };
  const result = { usage: null, cut: null, servedBy: null };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal,
    });
    if (!response.ok) return showError(pane, await errorMessage(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { // an error after the stream began arrives in-band
            showError(pane, `${chunk.error.code || chunk.error.type}: ${chunk.error.message}`);
            continue;
          }
          onChunk(pane, chunk, started, timing, result);
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      pane.dataset.state = "stopped";
      showStats(pane, timing, result, performance.now() - started, true);
      return;
    }
    return showError(pane, `request failed: ${error.message}`);
  }
  if (pane.dataset.state === "error") return;
  pane.dataset.state = "done";
  showStats(pane, timing, result, performance.now() - started, false);
}

function onChunk(pane, chunk, started, timing, result) {
  result.servedBy = chunk.model;
  if (chunk.usage) result.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    const reasoning = delta.reasoning_content || delta.reasoning || "";
    const answer = delta.content || "";
    const elapsed = performance.now() - started;
    if ((reasoning || answer) && timing.firstToken === null) timing.firstToken = elapsed;
    if (answer && timing.firstAnswer === null) timing.firstAnswer = elapsed;
    if (reasoning) $(".reasoning-text", pane).textContent += reasoning;
    if (answer) $(".answer", pane).textContent += answer;
    if (choice.finish_reason) result.cut = Boolean(choice.reasoning_truncated);
  }
}

function showStats(pane, timing, result, total, stopped) {
  const rows = [];
  const seconds = (ms) => (ms === null ? "–" : `${(ms / 1000).toFixed(2)} s`);
  if (result.usage) {
    const reasoning = result.usage.completion_tokens_details?.reasoning_tokens ?? 0;
    const answer = result.usage.completion_tokens - reasoning;
    Object.assign(pane.dataset, {
      reasoningTokens: reasoning, answerTokens: answer, completionTokens: result.usage.completion_tokens,
    });
    rows.push(["reasoning tokens", reasoning], ["answer tokens", answer]);
    $(".reasoning summary", pane).textContent = `Reasoning · ${reasoning} tokens`;
  }
  if (result.cut !== null) {
    pane.dataset.cut = result.cut;
    rows.push(["budget", result.cut ? "cut the reasoning" : "not reached", result.cut ? "cut" : ""]);
  }
  rows.push(["first token", seconds(timing.firstToken)], ["first answer token", seconds(timing.firstAnswer)]);
  rows.push(["total", seconds(total)]);
  if (result.servedBy) {
    pane.dataset.servedBy = result.servedBy;
    if ($(".model", pane).value === "auto") rows.push(["auto picked", result.servedBy]);
  }
  if (stopped) rows.push(["stopped", "by you"]);
  $(".stats", pane).replaceChildren(...rows.flatMap(([name, value, cls]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    if (cls) dd.className = cls;
    return [dt, dd];
  }));
  if ($(".answer", pane).textContent) $(".reasoning", pane).open = false; // the answer is what is left in view
  renderEvaluation();
}

async function send() {
  const question = $("#question").value.trim();
  if (!question || !state.panes.length) return;
  stop();
  save();
  const controller = new AbortController();
  state.running = controller;
  $("#send").disabled = true;
  $("#stop").disabled = false;
  setStatus(`Asking ${state.panes.length} pane(s)…`);
  await Promise.allSettled(state.panes.map((pane) => runPane(pane, question, controller.signal)));
  if (state.running === controller) {
    state.running = null;
    $("#send").disabled = false;
    $("#stop").disabled = true;
    setStatus(controller.signal.aborted ? "Stopped." : "Done.");
  }
}

function stop() {
  if (state.running) state.running.abort();
}

function setStatus(text) { $("#status").textContent = text; }

// --- the evaluation view ------------------------------------------------------------------------------------
function inUse() {
  // The variants the panes are using: a pane on auto counts as the variant it was last served by.
  return new Set(state.panes.map((pane) => pane.dataset.servedBy || $(".model", pane).value));
}

function evaluationPoints() {
  const points = [];
  variants().forEach((m, i) => {
    const color = PALETTE[i % PALETTE.length];
    const evaluation = m.card && m.card.evaluation;
    if (evaluation && evaluation.accuracy != null && evaluation.mean_reasoning_tokens != null) {
      points.push({ id: m.id, color, tokens: evaluation.mean_reasoning_tokens, accuracy: evaluation.accuracy,
        label: m.id, source: "card", role: m.card.role, method: m.card.method });
    }
    for (const point of (m.calibration && m.calibration.budgets) || []) {
      points.push({ id: m.id, color, tokens: point.mean_reasoning_tokens, accuracy: point.accuracy,
        label: point.budget === null ? "∞" : String(point.budget), source: "calibration", budget: point.budget });
    }
  });
  return points;
}

function renderEvaluation() {
  const points = evaluationPoints();
  const inUseNow = inUse();
  const svg = $("#chart");
  const W = 720, H = 380, left = 52, right = 16, top = 16, bottom = 44;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const maxTokens = Math.max(10, ...points.map((p) => p.tokens)) * 1.08;
  const x = (tokens) => left + (tokens / maxTokens) * (W - left - right);
  const y = (accuracy) => top + (1 - accuracy) * (H - top - bottom);
  const parts = [];
  for (let a = 0; a <= 1.0001; a += 0.2) {
    parts.push(`<line class="grid" x1="${left}" x2="${W - right}" y1="${y(a)}" y2="${y(a)}"/>`,
      `<text x="${left - 6}" y="${y(a) + 4}" text-anchor="end">${Math.round(a * 100)}%</text>`);
  }
  const step = niceStep(maxTokens);
  for (let t = 0; t <= maxTokens; t += step) {
    parts.push(`<text x="${x(t)}" y="${H - bottom + 16}" text-anchor="middle">${t}</text>`);
  }
  parts.push(`<line class="axis" x1="${left}" x2="${W - right}" y1="${H - bottom}" y2="${H - bottom}"/>`,
    `<line class="axis" x1="${left}" x2="${left}" y1="${top}" y2="${H - bottom}"/>`,
    `<text x="${(W + left) / 2}" y="${H - 6}" text-anchor="middle">mean reasoning tokens</text>`);
  // calibration points of one variant joined in budget order, then every point on top
  const byVariant = {};
  for (const p of points.filter((p) => p.source === "calibration")) (byVariant[p.id] ||= []).push(p);
  for (const list of Object.values(byVariant)) {
    list.sort((a, b) => a.tokens - b.tokens);
    const path = list.map((p) => `${x(p.tokens)},${y(p.accuracy)}`).join(" ");
    parts.push(`<polyline points="${path}" fill="none" stroke="${list[0].color}" stroke-opacity=".5"/>`);
  }
  const spotOf = (p) => `${p.id}|${Math.round(x(p.tokens))}|${Math.round(y(p.accuracy))}`;
  const budgetLabels = {}; // budgets measured at the same spot share one label ("0, 32, 64")
  for (const p of points.filter((p) => p.source === "calibration")) (budgetLabels[spotOf(p)] ||= []).push(p.label);
  for (const p of points) {
    const card = p.source === "card";
    const used = inUseNow.has(p.id);
    const r = card ? (used ? 9 : 7) : used ? 5 : 4;
    parts.push(`<circle cx="${x(p.tokens)}" cy="${y(p.accuracy)}" r="${r}" fill="${p.color}"` +
      `${card && used ? ' class="in-use"' : ""}><title>${escapeHtml(p.id)} ` +
      `${card ? "(card)" : `budget ${p.label}`}: ${(p.accuracy * 100).toFixed(1)}% at ${p.tokens.toFixed(1)} tokens` +
      "</title></circle>");
    if (card) {
      parts.push(`<text x="${x(p.tokens) + 12}" y="${y(p.accuracy) - 8}">${escapeHtml(p.label)}</text>`);
      continue;
    }
    const spot = spotOf(p);
    if (!budgetLabels[spot]) continue; // labelled already
    parts.push(`<text class="budget-label" x="${x(p.tokens) + 7}" y="${y(p.accuracy) + 14}">` +
      `${escapeHtml(budgetLabels[spot].join(", "))}</text>`);
    delete budgetLabels[spot];
  }
  if (!points.length) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">No variant has a measured evaluation ` +
      "(cards without `evaluation`, and no --calibration).</text>");
  }
  svg.innerHTML = parts.join("");
  const rows = points.filter((p) => p.source === "card");
  $("#evaluation-table tbody").replaceChildren(...rows.map((p) => {
    const tr = document.createElement("tr");
    if (inUseNow.has(p.id)) tr.className = "in-use";
    for (const value of [p.id, p.role || "", p.method || "", `${(p.accuracy * 100).toFixed(1)}%`,
      p.tokens.toFixed(1), "card"]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    return tr;
  }));
}

function niceStep(range) {
  const rough = range / 6;
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function showView(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  $("#view-compare").hidden = view !== "compare";
  $("#view-evaluation").hidden = view !== "evaluation";
  if (view === "evaluation") renderEvaluation();
}

// --- start --------------------------------------------------------------------------------------------------
async function start() {
  const saved = loadSaved();
  $("#question").value = saved.question || "";
  if (saved.temperature !== undefined) $("#temperature").value = saved.temperature;
  if (saved.maxTokens !== undefined) $("#max-tokens").value = saved.maxTokens;
  $("#api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("#key-row").hidden = !$("#api-key").value;
  await showPanes();
}

async function showPanes() {
  // Once the models are known (with the API key, when the server asks for one): the saved panes, or defaults.
  if (!(await loadModels())) return;
  const saved = loadSaved().panes;
  (saved && saved.length ? saved : defaultPanes()).forEach((config) => addPane(config));
  document.body.dataset.ready = "true";
}

$("#ask").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("#question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
$("#question").addEventListener("input", save);
$("#temperature").addEventListener("input", save);
$("#max-tokens").addEventListener("input", save);
$("#stop").addEventListener("click", stop);
$("#add-pane").addEventListener("click", () => { addPane({ model: variants()[0]?.id, limit: "unlimited" }); save(); });
$("#api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("#api-key").value.trim());
  if (!state.panes.length) showPanes();
});
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));

start();
