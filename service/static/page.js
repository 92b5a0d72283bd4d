// The page's behaviour (an ES module, served as-is: no build step): forms from /openapi.json, answers from the REST API.
const $ = (id) => document.getElementById(id);
// One escaping rule for every piece of HTML the page builds: html`...` escapes each value it interpolates,
// unless that value is itself html (a fragment built the same way) or an array of such fragments, and only
// render() and append() put HTML into the document, and only html.
const escapeHtml = (value) => String(value).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
class Html { constructor(text) { this.text = text; } }
const piece = (value) => value instanceof Html ? value.text : Array.isArray(value) ? value.map(piece).join("") : escapeHtml(value);
const html = (strings, ...values) => new Html(strings.reduce((out, part, i) => out + part + (i < values.length ? piece(values[i]) : ""), ""));
const joined = (items, separator) => new Html(items.map(piece).join(escapeHtml(separator)));
function checked(fragment) {
  if (!(fragment instanceof Html)) throw new TypeError("only html`...` fragments go into the page");
  return fragment.text;
}
function render(element, fragment) { element.innerHTML = checked(fragment); }
function append(element, fragment) { element.insertAdjacentHTML("beforeend", checked(fragment)); }
const KEY_STORE = "influence-api-key";
const state = {model: null, schema: null, view: "saliency", saliency: "simple_gradient", attack: "hotflip", job: null};

class ApiError extends Error {
  constructor(status, code, message, retryAfter) { super(message); Object.assign(this, {status, code, retryAfter}); }
}

async function api(path, body, method) {
  const headers = {"Content-Type": "application/json"};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, {method: method || (body ? "POST" : "GET"), headers,
    body: body ? JSON.stringify(body) : undefined});
  let payload = null;
  try { payload = await response.json(); } catch (_) { payload = {code: "error", message: response.statusText}; }
  if (!response.ok) {
    throw new ApiError(response.status, payload.code || "error", payload.message || JSON.stringify(payload),
      response.headers.get("Retry-After"));
  }
  return payload;
}

function say(text) { $("status").textContent = text || ""; }
function fail(error) {
  say("");
  let text = error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : String(error);
  if (error.retryAfter) text += ` (retry after ${error.retryAfter} s)`;
  $("error").textContent = text;
}
function clearError() { $("error").textContent = ""; }

function input() {
  const body = {text: $("text").value.trim()};
  const pair = $("pair").value.trim();
  if (state.model?.takes_pairs && pair) body.text_pair = pair;
  if ($("label").value !== "") body.label = Number($("label").value);
  return body;
}

// ------------------------------------------------------------------ tabs and deep links
function tabs(list, onSelect) {
  const buttons = [...list.querySelectorAll("[role=tab]")];
  buttons.forEach((button, position) => {
    button.addEventListener("click", () => onSelect(button));
    button.addEventListener("keydown", (event) => {
      const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
      if (!step) return;
      const next = buttons[(position + step + buttons.length) % buttons.length];
      next.focus(); onSelect(next);
    });
  });
}
function select(list, chosen) {
  for (const button of list.querySelectorAll("[role=tab]")) {
    const on = button === chosen;
    button.setAttribute("aria-selected", String(on));
    button.tabIndex = on ? 0 : -1;
  }
}
function showView(view) {
  state.view = view;
  select($("views"), $(`tab-${view}`));
  for (const panel of document.querySelectorAll("[role=tabpanel]")) panel.classList.toggle("hidden", panel.id !== `view-${view}`);
  updateLink();
}
function link() {
  const params = new URLSearchParams({text: $("text").value.trim(), view: state.view});
  if ($("pair").value.trim()) params.set("pair", $("pair").value.trim());
  if (state.view === "saliency") params.set("method", state.saliency);
  if (state.view === "attack") params.set("method", state.attack);
  return `${location.pathname}?${params}`;
}
function updateLink() { history.replaceState(null, "", link()); }

// ------------------------------------------------------------------ parameter forms from the OpenAPI schema
// The server's bound of each request parameter (one map, service.limits.PARAMETER_LIMITS).
const parameterLimits = () => (state.model?.parameter_limits) || {};
// The influence and map forms: each field's default and bound from the server, none written here.
function fillFixedForms() {
  const schemas = state.schema.components.schemas, limits = parameterLimits();
  const influence = schemas.InfluenceRequest.properties, lissa = referenced(influence.lissa).properties;
  const fields = [["inf-k", "k", influence.k], ["inf-top", "top", influence.top], ["inf-rerank", "rerank", influence.rerank],
    ["inf-depth", "recursion_depth", lissa.recursion_depth], ["inf-reps", "num_repetitions", lissa.num_repetitions],
    ["inf-damping", "damping", lissa.damping], ["map-top", null, schemas.EvaluateRequest.properties.top]];  // a job's top: the schema's bound
  for (const [id, name, spec] of fields) {
    const type = (spec.anyOf ? spec.anyOf.find((s) => s.type !== "null") : spec) || {};
    const max = name !== null && limits[name] !== undefined ? limits[name] : type.maximum;
    if (max !== undefined) $(id).max = max;
    if (spec.default !== null && spec.default !== undefined) $(id).value = max !== undefined ? Math.min(spec.default, max) : spec.default;
  }
}
// The schema a property points to ({"$ref": "#/components/schemas/Name"}, possibly under allOf).
function referenced(spec) {
  const ref = spec.$ref || spec.allOf?.[0]?.$ref;
  return state.schema.components.schemas[ref.split("/").pop()];
}
// A method's parameters: the schema its request's `parameters` property points to.
function parameterSchema(method) {
  const request = Object.values(state.schema.components.schemas).find((s) => s.properties?.method?.const === method);
  return request ? referenced(request.properties.parameters) : {properties: {}};
}
function parameterForm(form, method) {
  const schema = parameterSchema(method);
  const limits = parameterLimits();
  const fields = Object.entries(schema.properties).map(([name, spec]) => {
    const type = (spec.anyOf ? spec.anyOf.find((s) => s.type !== "null") : spec) || {};
    const max = limits[name] !== undefined ? limits[name] : type.maximum;
    const min = type.minimum !== undefined ? type.minimum : type.exclusiveMinimum;
    const step = type.type === "integer" ? "1" : "any";
    const value = spec.default === null || spec.default === undefined ? "" : spec.default;
    const label = name.replace(/_/g, " ");
    if (type.enum) {  // a choice (integrated gradients' baseline): a select of its values
      const options = type.enum.map((choice) => choice === value ? html`<option selected>${choice}</option>` : html`<option>${choice}</option>`);
      return html`<label title="${spec.description || ""}">${label}<select name="${name}">${options}</select></label>`;
    }
    const bounds = [min !== undefined ? html` min="${min}"` : html``, max !== undefined ? html` max="${max}"` : html``,
      value === "" ? html` placeholder="default"` : html``];
    return html`<label title="${spec.description || ""}">${label}<input name="${name}" type="number" step="${step}" value="${value}"${bounds}></label>`;
  });
  render(form, html`${fields}<button class="primary" type="submit">Run ${method.replace(/_/g, " ")}</button>`);
}
function parameters(form) {
  const out = {};
  for (const field of form.querySelectorAll("input[name]")) if (field.value !== "") out[field.name] = Number(field.value);
  for (const field of form.querySelectorAll("select[name]")) out[field.name] = field.value;
  return out;
}

// ------------------------------------------------------------------ prediction
function labelName(label) {  // the model's id2label name, as /v1/models lists them (raw text: html`` escapes it)
  const names = state.model?.labels;
  return names?.[label] || `label ${label}`;
}
function probabilityBars(container, prediction) {
  render(container, html`${prediction.probabilities.map((p, label) => {
    const percent = `${(100 * p).toFixed(1)}%`, predicted = label === prediction.label ? " (predicted)" : "";
    return html`<span>${labelName(label)}${predicted}</span><div class="bar" role="img" aria-label="${labelName(label)}: ${percent}"><span style="width:${percent}"></span></div><span class="num">${p.toFixed(3)}</span>`;
  })}`);
}
async function predict() {
  const body = input();
  const result = await api("/v1/predict", {inputs: [body]});
  const prediction = result.predictions[0];
  $("prediction").classList.remove("hidden");
  probabilityBars($("prediction-bars"), prediction);
  return prediction;
}

// ------------------------------------------------------------------ saliency
function colour(score, scale) {
  const alpha = scale > 0 ? Math.min(1, Math.abs(score) / scale) : 0;
  return `rgba(${score >= 0 ? "var(--pos)" : "var(--neg)"}, ${(0.12 + 0.78 * alpha).toFixed(3)})`;
}
function drawTokens(result) {
  const scale = Math.max(...result.raw_scores.map(Math.abs));
  const pieces = result.tokens.map((token, i) => {
    const special = result.word_ids[i] === null;
    const raw = result.raw_scores[i];
    const tip = `${token}: ${raw.toPrecision(4)} (share ${result.scores[i].toFixed(3)}); ${raw >= 0 ? "supports" : "opposes"} ${result.label_explained_name}`;
    // the text the piece covers (no ##, Ġ or ▁ markers); a word's later pieces sit against its first
    const shown = (result.pieces?.[i]) || token;
    const continues = !special && i > 0 && result.word_ids[i - 1] === result.word_ids[i];
    const classes = `tok${special ? " special" : ""}${continues ? " cont" : ""}`;
    const background = special ? "transparent" : colour(raw, scale);
    return html`<span class="${classes}" tabindex="0" data-score="${raw}" data-token="${token}" title="${tip}" aria-label="${tip}" style="background:${background}">${shown}</span>`;
  });
  return html`<div class="tokens" aria-label="Saliency per word-piece">${pieces}</div>`;
}
function saliencyHtml(result) {
  const extra = result.extra || {};
  const baseline = extra.baseline ? `; ${extra.baseline} baseline` : "";
  const gap = extra.completeness_gap === undefined ? html`` : html`<p>Integrated gradients completeness gap: <strong>${extra.completeness_gap.toPrecision(3)}</strong> (sum of attributions ${Number(extra.sum_of_attributions).toPrecision(4)} vs f(input) - f(baseline) ${Number(extra.f_input_minus_f_baseline).toPrecision(4)}${baseline})</p>`;
  const warnings = (result.warnings || []).map((w) => html`<p class="notice" role="alert">${w}</p>`);
  return html`<p class="legend"><i style="background:rgba(var(--pos),.85)"></i> supports ${labelName(result.label_explained)} <i style="background:rgba(var(--neg),.85)"></i> opposes it. Hover or focus a piece for its score.</p>${warnings}${drawTokens(result)}${gap}`;
}
async function runSaliency() {
  say(`${state.saliency.replace(/_/g, " ")}...`);
  const result = await api("/v1/saliency", {...input(), method: state.saliency, parameters: parameters($("saliency-form"))});
  render($("saliency-out"), saliencyHtml(result));
  say("");
}

// ------------------------------------------------------------------ attacks
function editedTokens(tokens, edits, side) {
  const marks = new Map(edits.map((e) => [e.position, e]));
  return joined(tokens.map((token, i) => {
    const edit = marks.get(i);
    if (edit && side === "before" && edit.before !== null) return html`<del class="edit" title="${edit.before} -> ${edit.after ?? "removed"}">${token}</del>`;
    if (edit && side === "after" && edit.after !== null) return html`<ins class="edit" title="${edit.before ?? "inserted"} -> ${edit.after}">${token}</ins>`;
    return html`${token}`;
  }), " ");
}
async function runAttack() {
  say(`${state.attack.replace(/_/g, " ")}...`);
  const result = await api("/v1/attack", {...input(), method: state.attack, parameters: parameters($("attack-form"))});
  const final = result.final[result.final.length - 1] || result.original;
  const after = result.outputs_after[result.outputs_after.length - 1] || result.outputs_before;
  const before = result.outputs_before;
  const removed = result.edits.filter((e) => e.after === null);
  const rows = Object.entries(result.extra || {}).map(([k, v]) => html`<tr><td>${k}</td><td>${v}</td></tr>`);
  const extra = rows.length ? html`<table>${rows}</table>` : html``;
  const original = editedTokens(result.original, state.attack === "input_reduction" ? [] : result.edits, "before");
  const outcome = `${result.success ? "The label changed." : "The label did not change."} ${result.edits.length} edit(s)${removed.length ? `, ${removed.length} piece(s) removed` : ""}.`;
  render($("attack-out"), html`<table><tr><th></th><th>sentence</th><th>label (p)</th></tr><tr><td>original</td><td class="attack-original">${original}</td><td class="num">${labelName(before.label)} (${before.probabilities[before.label].toFixed(3)})</td></tr><tr><td>final</td><td class="attack-final">${editedTokens(final, result.edits, "after")}</td><td class="num">${labelName(after.label)} (${after.probabilities[after.label].toFixed(3)})</td></tr></table><p>${outcome}</p>${extra}`);
  say("");
}

// ------------------------------------------------------------------ jobs (progress + cancel)
async function runJob(body, progressBar, cancelButton) {
  const job = await api("/v1/jobs", body);
  state.job = job.id;
  progressBar.classList.remove("hidden");
  if (cancelButton) cancelButton.classList.remove("hidden");
  try {
    for (;;) {
      const status = await api(`/v1/jobs/${job.id}`);
      progressBar.value = status.progress;
      progressBar.title = status.state === "queued" && status.queue_position !== null
        ? `queued: ${status.queue_position} ahead, starts in about ${Math.ceil(status.estimated_start_s)} s`
        : status.state;
      if (status.state === "succeeded") return status.result;
      if (status.state === "failed" || status.state === "cancelled") {
        const error = status.error || {code: status.state, message: `the job was ${status.state}`};
        throw new ApiError(422, error.code, error.message);
      }
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
  } finally {
    state.job = null;
    progressBar.classList.add("hidden");
    if (cancelButton) cancelButton.classList.add("hidden");
  }
}

// ------------------------------------------------------------------ influence
function sparkline(values) {
  if (!values || values.length < 2) return html``;
  const max = Math.max(...values), min = Math.min(...values), w = 120, h = 24;
  const points = values.map((v, i) => `${(i * w / (values.length - 1)).toFixed(1)},${(h - (max > min ? (v - min) / (max - min) : 0.5) * h).toFixed(1)}`).join(" ");
  return html`<svg width="${w}" height="${h}" role="img" aria-label="LiSSA norm trace"><polyline fill="none" stroke="#1d4ed8" stroke-width="1.5" points="${points}"/></svg>`;
}
function exampleList(examples, side) {
  if (!examples.length) return html`<p class="legend">none of this sign</p>`;
  const scale = Math.max(...examples.map((e) => Math.abs(e.score)));
  const rows = examples.map((e, i) => {
    const width = `${(100 * Math.abs(e.score) / scale).toFixed(1)}%`, pair = e.text_pair ? ` / ${e.text_pair}` : "";
    return html`<tr><td>${labelName(e.label)}</td><td class="num">${e.score.toPrecision(3)}<div class="bar ${side === "helpful" ? "neg" : "posi"}"><span style="width:${width}"></span></div></td><td><button type="button" class="example" data-side="${side}" data-index="${i}">${e.text}${pair}</button><div class="example-saliency"></div></td></tr>`;
  });
  return html`<table><tr><th>label</th><th>score</th><th>training example (click for its saliency)</th></tr>${rows}</table>`;
}
// The method the server will run ("default": the gradient index when one is loaded, else fastif): the
// server refuses a knob its method does not read, so the form sends only those that method reads.
const resolvedMethod = () => $("inf-method").value || (state.model?.gradient_index_manifest ? "gradient" : "fastif");
async function runInfluence() {
  const method = $("inf-method").value, resolved = resolvedMethod();
  const rerank = resolved === "gradient" && $("inf-rerank").value ? Number($("inf-rerank").value) : null;
  const body = {inputs: [input()], top: Number($("inf-top").value)};
  if (resolved !== "gradient" || rerank) {  // an s_test is solved
    body.lissa = {recursion_depth: Number($("inf-depth").value), num_repetitions: Number($("inf-reps").value),
                  damping: Number($("inf-damping").value),
                  scale: $("inf-scale").value ? Number($("inf-scale").value) : null};
    if ($("inf-solver").value) body.solver = $("inf-solver").value;
  }
  if (method) body.method = method;
  if (resolved === "fastif") body.k = Number($("inf-k").value);
  if (rerank) body.rerank = rerank;
  if ($("inf-view").value && !$("inf-view").disabled) body.normalize = true;
  say("explaining (a job: progress below, cancel any time)...");
  const result = (await runJob({kind: "influence", influence: body}, $("inf-progress"), $("inf-cancel"))).results[0];
  state.influence = result;
  const q = result.quality;
  const timings = Object.entries(q.timings_s).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
  const lissa = q.lissa ? html`<span>spread ${q.lissa.relative_spread.toFixed(3)}</span><span>norm trace ${sparkline(q.lissa.norm_trace[0])}</span>` : html``;
  const reranked = (q.rerank ? ` (rerank ${q.rerank})` : "") + (q.normalize ? " (normalised: scores are cosines)" : "");
  const cg = q.cg ? html`<span>CG residual ${q.cg.relative_residual.toExponential(1)}</span>` : html``;
  render($("influence-quality"), html`<span>method <strong>${q.method}</strong>${reranked}</span><span>${q.candidates.toLocaleString()} examples scored</span><span>explaining ${labelName(result.label_used)}</span><span>${timings}</span>${lissa}${cg}`);
  render($("helpful"), exampleList(result.helpful, "helpful"));
  render($("harmful"), exampleList(result.harmful, "harmful"));
  say("");
}
async function exampleSaliency(button) {
  const example = state.influence[button.dataset.side][Number(button.dataset.index)];
  const target = button.nextElementSibling;
  target.textContent = "...";
  const body = {text: example.text, label: example.label, method: "simple_gradient", parameters: {}};
  if (example.text_pair) body.text_pair = example.text_pair;
  render(target, drawTokens(await api("/v1/saliency", body)));
}

// ------------------------------------------------------------------ influence map
function drawMap(report) {
  const tests = report.nodes.filter((n) => n.kind === "test");
  const trains = report.nodes.filter((n) => n.kind === "train").slice(0, 30);
  const height = Math.max(tests.length, trains.length) * 26 + 20, width = 760;
  const y = (i, count) => 20 + i * (height - 40) / Math.max(1, count - 1);
  const place = new Map();
  for (const [i, n] of tests.entries()) place.set(n.id, [170, tests.length === 1 ? height / 2 : y(i, tests.length)]);
  for (const [i, n] of trains.entries()) place.set(n.id, [width - 300, trains.length === 1 ? height / 2 : y(i, trains.length)]);
  const short = (t, n) => t.length > n ? `${t.slice(0, n - 1)}…` : t;
  const lines = report.edges.filter((e) => place.has(e.source) && place.has(e.target)).map((e) => {
    const [x1, y1] = place.get(e.source), [x2, y2] = place.get(e.target);
    const stroke = `rgb(${e.side === "helpful" ? "var(--pos)" : "var(--neg)"})`;
    return html`<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="${stroke}" stroke-opacity=".55"><title>${e.side} ${e.score.toPrecision(3)}</title></line>`;
  });
  const nodes = [...tests, ...trains].map((n) => {
    const [x, yy] = place.get(n.id);
    const text = n.kind === "test" ? html`<text x="${x - 8}" y="${yy + 4}" text-anchor="end">${short(n.text, 26)}</text>` :
      html`<text x="${x + 8}" y="${yy + 4}">[${n.degree}] ${short(n.text, 40)}</text>`;
    return html`<circle cx="${x}" cy="${yy}" r="${4 + Math.min(6, n.degree)}" fill="${n.kind === "test" ? "#1d2127" : "#e9c46a"}"><title>${n.text}</title></circle>${text}`;
  });
  return html`<p class="legend">Test points (left) to their top training examples (right; [n] = test points reached). Blue: helpful, red: harmful.</p><svg viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="Influence map">${lines}${nodes}</svg>`;
}
async function runMap() {
  const lines = $("map-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const inputs = (lines.length ? lines : [$("text").value.trim()]).map((text) => ({text}));
  say("drawing the influence map (a job)...");
  const report = await runJob({kind: "evaluate", evaluate: {task: "influence_map", inputs, top: Number($("map-top").value)}}, $("map-progress"));
  render($("map-out"), drawMap(report));
  say("");
}

// A server started without the training data answers prediction, saliency and attacks only: the influence
// views say why (the server's own words, naming the setting) instead of failing on submit.
function explainMissingData(message) {
  $("model-name").title = message;
  for (const note of document.querySelectorAll("[data-needs-training-data]")) {
    note.textContent = `${message.charAt(0).toUpperCase() + message.slice(1)}.`;
    note.classList.remove("hidden");
  }
  for (const form of [$("influence-form"), $("map-form")]) {
    for (const control of form.querySelectorAll("input, select, textarea, button")) control.disabled = true;
  }
  for (const tab of [$("tab-influence"), $("tab-map")]) tab.title = "needs the training data";
}

// ------------------------------------------------------------------ wiring
async function guarded(work) {
  clearError();
  try { await work(); } catch (error) { fail(error); }
}
async function runView() {
  await predict();
  if (state.view === "saliency") await runSaliency();
  else if (state.view === "attack") await runAttack();
  else if (state.view === "influence") await runInfluence();
  else await runMap();
  updateLink();
}

async function start() {
  say("loading the model's settings...");
  $("key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("key").addEventListener("change", () => {
    if ($("key").value) sessionStorage.setItem(KEY_STORE, $("key").value); else sessionStorage.removeItem(KEY_STORE);
  });
  const params = new URLSearchParams(location.search);
  if (params.get("text")) $("text").value = params.get("text");
  if (params.get("pair")) $("pair").value = params.get("pair");
  state.schema = await fetch("/openapi.json").then((r) => r.json());
  try {
    state.model = (await api("/v1/models")).models[0];
  } catch (error) { fail(error); }
  const model = state.model || {num_labels: 2, takes_pairs: false, limits: {}};
  $("model-name").textContent = !state.model ? "the served model" : state.model.influence_unavailable
    ? `${state.model.model_dir} (no training data: prediction, saliency and attacks only)`
    : `${state.model.model_dir} (${state.model.num_training_examples.toLocaleString()} training examples)`;
  $("pair-label").classList.toggle("hidden", !model.takes_pairs);
  for (let label = 0; label < model.num_labels; label++) append($("label"), html`<option value="${label}">${labelName(label)}</option>`);
  const methods = [["", "default"], ...(state.model?.gradient_index_manifest ? [["gradient", "gradient index"]] : []),
    ...(state.model?.index_manifest ? [["fastif", "fastif (kNN + LiSSA)"]] : []),
    ...(state.model?.full_scan_allowed ? [["full", "full scan"]] : [])];
  render($("inf-method"), html`${methods.map(([v, t]) => html`<option value="${v}">${t}</option>`)}`);
  fillFixedForms();
  // k is fastif's alone, rerank the gradient index's, and the normalised view the index's without a
  // rerank: disabled (never blocking the form) otherwise
  const kApplies = () => {
    const gradient = resolvedMethod() === "gradient";
    $("inf-k").disabled = resolvedMethod() !== "fastif";
    $("inf-rerank").disabled = !gradient;
    $("inf-view").disabled = !gradient || Boolean($("inf-rerank").value);
  };
  $("inf-method").addEventListener("change", kApplies);
  $("inf-rerank").addEventListener("input", kApplies);
  kApplies();
  if (state.model?.influence_unavailable) explainMissingData(state.model.influence_unavailable);

  const saliencyMethods = Object.keys(state.schema.components.schemas).filter((n) => n.endsWith("Request"))
    .map((n) => state.schema.components.schemas[n]).filter((s) => s.properties?.method?.const);
  const kinds = {saliency: [], attack: []};
  for (const schema of saliencyMethods) {
    const method = schema.properties.method.const;
    (["hotflip", "input_reduction", "triggers"].includes(method) ? kinds.attack : kinds.saliency).push(method);
  }
  for (const kind of ["saliency", "attack"]) {
    const list = $(`${kind}-methods`);
    render(list, html`${kinds[kind].map((m) => html`<button role="tab" type="button" data-method="${m}" aria-controls="${kind}-out">${m.replace(/_/g, " ")}</button>`)}`);
    tabs(list, (button) => {
      state[kind] = button.dataset.method; select(list, button); parameterForm($(`${kind}-form`), state[kind]); updateLink();
    });
    const initial = params.get("view") === kind && params.get("method") && kinds[kind].includes(params.get("method")) ? params.get("method") : state[kind];
    state[kind] = initial;
    select(list, list.querySelector(`[data-method="${initial}"]`));
    parameterForm($(`${kind}-form`), initial);
  }
  tabs($("views"), (button) => showView(button.dataset.view));
  showView(["saliency", "attack", "influence", "map"].includes(params.get("view")) ? params.get("view") : "saliency");

  document.body.dataset.ready = "true";
  say("");
  if (params.get("text")) guarded(runView);
}

// Forms are wired before anything loads: a click during start-up runs when the page is ready, never a
// native form submission (which would reload the page).
const ready = start().catch(fail);
const when = (work) => (event) => { event.preventDefault(); guarded(async () => { await ready; await work(); }); };
$("input-form").addEventListener("submit", when(runView));
$("saliency-form").addEventListener("submit", when(async () => { await predict(); await runSaliency(); }));
$("attack-form").addEventListener("submit", when(async () => { await predict(); await runAttack(); }));
$("influence-form").addEventListener("submit", when(async () => { await predict(); await runInfluence(); }));
$("map-form").addEventListener("submit", when(runMap));
$("inf-cancel").addEventListener("click", () => guarded(async () => { if (state.job) await api(`/v1/jobs/${state.job}`, null, "DELETE"); }));
document.addEventListener("click", (e) => { if (e.target.classList.contains("example")) guarded(() => exampleSaliency(e.target)); });
$("share").addEventListener("click", () => { updateLink(); if (navigator.clipboard) navigator.clipboard.writeText(location.href).catch(() => {}); say("link copied to the address bar"); });
