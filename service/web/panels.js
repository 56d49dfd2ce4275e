// The five panels of xraysr's web page: their images (decoded PNGs and the colour maps computed here) and the
// one zoom/pan they share, so that every panel always shows the same region of the image.

const $ = (id) => document.getElementById(id);
export const PANELS = ["input", "bicubic", "output", "difference", "uncertainty"];
const ZOOMS = [1, 2, 4, 8, 16];
const CLICK_ZOOM = 4;
// Colour-map ranges come from these steps, so maps of similar images share a scale and stay comparable.
const DIFF_RANGES = [4, 8, 16, 32, 64, 128];
const SPREAD_RANGES = [2, 4, 8, 16, 32, 64];

// panel -> a canvas holding its full-resolution image; a panel without one shows its placeholder.
export const sources = {};
// The centre of the visible region in image fractions, and the magnification: one for all panels.
const view = { zoom: 1, cx: 0.5, cy: 0.5 };
let imageSize = 256; // the output's side in pixels, for the region read-out

export function setImageSize(size) {
  imageSize = size;
}

// --- images and their colour maps ---------------------------------------------------------------------

export async function canvasOf(blob) {
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  return canvas;
}

function greyLevels(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const grey = new Float32Array(canvas.width * canvas.height);
  for (let i = 0; i < grey.length; i += 1) grey[i] = data[4 * i];
  return grey;
}

function quantile(values, q) {
  const sorted = Float32Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const pickRange = (value, ranges) => ranges.find((range) => value <= range) || ranges[ranges.length - 1];
const mix = (a, b, t) => Math.round(a + (b - a) * t);

// Blue where the output is darker than bicubic, orange where brighter, black where they agree.
function diverging(t) {
  const s = Math.min(1, Math.abs(t));
  return t < 0 ? [mix(0, 80, s), mix(0, 160, s), mix(0, 255, s)] : [mix(0, 255, s), mix(0, 140, s), mix(0, 50, s)];
}

// An inferno-like sequential map: black, purple, red, orange, pale yellow.
const SEQUENTIAL = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
function sequential(t) {
  const x = Math.min(1, Math.max(0, t)) * (SEQUENTIAL.length - 1);
  const i = Math.min(SEQUENTIAL.length - 2, Math.floor(x));
  return SEQUENTIAL[i].map((channel, c) => mix(channel, SEQUENTIAL[i + 1][c], x - i));
}

function colourMap(values, width, height, colour) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let i = 0; i < values.length; i += 1) {
    const [r, g, b] = colour(values[i]);
    image.data.set([r, g, b, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

export function differenceMap(output, bicubic) {
  const out = greyLevels(output);
  const bic = greyLevels(bicubic);
  const difference = out.map((value, i) => value - bic[i]);
  const range = pickRange(quantile(difference.map(Math.abs), 0.995), DIFF_RANGES);
  $("diff-min").textContent = `−${range}`;
  $("diff-max").textContent = `+${range}`;
  return colourMap(difference.map((d) => d / range), output.width, output.height, diverging);
}

export function uncertaintyMap(levels, scale) {
  const spread = greyLevels(levels).map((level) => level * scale); // grey levels of standard deviation
  const range = pickRange(quantile(spread, 0.995), SPREAD_RANGES);
  $("unc-mid").textContent = `${range / 2} grey level${range === 2 ? "" : "s"}`;
  $("unc-max").textContent = `≥ ${range}`;
  return colourMap(spread.map((s) => s / range), levels.width, levels.height, sequential);
}

// --- the synchronized view -------------------------------------------------------------------------------------

// The visible region, in image fractions: the same for every panel, whatever its pixel size.
function region() {
  const { zoom, cx, cy } = view;
  const side = 1 / zoom;
  return { x: cx - side / 2, y: cy - side / 2, side };
}

function clampView() {
  const half = 0.5 / view.zoom;
  view.cx = Math.min(1 - half, Math.max(half, view.cx));
  view.cy = Math.min(1 - half, Math.max(half, view.cy));
}

export function resetView() {
  Object.assign(view, { zoom: 1, cx: 0.5, cy: 0.5 });
  render();
}

function setZoom(zoom) {
  view.zoom = Math.min(ZOOMS[ZOOMS.length - 1], Math.max(ZOOMS[0], zoom));
  clampView();
  render();
}

function stepZoom(direction) {
  const index = ZOOMS.indexOf(view.zoom);
  setZoom(ZOOMS[Math.min(ZOOMS.length - 1, Math.max(0, index + direction))]);
}

function pan(dx, dy) {
  const side = 1 / view.zoom;
  view.cx += dx * side * 0.25;
  view.cy += dy * side * 0.25;
  clampView();
  render();
}

export function render() {
  const { x, y, side } = region();
  const key = `${x.toFixed(4)},${y.toFixed(4)},${side.toFixed(4)}`;
  for (const panel of PANELS) {
    const canvas = $(`canvas-${panel}`);
    const size = Math.max(1, Math.round(canvas.clientWidth * (window.devicePixelRatio || 1)));
    if (canvas.width !== size || canvas.height !== size) {
      canvas.width = size;
      canvas.height = size;
    }
    const context = canvas.getContext("2d");
    const source = sources[panel];
    $(`empty-${panel}`).hidden = Boolean(source);
    context.fillStyle = "#000";
    context.fillRect(0, 0, size, size);
    canvas.dataset.view = source ? key : "";
    if (!source) continue;
    const scale = (size * view.zoom) / source.width;
    // Enlarged pixels stay sharp squares (the input is "nearest-neighbour enlarged"); only a reduction, which
    // would otherwise drop whole rows, is smoothed.
    context.imageSmoothingEnabled = scale < 1;
    context.imageSmoothingQuality = "high";
    context.drawImage(
      source, x * source.width, y * source.height, side * source.width, side * source.height, 0, 0, size, size,
    );
  }
  const zoom = view.zoom;
  $("zoom-level").textContent = `${zoom}×`;
  $("panels").classList.toggle("zoomed", zoom > 1);
  const px = (fraction) => Math.round(fraction * imageSize);
  const shown = `x ${px(x)}–${px(x + side)}, y ${px(y)}–${px(y + side)}`;
  $("zoom-region").textContent = zoom > 1 ? `Showing ${shown} of ${imageSize}×${imageSize}` : "Whole image";
  $("zoom-out").disabled = zoom === ZOOMS[0];
  $("zoom-in").disabled = zoom === ZOOMS[ZOOMS.length - 1];
}

function clickToMagnify(event) {
  const canvas = event.currentTarget;
  if (!sources[canvas.id.replace("canvas-", "")]) return;
  const bounds = canvas.getBoundingClientRect();
  const { x, y, side } = region();
  view.cx = x + ((event.clientX - bounds.left) / bounds.width) * side;
  view.cy = y + ((event.clientY - bounds.top) / bounds.height) * side;
  if (view.zoom === 1) view.zoom = CLICK_ZOOM;
  clampView();
  render();
  $("panels").focus({ preventScroll: true }); // so that the arrow keys pan what was just magnified
}

function onPanelKey(event) {
  const keys = {
    ArrowLeft: () => pan(-1, 0),
    ArrowRight: () => pan(1, 0),
    ArrowUp: () => pan(0, -1),
    ArrowDown: () => pan(0, 1),
    "+": () => stepZoom(1),
    "=": () => stepZoom(1),
    "-": () => stepZoom(-1),
    _: () => stepZoom(-1),
    Escape: resetView,
  };
  const action = keys[event.key];
  if (!action || event.ctrlKey || event.metaKey || event.altKey) return;
  event.preventDefault();
  action();
}

// Clicks, keys and buttons: every one changes the shared view, then redraws all five panels.
export function wireZoom() {
  $("zoom-in").addEventListener("click", () => stepZoom(1));
  $("zoom-out").addEventListener("click", () => stepZoom(-1));
  $("zoom-reset").addEventListener("click", resetView);
  $("panels").addEventListener("keydown", onPanelKey);
  for (const panel of PANELS) $(`canvas-${panel}`).addEventListener("click", clickToMagnify);
  window.addEventListener("resize", render);
}
