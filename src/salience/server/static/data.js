// salience viewer, scans, signals and rows: upload a .nii/.nii.gz/.npy scan, a .npy/.csv signal
// or a .csv of feature rows; the model's prediction for it is listed as soon as it is chosen
// (each row's, for a table); the server draws each map (a scan's montage through the map's peak,
// a signal's traces with the saliency band, a table's signed bars per row). A scan's map has a
// slider over its axial slices, each drawn by the server when asked, and its NIfTI download.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);

  function tell(text, isError = false) {
    const line = byId("data-message");
    line.textContent = text;
    line.classList.toggle("error", isError);
  }

  function link(url, text) {
    const a = document.createElement("a");
    a.href = url;
    a.textContent = text;
    a.setAttribute("download", "");
    return a;
  }

  function sliceUrl(template, index) {
    return template.replace("{index}", String(index));
  }

  function slider(meta) {
    // the axial slice through the peak first; moving the slider asks for another slice
    const volume = meta.volume;
    const box = document.createElement("div");
    box.className = "data-slices";
    const picture = document.createElement("img");
    picture.className = "data-slice";
    picture.alt = `${meta.method}: axial slice`;
    picture.style.aspectRatio = `1 / ${volume.aspect}`;
    const range = document.createElement("input");
    range.type = "range";
    range.className = "data-slider";
    range.min = "0";
    range.max = String(volume.slices - 1);
    range.value = String(volume.peak[volume.axial_axis]);
    const label = document.createElement("output");
    const show = () => {
      picture.src = sliceUrl(meta.files.slices, range.value);
      picture.dataset.index = range.value;
      label.textContent = `axial ${range.value} / ${volume.slices - 1}`;
    };
    range.addEventListener("input", show);
    show();
    const controls = document.createElement("label");
    controls.append("slice ", range, " ", label);
    box.append(picture, controls);
    return box;
  }

  function card(meta) {
    const figure = document.createElement("figure");
    figure.className = "data-card";
    figure.dataset.method = meta.method;
    const caption = document.createElement("figcaption");
    const name = meta.target_name === null ? String(meta.target) : meta.target_name;
    caption.textContent = `${meta.method} · ${name} (${meta.score_kind} ${meta.score.toFixed(3)})`;
    const picture = document.createElement("img");
    picture.className = "data-picture";
    picture.src = meta.files["overlay.png"];
    picture.alt = `${meta.method} map`;
    figure.append(caption, picture);
    if (meta.volume) figure.append(slider(meta));
    const downloads = document.createElement("p");
    downloads.className = "data-downloads";
    if (meta.files["map.nii.gz"]) downloads.append(link(meta.files["map.nii.gz"], "map.nii.gz"), " ");
    downloads.append(link(meta.files["map.npy"], "map.npy"));
    figure.append(downloads);
    return figure;
  }

  function fileForm(file) {
    // the chosen file, the model chosen above and a table's columns: what both requests send
    const form = new FormData();
    form.append("image", file, file.name);
    const model = byId("model");
    if (model && model.value) form.append("model", model.value);
    const features = byId("data-features").value.trim();
    if (features) form.append("features", features);
    return form;
  }

  function predictionItem(line) {
    const item = document.createElement("li");
    item.textContent = line.text;
    item.dataset.index = line.index;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${line.probability == null ? 0 : Math.max(1, 100 * line.probability)}%`;
    item.append(bar);
    return item;
  }

  async function predictData() {
    // the model's prediction for the chosen file (each row's, for a table), as soon as it is chosen
    const file = byId("data-file").files[0];
    const list = byId("data-predictions");
    list.replaceChildren();
    if (!file) return;
    try {
      const response = await fetch("/api/predict", { method: "POST", body: fileForm(file) });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
      const rows = answer.rows || [answer.predictions];
      rows.forEach((lines, n) => {
        if (answer.rows) {
          const heading = document.createElement("li");
          heading.className = "row";
          heading.textContent = `row ${n + 1}`;
          list.append(heading);
        }
        for (const line of lines) list.append(predictionItem(line));
      });
    } catch (error) {
      tell(error.message, true);
    }
  }

  async function explainData() {
    const file = byId("data-file").files[0];
    if (!file) {
      tell("choose a .nii, .nii.gz, .npy or .csv file first", true);
      return;
    }
    const form = fileForm(file);
    form.append("methods", byId("data-methods").value || "gradient");
    form.append("target", byId("data-target").value || "predicted");
    const results = byId("data-results");
    results.replaceChildren();
    tell(`explaining ${file.name}…`);
    byId("data-explain").disabled = true;
    try {
      const response = await fetch("/api/explain", { method: "POST", body: form });
      const job = await response.json();
      if (!response.ok) throw new Error(job.error || `${response.status} ${response.statusText}`);
      results.dataset.modality = job.modality;
      for (const meta of job.maps) results.append(card(meta));
      tell(`${file.name}: ${job.modality}, ${job.maps.length} map(s) in ${job.elapsed.toFixed(1)} s`);
    } catch (error) {
      tell(error.message, true);
    } finally {
      byId("data-explain").disabled = false;
    }
  }

  function start() {
    byId("data-explain").addEventListener("click", explainData);
    byId("data-file").addEventListener("change", predictData);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
