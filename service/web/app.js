// xraysr's web page: choose an X-ray, send it to /upscale (through /shrink first when it is not 64×64), and
// show the answer in the five panels (panels.js) with its facts, latency and downloads.
// Hand-written, no libraries, no build step; everything it loads comes from the server that served it.
import {
  PANELS, canvasOf, differenceMap, render, resetView, setImageSize, sources, uncertaintyMap, wireZoom,
} from "/ui/panels.js";

const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  sent: null, // {body, type, isDicom, reducedFrom, name, preview}: what /upscale receives
  result: null, // the JSON answer of the last upscale
  downloadUrl: null,
  busy: false,
  samples: [], // canvases of the answer's diffusion samples, for two or more
  answerCanvas: null, // the answer itself, which the output panel shows unless a sample is chosen
};

// --- messages ------------------------------------------------------------------------------------------------

function show(id, text) {
  const element = $(id);
  element.textContent = text || "";
  element.hidden = !text;
}
const notice = (text) => show("notice", text);
const warning = (text) => show("warning", text);
const error = (text) => show("error", text);

function setBusy(busy, text) {
  state.busy = busy;
  document.body.classList.toggle("busy", busy);
  $("upscale").disabled = busy || !state.sent || !state.config;
  $("upscale").textContent = busy ? text || "Working…" : "Upscale";
}

// --- talking to the server -----------------------------------------------------------------------------------

function authHeaders() {
  // The key lives in the input field only: never written to storage, gone with the tab.
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function describeFailure(response) {
  if (response.status === 401) {
    return "401 Unauthorized — this server needs an API key. Enter it in the “API key” field and try again.";
  }
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) {
      detail = body.detail.map((item) => item.msg || JSON.stringify(item)).join("; "); // FastAPI's 422: one per field
    }
  } catch (_) {
    // not JSON: keep the status text
  }
  return `${response.status} — ${detail}`;
}

async function send(path, body, type, accept) {
  const headers = { ...authHeaders(), "Content-Type": type };
  if (accept) headers.Accept = accept;
  try {
    return await fetch(path, { method: "POST", body, headers });
  } catch (failure) {
    throw new Error(`the server did not answer (${failure.message})`);
  }
}

async function post(path, body, type, accept) {
  const response = await send(path, body, type, accept);
  if (!response.ok) throw new Error(await describeFailure(response));
  return response;
}

// What /upscale would make of the file. /ui/inspect takes only what /upscale takes, so a file over its body
// limit is full-size: it goes to /shrink without being sent twice.
async function inspect(bytes, type) {
  if (bytes.byteLength > state.config.max_body_bytes) return { fits: false };
  const response = await send("/ui/inspect", bytes, type, "application/json");
  if (response.status === 413) return { fits: false };
  if (!response.ok) throw new Error(await describeFailure(response));
  return response.json();
}

function base64Blob(base64, type) {
  const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
  return new Blob([bytes], { type });
}

// --- start-up: the model's ranges --------------------------------------------------------------------------------

async function loadConfig() {
  let response;
  try {
    response = await fetch("/ui/config");
  } catch (_) {
    response = null;
  }
  if (!response || response.status === 503) {
    $("server-status").textContent = "Model loading…";
    $("server-status").className = "server loading";
    setTimeout(loadConfig, 1000);
    return;
  }
  if (!response.ok) {
    error(`could not read the server's settings: ${await describeFailure(response)}`);
    return;
  }
  const config = await response.json();
  state.config = config;
  const steps = $("steps");
  steps.min = config.min_steps;
  steps.max = config.max_steps;
  steps.value = config.default_steps;
  steps.disabled = false;
  $("steps-range").textContent = `${config.min_steps}–${config.max_steps}; fewer is faster`;
  $("steps-value").textContent = steps.value;
  const samples = $("samples");
  samples.replaceChildren();
  for (let k = 1; k <= config.max_samples; k += 1) {
    samples.append(new Option(String(k), String(k), false, k === config.default_samples));
  }
  $("answer").value = config.default_answer || "samples";
  $("answer").disabled = false;
  applyAnswerChoice();
  $("server-status").textContent = `Ready · ${config.model_version}`;
  $("server-status").className = "server ready";
  $("fact-model").textContent = config.model_version;
  $("footer-model").textContent = `Serving ${config.model} (${config.model_version})`;
  setImageSize(config.hr_size);
  $("meta-input").textContent = `${config.lr_size}×${config.lr_size}, nearest-neighbour`;
  if (config.auth_required) $("key-hint").textContent = "required here · kept in this page only";
  setBusy(false);
}

// --- choosing an input -------------------------------------------------------------------------------------------

function looksLikeDicom(bytes, name) {
  // PS3.10: a 128-byte preamble, then "DICM". A bare dataset has no marker: trust the file name then.
  const view = new Uint8Array(bytes, 0, Math.min(132, bytes.byteLength));
  const marker = String.fromCharCode(...view.slice(128, 132));
  return marker === "DICM" || /\.(dcm|dicom)$/i.test(name);
}

async function chooseFile(file) {
  if (!file || state.busy) return;
  $("panels").dataset.state = "reading";
  if (!state.config) {
    error("the model is still loading; choose the image again in a moment");
    return;
  }
  error("");
  warning("");
  $("file-name").textContent = file.name;
  const bytes = await file.arrayBuffer();
  const isDicom = looksLikeDicom(bytes, file.name);
  const type = isDicom ? "application/dicom" : "image/png";
  const size = state.config.lr_size;
  setBusy(true, "Reading…");
  try {
    const inspected = await inspect(bytes, type);
    if (inspected.fits) {
      state.sent = {
        body: bytes, type, isDicom, reducedFrom: null, name: file.name,
        preview: base64Blob(inspected.preview_png_base64, "image/png"),
      };
      const conversion = inspected.input_conversion ? ` (converted: ${inspected.input_conversion})` : "";
      notice(`${file.name}: a ${size}×${size} ${isDicom ? "DICOM" : "PNG"}, sent as is${conversion}.`);
    } else {
      const reply = await post("/shrink", bytes, type);
      const shrunk = await reply.blob();
      const [width, height] = (reply.headers.get("X-Original-Size") || "?x?").split("x");
      state.sent = {
        body: shrunk, type: "image/png", isDicom: false, reducedFrom: [width, height], name: file.name, preview: shrunk,
      };
      notice(
        `${file.name} is ${width}×${height}: reduced to ${size}×${size} by the training recipe (centre square, ` +
          `area to 256², bicubic to ${size}²); the Input panel shows what was sent.`,
      );
    }
  } catch (failure) {
    state.sent = null;
    $("panels").dataset.state = "failed";
    error(failure.message);
    setBusy(false);
    return;
  }
  const [width, height] = state.sent.reducedFrom || [];
  $("note-input").textContent = state.sent.reducedFrom ? `reduced from ${width}×${height} by /shrink` : "sent as is";
  await showResult(null);
  sources.input = await canvasOf(state.sent.preview);
  resetView();
  setBusy(false);
  await upscale();
}

// --- upscaling ---------------------------------------------------------------------------------------------------

// The estimate is the server's default: asking for it means sending no steps or samples (it draws no noise, so a
// seed changes nothing). Diffusion samples name both, as every client that wants the loop does.
function applyAnswerChoice() {
  const sampling = $("answer").value === "samples";
  for (const id of ["steps", "samples", "seed"]) $(id).disabled = !sampling;
}

function requestParameters(seed) {
  if ($("answer").value !== "samples") return new URLSearchParams();
  const params = new URLSearchParams({ steps: $("steps").value, samples: $("samples").value });
  if (seed !== "") params.set("seed", seed);
  return params;
}

function answerParameters(result) {
  if (result.answer === "estimate") return new URLSearchParams();
  return new URLSearchParams({ steps: result.steps, samples: result.samples, seed: result.seed });
}

function answerFileSuffix(result) {
  return result.answer === "estimate" ? "estimate" : `seed${result.seed}`;
}

function seedField() {
  const seed = $("seed").value.trim();
  if (seed !== "" && !/^\d+$/.test(seed)) {
    throw new Error("the seed must be a whole number (0 or more), or blank for a random one");
  }
  return seed;
}

async function upscale() {
  if (!state.sent || state.busy) return;
  error("");
  warning("");
  setBusy(true, "Upscaling…");
  $("panels").dataset.state = "working";
  try {
    const params = requestParameters(seedField());
    const response = await post(`/upscale?${params}`, state.sent.body, state.sent.type, "application/json");
    await showResult(await response.json());
    $("panels").dataset.state = "done";
  } catch (failure) {
    error(failure.message);
    $("panels").dataset.state = "failed";
  } finally {
    setBusy(false);
  }
}

async function downloadDicom() {
  const result = state.result;
  if (!result || !state.sent || !state.sent.isDicom || state.busy) return;
  error("");
  setBusy(true, "Making DICOM…");
  try {
    // The answer's own kind, seed, steps and samples: the DICOM holds the same pixels as the panels.
    const params = answerParameters(result);
    const response = await post(`/upscale?${params}`, state.sent.body, state.sent.type, "application/dicom");
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `${baseName()}_xraysr_${answerFileSuffix(result)}.dcm`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (failure) {
    error(failure.message);
  } finally {
    setBusy(false);
  }
}

function baseName() {
  return (state.sent ? state.sent.name : "xray").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "_");
}

async function showResult(result) {
  state.result = result;
  for (const panel of PANELS) if (panel !== "input") delete sources[panel];
  showFacts(result);
  showLatency(result ? result.stage_ms : null);
  showDownloads(result);
  if (result) {
    sources.output = await canvasOf(base64Blob(result.image_png_base64, "image/png"));
    if (result.bicubic_png_base64) {
      sources.bicubic = await canvasOf(base64Blob(result.bicubic_png_base64, "image/png"));
      sources.difference = differenceMap(sources.output, sources.bicubic);
    }
    if (result.uncertainty_png_base64) {
      const levels = await canvasOf(base64Blob(result.uncertainty_png_base64, "image/png"));
      sources.uncertainty = uncertaintyMap(levels, result.uncertainty_scale);
    }
    $("meta-uncertainty").textContent = uncertaintyLabel(result);
    $("unc-note").textContent = result.uncertainty_coverage
      ? `the true value lies within ± this with ${percent(result.uncertainty_coverage)} probability (calibrated)`
      : "standard deviation across samples (not calibrated)";
    await showSamples(result);
    if (result.lr_consistency_low) {
      warning(
        `Low LR consistency (${formatDb(result.lr_consistency_psnr)}): shrinking the output does not give back the ` +
          "input, so the model may have invented detail here. Compare it with the bicubic panel.",
      );
    }
  }
  if (!result) await showSamples(null);
  $("empty-uncertainty").textContent = result && !result.uncertainty_png_base64 ? "this model has no interval" : "—";
  $("empty-bicubic").textContent = result && !result.bicubic_png_base64 ? "the server sent no bicubic baseline" : "—";
  $("empty-difference").textContent = $("empty-bicubic").textContent;
  render();
}

const formatDb = (value) => (typeof value === "number" ? `${value.toFixed(1)} dB` : "–");
const percent = (probability) => `${Math.round(probability * 100)}%`;

function uncertaintyLabel(result) {
  if (result.uncertainty_coverage) return `± grey levels at ${percent(result.uncertainty_coverage)}`;
  return result.samples > 1 ? `spread of ${result.samples} samples` : "none";
}

// The mean of K samples is the answer; each sample is what the model could invent here. The output panel shows
// whichever is chosen, zoomed with the others.
async function showSamples(result) {
  const select = $("sample-view");
  const samples = result && result.samples_png_base64 ? result.samples_png_base64 : [];
  state.samples = [];
  for (const png of samples) state.samples.push(await canvasOf(base64Blob(png, "image/png")));
  state.answerCanvas = sources.output;
  select.replaceChildren();
  if (samples.length) {
    select.append(new Option(`mean of ${samples.length}`, "mean"));
    samples.forEach((_, index) => select.append(new Option(`sample ${index + 1}`, String(index))));
  }
  select.hidden = samples.length === 0;
  $("meta-output").textContent = "256×256 output";
}

function chooseSample() {
  const choice = $("sample-view").value;
  const sample = choice === "mean" ? null : state.samples[Number(choice)];
  sources.output = sample || state.answerCanvas;
  $("meta-output").textContent = sample ? "one sample: what the model could invent here" : "256×256 output";
  render();
}

function showFacts(result) {
  const fact = (id, text) => {
    $(id).textContent = text;
  };
  const estimate = Boolean(result && result.answer === "estimate");
  fact("fact-answer", result ? (estimate ? "one-pass estimate" : "mean of diffusion samples") : "–");
  fact("fact-steps", result ? String(result.steps) : "–");
  fact("fact-samples", result ? String(result.samples) : "–");
  fact("fact-seed", result ? (estimate ? "none (no noise drawn)" : String(result.seed)) : "–");
  fact("fact-model", result ? result.model_version : state.config ? state.config.model_version : "–");
  const consistency = $("fact-consistency");
  consistency.textContent = result ? formatDb(result.lr_consistency_psnr) : "–";
  if (result && result.lr_consistency_low) consistency.textContent += " — low";
  consistency.classList.toggle("low", Boolean(result && result.lr_consistency_low));
  const mean = result && typeof result.uncertainty_mean === "number";
  const at = result && result.uncertainty_coverage ? ` at ${percent(result.uncertainty_coverage)}` : "";
  const spread = mean ? `±${result.uncertainty_mean.toFixed(2)} grey levels${at}` : "none";
  fact("fact-uncertainty", result ? spread : "–");
  $("server-disclaimer").textContent = result && result.disclaimer ? result.disclaimer : "";
}

function showLatency(stageMs) {
  const list = $("latency");
  list.replaceChildren();
  $("latency-total").textContent = stageMs && "total" in stageMs ? `${stageMs.total.toFixed(0)} ms` : "";
  if (!stageMs) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "Per-stage server time appears after an upscale.";
    list.append(empty);
    return;
  }
  const stages = Object.entries(stageMs).filter(([stage]) => stage !== "total");
  const longest = Math.max(...stages.map(([, ms]) => ms), 1e-6);
  for (const [stage, ms] of stages) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = stage.replace("_", " ");
    const track = document.createElement("span");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.display = "block";
    bar.style.width = `${(100 * ms) / longest}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.className = "ms";
    value.textContent = `${ms < 10 ? ms.toFixed(1) : ms.toFixed(0)} ms`;
    item.append(name, track, value);
    list.append(item);
  }
}

function showDownloads(result) {
  const link = $("download-png");
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
  state.downloadUrl = null;
  if (result) {
    state.downloadUrl = URL.createObjectURL(base64Blob(result.image_png_base64, "image/png"));
    link.href = state.downloadUrl;
    link.download = `${baseName()}_xraysr_${answerFileSuffix(result)}.png`;
    link.removeAttribute("aria-disabled");
    link.removeAttribute("tabindex");
    link.classList.remove("disabled");
  } else {
    link.removeAttribute("href");
    link.setAttribute("aria-disabled", "true");
    link.setAttribute("tabindex", "-1");
    link.classList.add("disabled");
  }
  const dicom = $("download-dicom");
  dicom.hidden = !(result && state.sent && state.sent.isDicom);
  let hint = "The PNG carries the model version, steps, samples and seed in its text chunks.";
  if (result && state.sent && state.sent.reducedFrom && /\.(dcm|dicom)$/i.test(state.sent.name)) {
    hint = "DICOM out needs a 64×64 DICOM input; this one was reduced to a PNG first.";
  }
  $("download-hint").textContent = hint;
}

// --- wiring --------------------------------------------------------------------------------------------------

function wire() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // so that choosing the same file again (say, after entering the key) runs again
    chooseFile(file);
  });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    chooseFile(event.dataTransfer.files[0]);
  });
  // A file dropped outside the drop zone would otherwise navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  $("answer").addEventListener("change", applyAnswerChoice);
  $("sample-view").addEventListener("change", chooseSample);
  $("steps").addEventListener("input", () => {
    $("steps-value").textContent = $("steps").value;
  });
  $("upscale").addEventListener("click", upscale);
  $("seed").addEventListener("keydown", (event) => {
    if (event.key === "Enter") upscale();
  });
  $("download-dicom").addEventListener("click", downloadDicom);
  wireZoom();
  // A bug in this page must not leave it silently "working": say so where errors are shown.
  window.addEventListener("unhandledrejection", (event) => {
    error(`the page failed: ${event.reason}`);
    $("panels").dataset.state = "failed";
    setBusy(false);
  });
}

wire();
setBusy(false);
render();
loadConfig();
