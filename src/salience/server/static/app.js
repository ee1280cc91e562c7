// salience viewer: upload an image, choose methods, see the maps side by side.
// The server sends each map normalized to [0, 1] on the photo (float32, NaN outside the model's
// crop); colormap, percentile clip and opacity are applied here, on canvases, without recomputing.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 300;
const AUTO_CMAP = "auto";

const state = {
  file: null,
  models: [],
  colormaps: {},
  diverging: new Set(), // the colormaps a magnitude uses the upper half of
  methods: [],
  options: [], // the method options with a form field, each once (from /api/methods)
  job: null, // id of the running job
  polling: null,
  photo: null, // ImageData of the photo the maps are drawn on
  cards: new Map(), // map index -> {canvas, values, sorted}
};

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : await response.arrayBuffer();
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function say(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", isError);
}

// -- menus -------------------------------------------------------------------------------------
async function loadMenus() {
  const [models, methods, colormaps, diverging] = await Promise.all([
    api("/api/models"), api("/api/methods"), api("/api/colormaps"), api("/api/colormaps/diverging"),
  ]);
  state.diverging = new Set(diverging);
  state.models = models;
  for (const model of models) {
    const option = new Option(`${model.name} (${model.classes} classes)`, model.name, model.default, model.default);
    $("model").add(option);
  }
  state.colormaps = colormaps;
  $("cmap").add(new Option("auto (by sign)", AUTO_CMAP)); // each map's own: diverging if signed
  for (const name of Object.keys(colormaps)) $("cmap").add(new Option(name, name));
  state.methods = methods;
  renderOptions();
  await modelChanged();
}

// One control per method option: the schema (type, default, bounds, help) comes from the server.
function renderOptions() {
  const seen = new Map();
  for (const method of state.methods) {
    for (const option of method.options) {
      if (!seen.has(option.field)) seen.set(option.field, { ...option, methods: [] });
      seen.get(option.field).methods.push(method.name);
    }
  }
  state.options = [...seen.values()];
  const box = $("options");
  const score = $("score").closest("label");
  for (const option of state.options) {
    // a count that may be "auto" holds its own checkbox label, so it is not a label itself
    const label = document.createElement(option.auto ? "div" : "label");
    label.className = "option";
    label.title = `${option.help} (${option.methods.join(", ")})`;
    label.append(`${option.field.replace(/_/g, " ")} `);
    label.append(option.auto ? autoControl(option) : optionControl(option));
    box.insertBefore(label, score);
  }
}

function optionControl(option) {
  if (option.menu || option.choices.length) {
    const select = document.createElement("select");
    select.id = option.field;
    const values = option.choices.length ? option.choices : [option.default];
    for (const value of values) select.add(new Option(value, value, false, value === option.default));
    return select;
  }
  const input = document.createElement("input");
  input.id = option.field;
  if (option.type === "bool") {
    input.type = "checkbox"; // a switch to the opposite of the default, as the CLI flag
    return input;
  }
  input.type = option.type === "int" || option.type === "float" ? "number" : "text";
  input.value = option.default ?? "";
  if (input.type === "number") {
    input.step = option.type === "int" ? "1" : "any";
    if (option.low != null) input.min = option.low;
    const high = option.request_max ?? option.high;
    if (high != null) input.max = high;
  }
  return input;
}

// A count, or "auto" (grown until the map converges, as --samples auto): a box beside the number.
function autoControl(option) {
  const number = optionControl({ ...option, auto: false });
  const box = document.createElement("input");
  box.type = "checkbox";
  box.id = `${option.field}-auto`;
  box.addEventListener("change", () => { number.disabled = box.checked; });
  const choice = document.createElement("label");
  choice.className = "auto";
  choice.title = `grow ${option.field} until the map converges`;
  choice.append(box, " auto");
  const both = document.createElement("span");
  both.className = "with-auto";
  both.append(number, choice);
  return both;
}

function optionValue(option) {
  if (option.auto && $(`${option.field}-auto`).checked) return "auto";
  const control = $(option.field);
  return control.type === "checkbox" ? String(control.checked) : control.value;
}

function renderMethods() {
  const box = $("methods");
  box.textContent = "";
  const model = selectedModel();
  const families = [
    ["gradients", (m) => !m.cam && m.needs_gradients],
    ["class activation maps", (m) => m.cam],
    ["black-box (perturbation)", (m) => !m.needs_gradients],
  ];
  for (const [title, belongs] of families) {
    const members = state.methods.filter(belongs);
    if (!members.length) continue;
    const heading = document.createElement("div");
    heading.className = "family";
    heading.textContent = title;
    box.append(heading);
    for (const method of members) {
      const label = document.createElement("label");
      label.title = `${method.description}${method.paper ? " [" + method.paper + "]" : ""}`;
      const box_ = document.createElement("input");
      box_.type = "checkbox";
      box_.value = method.name;
      box_.name = "method";
      box_.checked = method.name === "gradcam";
      box_.disabled = model && !model.differentiable && method.needs_gradients;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = method.name;
      label.title = `${method.name}: ${label.title}`; // the whole name, also when cut short
      label.append(box_, name);
      if (method.slow) {
        const tag = document.createElement("span");
        tag.className = "slow";
        tag.textContent = "slow";
        label.append(tag);
      }
      box.append(label);
    }
  }
}

function selectedModel() {
  return (state.models || []).find((m) => m.name === $("model").value);
}

async function modelChanged() {
  const name = $("model").value;
  renderMethods();
  const [classes, layers] = await Promise.all([
    api(`/api/models/${encodeURIComponent(name)}/classes`),
    api(`/api/models/${encodeURIComponent(name)}/layers`),
  ]);
  const list = $("class-names");
  list.textContent = "";
  for (const item of classes) list.append(new Option(item));
  for (const option of state.options.filter((o) => o.menu === "layers")) {
    const layer = $(option.field);
    layer.textContent = "";
    layer.add(new Option(layers.default ? `auto (${layers.default})` : "auto", "auto"));
    for (const info of layers.layers.filter((l) => l.spatial)) {
      layer.add(new Option(`${info.name} ${info.shape ? info.shape.join("×") : ""}`, info.name));
    }
  }
  if (state.file) predict();
}

// -- image -------------------------------------------------------------------------------------
function useFile(file) {
  if (!file) return;
  state.file = file;
  const thumb = $("thumb");
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  thumb.hidden = false;
  $("explain").disabled = false;
  predict();
}

async function predict() {
  const form = new FormData();
  form.append("image", state.file);
  form.append("model", $("model").value);
  const list = $("predictions");
  list.innerHTML = '<li class="muted">predicting…</li>';
  try {
    const result = await api("/api/predict", { method: "POST", body: form });
    list.textContent = "";
    for (const p of result.predictions) {
      const item = document.createElement("li");
      item.title = "explain this class";
      item.dataset.index = p.index;
      item.textContent = p.text;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${p.probability == null ? 0 : Math.max(1, 100 * p.probability)}%`;
      item.append(bar);
      item.addEventListener("click", () => {
        $("class-name").value = p.name;
        document.querySelector('input[name="target"][value="class"]').checked = true;
      });
      list.append(item);
    }
    say("");
  } catch (error) {
    list.innerHTML = "";
    say(error.message, true);
  }
}

function setUpDrop() {
  const zone = $("drop");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    useFile(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (event) => useFile(event.target.files[0]));
}

// -- explaining --------------------------------------------------------------------------------
function targetValue() {
  const kind = document.querySelector('input[name="target"]:checked').value;
  if (kind === "topk") return `top-${$("topk").value}`;
  if (kind === "class") return $("class-name").value.trim() || "predicted";
  return "predicted";
}

async function explain() {
  const methods = [...document.querySelectorAll('input[name="method"]:checked')].map((b) => b.value);
  if (!methods.length) { say("choose at least one method", true); return; }
  stopPolling();
  const form = new FormData();
  form.append("image", state.file);
  form.append("model", $("model").value);
  form.append("methods", methods.join(","));
  form.append("target", targetValue());
  for (const option of state.options) form.append(option.field, optionValue(option));
  form.append("score", $("score").value);
  form.append("cmap", AUTO_CMAP); // the server chooses each map's colours by its sign
  $("grid").textContent = "";
  $("agreement").hidden = true;
  state.cards.clear();
  state.photo = null;
  say("");
  try {
    const job = await api("/api/jobs", { method: "POST", body: form });
    state.job = job.id;
    $("explain").disabled = true;
    $("cancel").hidden = false;
    showPlaceholders(job);
    await update(job);
    if (!finished(job)) state.polling = setInterval(poll, POLL_MS);
  } catch (error) {
    say(error.message, true);
  }
}

function finished(job) {
  return ["done", "failed", "stopped"].includes(job.status);
}

async function poll() {
  if (!state.job || state.busy) return;
  state.busy = true;
  try {
    await update(await api(`/api/jobs/${state.job}`));
  } catch (error) {
    say(error.message, true);
    stopPolling();
  } finally {
    state.busy = false;
  }
}

function stopPolling() {
  if (state.polling) clearInterval(state.polling);
  state.polling = null;
  $("explain").disabled = !state.file;
  $("cancel").hidden = true;
}

function showPlaceholders(job) {
  for (const method of job.methods) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.method = method.name;
    card.dataset.state = method.status;
    card.innerHTML = `<h3></h3><div class="sub"></div><div class="waiting"><div class="spinner"></div><span class="status"></span></div>`;
    card.querySelector("h3").textContent = method.name;
    $("grid").append(card);
  }
}

async function update(job) {
  const progress = $("progress");
  const done = job.methods.filter((m) => m.status === "done").length;
  progress.hidden = false;
  const bar = $("progress-bar");
  if (finished(job)) { bar.max = 1; bar.value = 1; } else { bar.removeAttribute("value"); }
  $("progress-text").textContent =
    `${done} of ${job.methods.length} methods done · ${job.passes} model passes · ${job.elapsed.toFixed(1)} s` +
    (finished(job) ? "" : ` (limit ${job.time_limit} s)`);
  for (const method of job.methods) {
    const card = [...$("grid").querySelectorAll(".card")].find((c) => c.dataset.method === method.name && !c.dataset.index);
    if (!card || method.status === "done") continue;
    card.dataset.state = method.status;
    const passes = method.total_passes == null
      ? `${method.passes} passes`
      : `${method.passes} of ${method.total_passes} passes`;
    const text = method.status === "running"
      ? `running · ${passes} · ${(method.seconds || 0).toFixed(1)} s`
      : method.error || method.status;
    card.querySelector(".status").textContent = text;
  }
  if (job.image && !state.photo) state.photo = await loadPhoto(job.image);
  for (let index = 0; index < job.maps.length; index += 1) {
    if (!state.cards.has(index)) await showMap(index, job.maps[index]);
  }
  if (finished(job)) {
    stopPolling();
    if (job.error) say(job.error.error, true);
    else if (job.methods.length > 1) showAgreement(job.id);
  }
}

async function loadPhoto(url) {
  const blob = await (await fetch(url)).blob();
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, bitmap.width, bitmap.height);
}

async function showMap(index, meta) {
  state.cards.set(index, null); // claimed: a later poll does not load it twice
  const values = shownValues(new Float32Array(await api(meta.files["display.f32"])), meta);
  const sorted = values.filter((v) => !Number.isNaN(v)).sort();
  const [height, width] = meta.display_shape;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.className = "map-canvas";
  const entry = { canvas, values, sorted, meta };
  state.cards.set(index, entry);

  const sameMethod = [...$("grid").querySelectorAll(".card")].filter((c) => c.dataset.method === meta.method);
  const placeholder = sameMethod.find((c) => !c.dataset.index);
  const card = document.createElement("div");
  card.className = "card";
  card.dataset.method = meta.method;
  card.dataset.index = String(index);
  card.dataset.state = "done";
  const title = document.createElement("h3");
  title.textContent = meta.method;
  title.title = meta.method;
  const sub = document.createElement("div");
  sub.className = "sub";
  const probability = meta.probability == null ? "" : ` ${(100 * meta.probability).toFixed(1)}%`;
  sub.textContent = `${meta.target_name ?? meta.target}${probability}`;
  const links = document.createElement("div");
  links.className = "links";
  const png = document.createElement("a");
  png.textContent = "download PNG";
  png.addEventListener("click", () => canvas.toBlob((blob) => save(blob, `${meta.method}-${meta.target}.png`)));
  const npy = document.createElement("a");
  npy.textContent = "raw map (.npy)";
  npy.href = meta.files["map.npy"];
  npy.download = `${meta.method}-${meta.target}.npy`;
  links.append(png, npy);
  sub.title = sub.textContent;
  entry.bar = colorbar(meta);
  card.append(title, sub, canvas, entry.bar, links);
  if (placeholder) placeholder.replaceWith(card);
  else if (sameMethod.length) sameMethod[sameMethod.length - 1].after(card);
  else $("grid").append(card);
  draw(entry);
}

function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// -- drawing -----------------------------------------------------------------------------------
function percentile(sorted, p) {
  if (!sorted.length) return 0;
  const position = (p / 100) * (sorted.length - 1);
  const low = Math.floor(position);
  const high = Math.min(sorted.length - 1, low + 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
}

// What the colours stand for, in the map's own units, by the server's sign mode (meta.scale):
// the signed map (its colorbar centred on 0), or its magnitude, positive or negative part.
function shownValues(display, meta) {
  const [first, last] = meta.display_range;
  const sign = meta.scale.sign;
  return display.map((d) => {
    const v = first + d * (last - first);
    if (sign === "absolute_value") return Math.abs(v);
    if (sign === "positive") return Number.isNaN(v) ? v : Math.max(v, 0);
    if (sign === "negative") return Number.isNaN(v) ? v : Math.max(-v, 0);
    return v;
  });
}

// The values at the two ends of a map's colorbar: -m..m for a signed map (m the clip-high
// percentile of |map|), the clip percentiles of the shown values otherwise.
function limits(entry) {
  const { sorted, meta } = entry;
  if (meta.scale.sign === "all") {
    if (!entry.magnitudes) entry.magnitudes = sorted.map(Math.abs).sort();
    const top = percentile(entry.magnitudes, Number($("clip-high").value)) || 1;
    return [-top, top];
  }
  const low = percentile(sorted, Number($("clip-low").value));
  const high = percentile(sorted, Number($("clip-high").value));
  return high > low ? [low, high] : [low, low + 1];
}

function cmapOf(meta) {
  const chosen = $("cmap").value;
  if (chosen !== AUTO_CMAP) return chosen;
  return state.colormaps[meta.scale.cmap] ? meta.scale.cmap : Object.keys(state.colormaps)[0];
}

function colorbar(meta) {
  const bar = document.createElement("div");
  bar.className = "colorbar";
  bar.innerHTML = '<div class="ramp"></div><div class="ticks"><span></span><span></span><span></span></div><div class="unit"></div>';
  bar.querySelector(".unit").textContent = meta.scale.label;
  return bar;
}

// Where a fraction t of the colorbar lies on the colormap: a diverging one shows a magnitude
// with its upper half only, so zero keeps the neutral middle colour (as the server's overlays).
function halfOf(entry, cmap) {
  return entry.meta.scale.sign !== "all" && state.diverging.has(cmap);
}

function position(t, half) {
  return half ? 0.5 + 0.5 * t : t;
}

function drawColorbar(entry, low, high, cmap) {
  const table = state.colormaps[cmap];
  const half = halfOf(entry, cmap);
  const stops = [];
  for (let i = 0; i <= 16; i += 1) {
    const [r, g, b] = table[Math.round(position(i / 16, half) * 255)];
    stops.push(`rgb(${r}, ${g}, ${b}) ${(100 * i) / 16}%`);
  }
  entry.bar.querySelector(".ramp").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const ticks = entry.bar.querySelectorAll(".ticks span");
  [low, (low + high) / 2, high].forEach((value, i) => { ticks[i].textContent = formatNumber(value); });
  entry.bar.dataset.low = String(low);
  entry.bar.dataset.high = String(high);
}

function formatNumber(value) {
  if (value === 0) return "0";
  const size = Math.abs(value);
  return size >= 1e4 || size < 1e-2 ? value.toExponential(1) : String(Number(value.toPrecision(3)));
}

function draw(entry) {
  if (!entry || !state.photo) return;
  const { canvas, values } = entry;
  const alpha = Number($("opacity").value) / 100;
  const cmap = cmapOf(entry.meta);
  const table = state.colormaps[cmap];
  const [low, high] = limits(entry);
  const half = halfOf(entry, cmap);
  drawColorbar(entry, low, high, cmap);
  const photo = state.photo.data;
  const context = canvas.getContext("2d");
  const out = context.createImageData(canvas.width, canvas.height);
  const pixels = out.data;
  for (let i = 0; i < values.length; i += 1) {
    const o = 4 * i;
    const v = values[i];
    if (Number.isNaN(v)) {
      pixels[o] = photo[o]; pixels[o + 1] = photo[o + 1]; pixels[o + 2] = photo[o + 2];
    } else {
      const t = Math.min(1, Math.max(0, (v - low) / (high - low)));
      const colour = table[Math.round(position(t, half) * 255)];
      pixels[o] = alpha * colour[0] + (1 - alpha) * photo[o];
      pixels[o + 1] = alpha * colour[1] + (1 - alpha) * photo[o + 1];
      pixels[o + 2] = alpha * colour[2] + (1 - alpha) * photo[o + 2];
    }
    pixels[o + 3] = 255;
  }
  context.putImageData(out, 0, 0);
}

function redrawAll() {
  $("opacity-value").textContent = (Number($("opacity").value) / 100).toFixed(2);
  $("clip-low-value").textContent = `${$("clip-low").value}%`;
  $("clip-high-value").textContent = `${$("clip-high").value}%`;
  for (const entry of state.cards.values()) draw(entry);
}

async function showAgreement(jobId) {
  try {
    const result = await api(`/api/jobs/${jobId}/agreement`);
    const box = $("agreement");
    const names = result.methods;
    let html = `<h3>Agreement (Spearman rank correlation / top-${Math.round(100 * result.top_fraction)}% IoU)</h3><table><tr><th></th>`;
    html += names.map((n) => `<th>${escapeHtml(n)}</th>`).join("") + "</tr>";
    names.forEach((row, i) => {
      html += `<tr><th>${escapeHtml(row)}</th>`;
      names.forEach((_, j) => {
        html += `<td>${result.spearman[i][j].toFixed(2)} / ${result.iou[i][j].toFixed(2)}</td>`;
      });
      html += "</tr>";
    });
    box.innerHTML = html + "</table>";
    box.hidden = false;
  } catch (error) {
    // agreement is optional (fewer than two methods, or not installed): nothing to show
  }
}

function escapeHtml(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span.innerHTML;
}

async function cancel() {
  if (!state.job) return;
  try { await api(`/api/jobs/${state.job}`, { method: "DELETE" }); } catch (error) { say(error.message, true); }
}

// -- start -------------------------------------------------------------------------------------
function start() {
  setUpDrop();
  $("model").addEventListener("change", modelChanged);
  $("explain").addEventListener("click", explain);
  $("class-name").addEventListener("input", () => { // typing a name means: explain that class
    document.querySelector('input[name="target"][value="class"]').checked = true;
  });
  $("cancel").addEventListener("click", cancel);
  for (const id of ["opacity", "cmap", "clip-low", "clip-high"]) {
    $(id).addEventListener("input", redrawAll);
    $(id).addEventListener("change", redrawAll);
  }
  loadMenus()
    .then(() => { document.body.dataset.ready = "1"; })
    .catch((error) => say(error.message, true));
}

start();
