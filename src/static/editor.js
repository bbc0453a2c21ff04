// The face editor's page: forms and sliders that call src/editor.py's endpoints. No model logic here.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
const hasFace = { edit: false, a: false, b: false };
const shownUrls = new Map();  // img -> its blob URL, revoked when replaced

function say(text) {
  $("message").textContent = text;
}

// fetch, with the server's {"error": ...} (or the status) thrown as an Error
async function call(path, { json, body, headers } = {}) {
  const init = json !== undefined
    ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(json) }
    : body !== undefined ? { method: "POST", headers, body } : {};
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error("the server does not answer: is inference.py --serve still running?");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// A live control: at most one request in flight; moves made meanwhile are not queued, the latest
// value is sent when the request returns, so dragging never piles up stale work.
function live(send) {
  let busy = false, again = false;
  return async function update() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do { again = false; await send(); } while (again);
    } catch (e) {
      say(e.message);
    } finally {
      busy = false;
    }
  };
}

async function showPng(img, response) {
  const url = URL.createObjectURL(await response.blob());
  if (shownUrls.has(img)) URL.revokeObjectURL(shownUrls.get(img));
  shownUrls.set(img, url);
  img.src = url;
  return url;
}

// --------------------------------------------------------------------------- faces: uploaded or generated

function showFace(slot, face) {
  if (slot === "edit") {
    $("edit-input").src = face.input;
    $("edit-recon").src = face.reconstruction;
    $("edit-note").textContent = face.note;
    updateEdit();
  } else {
    $(`morph-${slot}`).src = face.input;
    updateMorph();
  }
}

async function upload(slot, file) {
  if (!file) return;
  if (file.size > info.max_upload_bytes) {
    say(`file too large: ${(file.size / 2 ** 20).toFixed(1)} MB, more than ${info.max_upload_bytes / 2 ** 20} MB; pass a smaller copy`);
    return;
  }
  say(`reading ${file.name} ...`);
  try {
    const response = await call(`/api/upload/${slot}`, {
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    });
    hasFace[slot] = true;
    say("");
    showFace(slot, await response.json());
  } catch (e) {
    say(e.message);
  }
}

async function pick(slot, request) {
  try {
    const response = await call(`/api/generated/${slot}`, { json: request });
    hasFace[slot] = true;
    say("");
    showFace(slot, await response.json());
  } catch (e) {
    say(e.message);
  }
}

const randomSeed = () => Math.floor(Math.random() * 2 ** 31);
const randomFace = (slot) => pick(slot, { sampler: "prior", temperature: 1, seed: randomSeed(), n: 1, index: 0 });

// --------------------------------------------------------------------------- Edit

function sliderValues() {
  const values = {};
  for (const s of document.querySelectorAll("#sliders input")) values[s.dataset.name] = Number(s.value) / 100;
  return values;
}

function howFar() {
  const amount = Number($("amount").value);
  return $("mode").value === "target" ? { target: amount, strength: null } : { target: null, strength: amount };
}

const updateEdit = live(async () => {
  if (!hasFace.edit) return;
  const response = await call("/api/edit", { json: { values: sliderValues(), method: $("method").value, ...howFar() } });
  const probabilities = JSON.parse(response.headers.get("X-Probabilities") || "{}");
  $("download").href = await showPng($("edit-output"), response);
  for (const s of document.querySelectorAll("#sliders input")) {
    const p = probabilities[s.dataset.name];
    s.closest(".slider").querySelector("output").textContent = p === undefined ? "" : `p = ${p.toFixed(2)}`;
  }
  say("");
});

function addSlider(name) {
  const row = document.createElement("div");
  row.className = "slider";
  const label = document.createElement("span");
  label.textContent = name;
  label.title = name;
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min: -100, max: 100, value: 0 });
  input.dataset.name = name;
  input.setAttribute("aria-label", name);
  const output = document.createElement("output");
  const remove = document.createElement("button");
  remove.textContent = "×";
  remove.title = `remove ${name}`;
  remove.addEventListener("click", () => { row.remove(); fillAttributeList(); updateEdit(); });
  input.addEventListener("input", updateEdit);
  row.append(label, input, output, remove);
  $("sliders").append(row);
}

function fillAttributeList() {
  const shown = new Set(Object.keys(sliderValues()));
  $("add-attribute").replaceChildren(...info.attributes.filter((n) => !shown.has(n)).map((n) => new Option(n, n)));
}

function describeSliders() {
  const target = $("mode").value === "target";
  $("amount").min = target ? 0.55 : 0.1;
  $("amount").max = target ? 0.99 : 10;
  $("slider-hint").textContent = target
    ? "Each slider moves the face along the attribute's direction: right end = the latent classifier gives P, "
      + "left end = 1 − P, middle = the face as it is; p is the classifier's probability of the edited face."
    : "Each slider moves the face from −S to +S along the attribute's direction; the middle is the face as it is.";
}

// --------------------------------------------------------------------------- Sample, Morph, Traverse

const chosen = (id) => [...$(id).selectedOptions].map((o) => o.value);

function sampleRequest() {
  return { sampler: $("sampler").value, temperature: Number($("temperature").value), seed: Number($("seed").value), n: 16,
           present: chosen("present"), absent: chosen("absent") };
}

async function drawSamples() {
  const request = sampleRequest();
  try {
    const { images } = await (await call("/api/samples", { json: request })).json();
    $("grid").replaceChildren(...images.map((src, index) => {
      const img = new Image();
      Object.assign(img, { src, alt: `sample ${index + 1}`, title: "edit this face" });
      img.addEventListener("click", async () => { await pick("edit", { ...request, index }); showTab("edit"); });
      return img;
    }));
    say("");
  } catch (e) {
    say(e.message);
  }
}

const updateMorph = live(async () => {
  if (!hasFace.a || !hasFace.b) return;
  await showPng($("morph-output"), await call("/api/morph", { json: { t: Number($("morph-t").value) / 100 } }));
});

const updateTraverse = live(async () => {
  const value = Number($("traverse-v").value) / 100;
  $("traverse-value").textContent = `z[${$("dim").value}] = ${value.toFixed(2)}`;
  await showPng($("traverse-output"), await call("/api/traverse", { json: { dim: Number($("dim").value), value } }));
});

function showTab(name) {
  for (const b of document.querySelectorAll("nav .tab")) b.setAttribute("aria-pressed", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section")) s.hidden = s.id !== name;
  if (name === "traverse") updateTraverse();
}

// --------------------------------------------------------------------------- start

async function start() {
  info = await (await call("/api/info")).json();
  $("model").textContent = `${info.model}, ${info.image_size}×${info.image_size}, `
    + (info.align ? "photos aligned like CelebA" : "photos not aligned");
  $("model").title = `serve another model: ${info.serve_another}`;
  $("another").textContent = `another model: ${info.serve_another}`;
  if (info.notes.length) say(info.notes.join(" "));
  $("method").replaceChildren(...info.methods.map((m) => new Option(m, m, false, m === info.method)));
  $("amount").value = info.target;
  $("sampler").replaceChildren(...info.samplers.map((s) => new Option(s, s)));
  $("labels-row").hidden = !info.labels.length;
  for (const id of ["present", "absent"]) $(id).replaceChildren(...info.labels.map((l) => new Option(l, l)));
  $("dim").replaceChildren(...info.dims.map(([d, kl]) => new Option(kl === null ? `z[${d}]` : `z[${d}]  KL ${kl.toFixed(2)}`, d)));
  info.shown.forEach(addSlider);
  fillAttributeList();
  describeSliders();

  for (const b of document.querySelectorAll("nav .tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  for (const [id, slot] of [["edit-file", "edit"], ["morph-file-a", "a"], ["morph-file-b", "b"]]) {
    $(id).addEventListener("change", (e) => { upload(slot, e.target.files[0]); e.target.value = ""; });
  }
  $("edit-random").addEventListener("click", () => randomFace("edit"));
  $("morph-random-a").addEventListener("click", () => randomFace("a"));
  $("morph-random-b").addEventListener("click", () => randomFace("b"));
  $("method").addEventListener("change", updateEdit);
  $("mode").addEventListener("change", () => {
    $("amount").value = $("mode").value === "target" ? info.target : 2;
    describeSliders();
    updateEdit();
  });
  $("amount").addEventListener("change", updateEdit);
  $("reset").addEventListener("click", () => {
    for (const s of document.querySelectorAll("#sliders input")) s.value = 0;
    updateEdit();
  });
  $("add").addEventListener("click", () => {
    if (!$("add-attribute").value) return;
    addSlider($("add-attribute").value);
    fillAttributeList();
    updateEdit();
  });
  $("draw").addEventListener("click", drawSamples);
  $("morph-t").addEventListener("input", updateMorph);
  $("dim").addEventListener("change", updateTraverse);
  $("traverse-v").addEventListener("input", updateTraverse);
  document.body.dataset.ready = "true";  // for tests: the page has its controls
}

start().catch((e) => say(e.message));
