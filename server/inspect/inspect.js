"use strict";
// refllama's sampling inspector: streams /api/generate or /api/chat with refllama's `trace`
// extension and draws, for the selected token, what each stage of llama.cpp's sampler chain
// left (README "Extensions beyond Ollama's API"; the JSON is server/job.py's trace_json).
// Plain DOM, no dependencies, so it works offline from the files served under /inspect/.

const INT_OPTIONS = ["top_k", "repeat_last_n", "seed", "num_predict"];
const FLOAT_OPTIONS = ["temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
  "presence_penalty", "frequency_penalty"];
// the option each stage reads, to label its card
const STAGE_OPTION = { top_k: "top_k", typical_p: "typical_p", top_p: "top_p", min_p: "min_p",
  temperature: "temperature", penalties: "repeat_penalty" };
const TOP_LOGPROBS = 20;

const runs = { A: null, B: null }; // set -> {request, tokens: [{trace, logprob}], error}
let selected = null; // {set, index}
let lastRequests = null; // the requests of the last Generate, for Re-run

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function showPiece(piece) {
  if (piece === "") return "∅";
  return piece.replaceAll("\n", "↵").replaceAll("\t", "⇥");
}

const pct = (p) => (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%";
// the server writes a masked (-inf) logit as -FLT_MAX, since JSON has no infinity
const MASKED = -3.4e38;
const logitText = (x) => (x <= MASKED ? "−∞" : x.toFixed(2));

// --- the request -----------------------------------------------------------------------------

function readOptions(fieldset) {
  const options = {};
  for (const name of [...INT_OPTIONS, ...FLOAT_OPTIONS]) {
    const raw = fieldset.querySelector(`[name=${name}]`).value.trim();
    if (raw === "") continue;
    options[name] = INT_OPTIONS.includes(name) ? parseInt(raw, 10) : parseFloat(raw);
  }
  const kind = fieldset.querySelector("[name=format]").value;
  let format;
  if (kind === "json") format = "json";
  if (kind === "schema") {
    const text = fieldset.querySelector("[name=schema]").value;
    try {
      format = JSON.parse(text);
    } catch (e) {
      throw new Error(`options ${fieldset.dataset.set}: the schema is not JSON (${e.message})`);
    }
  }
  return { options, format };
}

function buildRequest(set) {
  const { options, format } = readOptions($(`.opts[data-set=${set}]`));
  const mode = $("input[name=mode]:checked").value;
  const body = { model: $("#model").value, stream: true, trace: true, logprobs: true,
    top_logprobs: TOP_LOGPROBS, options };
  if (format !== undefined) body.format = format;
  if (mode === "generate") {
    body.prompt = $("#prompt").value;
  } else {
    const system = $("#system").value.trim();
    body.messages = [...(system ? [{ role: "system", content: system }] : []),
      { role: "user", content: $("#user").value }];
  }
  return { set, path: mode === "generate" ? "/api/generate" : "/api/chat", body };
}

async function* ndjson(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value, { stream: !done });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
    if (done) break;
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

async function execute(request) {
  const run = { request, tokens: [], error: null };
  runs[request.set] = run;
  const strip = $(`.run[data-set=${request.set}] .tokens`);
  strip.replaceChildren();
  $(`.run[data-set=${request.set}] .request`)?.remove();
  const response = await fetch(request.path, { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(request.body) });
  if (!response.ok) {
    run.error = (await response.json()).error;
    return run;
  }
  const logprobs = [];
  for await (const event of ndjson(response)) {
    if (event.error) run.error = event.error;
    logprobs.push(...(event.logprobs || []));
    for (const trace of event.trace || []) {
      const index = run.tokens.length;
      run.tokens.push({ trace, logprob: logprobs[index] ?? null });
      strip.append(tokenButton(request.set, index, trace));
    }
  }
  strip.after(requestBox(request));
  return run;
}

function requestBox(request) {
  const shown = { ...request.body, stream: false };
  return el("details", { class: "request" }, el("summary", { text: "Request (as JSON)" }),
    el("pre", { "data-path": request.path, text: JSON.stringify(shown, null, 1) }));
}

// --- the output strips -----------------------------------------------------------------------

function tokenButton(set, index, trace) {
  const button = el("span", { class: "tok", role: "option", id: `tok-${set}-${index}`,
    "data-index": String(index),
    "data-id": String(trace.token), "aria-selected": "false",
    title: `token ${index + 1}: id ${trace.token}, p ${pct(trace.prob)}` },
  showPiece(trace.piece));
  if (trace.resampled) button.classList.add("resampled");
  button.addEventListener("click", () => select(set, index));
  return button;
}

function markDivergence() {
  const a = runs.A?.tokens ?? [];
  const b = runs.B?.tokens ?? [];
  let first = -1;
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const differ = a[i]?.trace.token !== b[i]?.trace.token;
    if (differ && first < 0) first = i;
    for (const set of ["A", "B"]) {
      $(`.run[data-set=${set}] .tok[data-index="${i}"]`)?.classList.toggle("diverge", differ);
    }
  }
  return first;
}

function select(set, index) {
  const run = runs[set];
  if (!run || index < 0 || index >= run.tokens.length) return;
  document.querySelectorAll(".tok[aria-selected=true]").forEach((t) => {
    t.setAttribute("aria-selected", "false");
  });
  const strip = $(`.run[data-set=${set}] .tokens`);
  const tok = $(`.tok[data-index="${index}"]`, strip);
  tok.setAttribute("aria-selected", "true");
  strip.setAttribute("aria-activedescendant", tok.id);
  tok.scrollIntoView({ block: "nearest" });
  selected = { set, index };
  renderInspector(run, index);
}

function onStripKey(event) {
  const set = event.currentTarget.closest(".run").dataset.set;
  const run = runs[set];
  if (!run || run.tokens.length === 0) return;
  const here = selected?.set === set ? selected.index : -1;
  const moves = { ArrowRight: here + 1, ArrowDown: here + 1, ArrowLeft: here - 1,
    ArrowUp: here - 1, Home: 0, End: run.tokens.length - 1 };
  if (!(event.key in moves)) return;
  event.preventDefault();
  select(set, Math.min(Math.max(moves[event.key], 0), run.tokens.length - 1));
}

// --- the inspector ---------------------------------------------------------------------------

function renderInspector(run, index) {
  const { trace, logprob } = run.tokens[index];
  const pane = $("#inspector");
  pane.replaceChildren(el("h2", { text: `Run ${run.request.set}, token ${index + 1} of ` +
    `${run.tokens.length}: ` }, el("code", { class: "piece", text: showPiece(trace.piece) })));
  pane.append(facts(trace, logprob));
  const grammar = grammarNote(run, trace);
  if (grammar) pane.append(grammar);
  const cards = el("div", { class: "stages" });
  let prev = null;
  let group = trace.resampled ? "first run" : null;
  trace.stages.forEach((stage, i) => {
    if (stage.name === "grammar") {
      group = "resample";
      cards.append(stageCard(stage, i, null, trace, run, "grammar"));
    } else {
      cards.append(stageCard(stage, i, prev, trace, run, group));
    }
    prev = stage;
  });
  cards.append(distCard(trace, prev));
  pane.append(cards);
}

function facts(trace, logprob) {
  const rows = [["token id", String(trace.token)],
    ["probability at dist", pct(trace.prob)],
    ["rank in dist's array", `${trace.dist.rank} of ${trace.dist.size} (by logit)`]];
  if (logprob) {
    const top = logprob.top_logprobs || [];
    const at = top.findIndex((t) => t.token === logprob.token);
    rows.push(["logprob (raw logits)", logprob.logprob.toFixed(4)],
      ["rank over the vocabulary", at >= 0 ? String(at + 1) : `below the top ${top.length}`]);
  }
  rows.push(["draws u", trace.draws.map((u) => u.toFixed(6)).join(", ")]);
  return el("dl", { class: "facts" }, ...rows.flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", { text: v })]));
}

function grammarNote(run, trace) {
  if (run.request.body.format === undefined) return null;
  if (!trace.resampled) {
    return el("p", { class: "grammar ok", text: "format is on: the grammar accepted the " +
      "first pick, so nothing was resampled." });
  }
  return el("p", { class: "grammar rejected" },
    "format is on: the grammar rejected the first pick ",
    el("code", { class: "piece", text: showPiece(trace.rejected.piece) }),
    ` (id ${trace.rejected.id}, draw u = ${trace.draws[0].toFixed(6)}); the logits were masked ` +
    "to the tokens the grammar allows and the chain ran again with a second draw.");
}

function stageLabel(stage, run) {
  if (stage.name === "grammar") return "grammar mask";
  const option = STAGE_OPTION[stage.name];
  const value = run.request.body.options[option];
  return option ? `${stage.name} (${option} = ${value ?? "default"})` : stage.name;
}

function stageCard(stage, i, prev, trace, run, group) {
  const card = el("section", { class: "stage", "data-name": stage.name,
    "data-size": String(stage.size), "aria-label": `stage ${i + 1}: ${stage.name}` });
  const kept = prev ? `kept ${stage.size} of ${prev.size}` : `${stage.size} candidates`;
  card.append(el("h3", {}, `${i + 1}. ${stageLabel(stage, run)}`,
    el("span", { class: "kept", text: kept })));
  if (group) card.append(el("p", { class: "group", text: group }));
  const survivors = new Set(stage.top.map((c) => c.id));
  const before = new Map((prev?.top ?? []).map((c) => [c.id, c.prob]));
  // the first run's pick was the rejected token; every other stage leads to the chosen one
  const pick = group === "first run" ? { id: trace.rejected.id, mark: "rejected" }
    : { id: trace.token, mark: "chosen" };
  const chart = el("div", { class: "chart" });
  for (const c of stage.top) {
    chart.append(barRow(c, before.get(c.id), true, c.id === pick.id ? pick.mark : ""));
  }
  const cut = (prev?.top ?? []).filter((c) => !survivors.has(c.id));
  const removed = prev ? prev.size - stage.size : 0;
  if (cut.length > 0) {
    chart.append(el("div", { class: "cutline", role: "separator",
      text: `cut line: ${removed} removed; those shown before this stage are below` }));
    for (const c of cut) chart.append(barRow(c, c.prob, false, ""));
  } else if (removed > 0) {
    chart.append(el("div", { class: "cutline", role: "separator",
      text: `cut line: ${removed} removed, all below the ${stage.top.length} shown` }));
  } else if (prev) {
    const reweights = stage.name === "temperature" || stage.name === "penalties";
    chart.append(el("p", { class: "note",
      text: reweights ? "nothing removed; logits rescaled" : "nothing removed" }));
  }
  card.append(chart);
  return card;
}

function barRow(c, prevProb, kept, mark) {
  const prob = kept ? c.prob : 0;
  const row = el("div", { class: ["cand", kept ? "" : "cut", mark].join(" ").trim(),
    "data-id": String(c.id), "data-logit": String(c.logit), "data-prob": String(c.prob),
    "data-kept": kept ? "1" : "0" });
  const track = el("div", { class: "track" });
  if (prevProb !== undefined) {
    track.append(el("div", { class: "ghost", style: `width:${100 * prevProb}%` }));
  }
  track.append(el("div", { class: "bar", style: `width:${100 * prob}%` }));
  row.append(el("code", { class: "piece", text: showPiece(c.piece) }), track,
    el("span", { class: "num", text: !kept ? "cut" : c.logit <= MASKED ? "masked" : pct(c.prob) }),
    el("span", { class: "num logit", text: logitText(c.logit) }));
  return row;
}

function distCard(trace, last) {
  const { dist } = trace;
  const u = trace.draws[trace.draws.length - 1];
  const card = el("section", { class: "stage dist", "data-name": "dist",
    "data-u": String(u), "data-start": String(dist.start), "data-end": String(dist.end) });
  card.append(el("h3", {}, "dist: the random draw",
    el("span", { class: "kept", text: `${dist.size} candidates` })));
  const strip = el("div", { class: "cumulative", role: "img",
    "aria-label": `draw ${u.toFixed(4)} fell in the interval of the chosen token` });
  if (dist.sorted && last) {
    let at = 0;
    last.top.forEach((c, i) => {
      strip.append(el("div", { class: `seg seg${i % 2}`, title: showPiece(c.piece),
        style: `left:${100 * at}%;width:${100 * c.prob}%` }, showPiece(c.piece)));
      at += c.prob;
    });
  }
  strip.append(el("div", { class: "picked",
    style: `left:${100 * dist.start}%;width:${100 * (dist.end - dist.start)}%` }));
  strip.append(el("div", { class: "draw", style: `left:${100 * u}%` }));
  card.append(strip, el("div", { class: "axis" }, el("span", { text: "0" }),
    el("span", { text: "cumulative probability in dist's array order" }),
    el("span", { text: "1" })));
  card.append(el("p", {}, `u = ${u.toFixed(6)} fell in (${dist.start.toFixed(6)}, ` +
    `${dist.end.toFixed(6)}], the interval of `, el("code", { class: "piece",
    text: showPiece(trace.piece) }), ` at index ${dist.index} of dist's array.`));
  if (!dist.sorted) {
    card.append(el("p", { class: "note", text: "No stage sorted the candidates, so dist's " +
      "array is in token-id order: the interval sits where the token id puts it." }));
  }
  return card;
}

// --- actions ---------------------------------------------------------------------------------

function status(text, tone = "") {
  $("#status").textContent = text;
  $("#status").className = tone;
}

function tokenIds(run) {
  return run.tokens.map((t) => t.trace.token);
}

async function runAll(requests) {
  $("#generate").disabled = true;
  $("#rerun").disabled = true;
  const previous = lastRequests === requests
    ? Object.fromEntries(requests.map((r) => [r.set, tokenIds(runs[r.set])])) : null;
  lastRequests = requests;
  selected = null;
  $("#inspector").replaceChildren(el("p", { class: "hint", text: "No token selected." }));
  const notes = [];
  let tone = "";
  try {
    for (const request of requests) {
      status(`Generating ${request.set}…`);
      const run = await execute(request);
      if (run.error) {
        notes.push(`${request.set}: error: ${run.error}`);
        tone = "bad";
      }
      else notes.push(`${request.set}: ${run.tokens.length} tokens`);
      if (previous) {
        const a = previous[request.set];
        const b = tokenIds(run);
        const same = a.length === b.length && a.every((t, i) => t === b[i]);
        tone = same && tone !== "bad" ? "good" : "bad";
        notes.push(same ? `identical to the previous run (seed ${request.body.options.seed})`
          : "differs from the previous run" + (request.body.options.seed === undefined
            ? " (no seed set: each run draws a fresh one)" : ""));
      }
    }
    if (requests.length === 2) {
      const first = markDivergence();
      notes.push(first < 0 ? "A and B chose the same tokens"
        : `A and B first diverge at token ${first + 1}`);
    }
    status(notes.join("; "), tone);
    if (runs[requests[0].set]?.tokens.length) select(requests[0].set, 0);
  } catch (e) {
    status(`error: ${e.message}`, "bad");
  } finally {
    $("#generate").disabled = false;
    $("#rerun").disabled = false;
  }
}

function generate() {
  const sets = $("#compare").checked ? ["A", "B"] : ["A"];
  let requests;
  try {
    requests = sets.map(buildRequest);
  } catch (e) {
    status(e.message);
    return;
  }
  for (const set of ["A", "B"]) {
    $(`.run[data-set=${set}]`).hidden = !sets.includes(set);
    if (!sets.includes(set)) runs[set] = null;
  }
  runAll(requests);
}

async function loadModels() {
  const select = $("#model");
  try {
    const { models } = await (await fetch("/api/tags")).json();
    for (const m of models) select.append(el("option", { value: m.name, text: m.name }));
    if (models.length === 0) status("No models: create or pull one first.");
  } catch (e) {
    status(`could not list models: ${e.message}`);
  }
}

function setup() {
  for (const fieldset of document.querySelectorAll(".opts")) {
    fieldset.append($("#option-fields").content.cloneNode(true));
    const format = fieldset.querySelector("[name=format]");
    format.addEventListener("change", () => {
      fieldset.querySelector(".schema").hidden = format.value !== "schema";
    });
  }
  $(".opts[data-set=B] [name=temperature]").value = "1.5";
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      const chat = $("input[name=mode]:checked").value === "chat";
      $("#prompt-box").hidden = chat;
      $("#chat-box").hidden = !chat;
    });
  }
  $("#compare").addEventListener("change", (e) => {
    $(".opts[data-set=B]").hidden = !e.target.checked;
  });
  $("#generate").addEventListener("click", generate);
  $("#rerun").addEventListener("click", () => runAll(lastRequests));
  for (const strip of document.querySelectorAll(".tokens")) {
    strip.addEventListener("keydown", onStripKey);
  }
  loadModels();
}

setup();
