// uad multiplanar viewer: a Streamlit component (components.v1 protocol, no library, no build step).
//
// Receives from app/viewer.py, once per case:
//   args.spec   JSON: grid shape [Z, Y, X], voxel spacing [z, y, x] mm, volumes (dtype, kind, value scale, default
//               window), panels, overlays, colours, per-slice stats, the pixel threshold, the grid -> file -> scanner
//               mapping for the readout under the cursor;
//   args.<arg>  the volumes' bytes (little-endian uint8 / uint16 / int16 / float32), Z-major, Z*Y*X elements each:
//               Z inferior -> superior, Y anterior -> posterior, X the patient's left -> right.
// Everything else happens here: the planes and layouts, the linked crosshair, orientation letters, the
// radiological / neurological switch, window/level per sequence, zoom about the crosshair and pan, the value
// under the cursor, overlays, and the pixel threshold (TP/FP/FN, Dice, counts) computed from the float32 maps
// exactly as uad's VolumeScores.prediction does (tests/test_browser.py compares them). Nothing goes back to
// Python except, once per received volume, which volumes this frame holds.
"use strict";

const PLANES = ["axial", "coronal", "sagittal"];
const PLANE_AXIS = { axial: 0, coronal: 1, sagittal: 2 }; // index into pos = [z, y, x]
const LAYOUT_NAMES = { planes: "All planes", "1x3": "1 × 3 (one panel)", "2x2": "Grid (one plane)", single: "One large view" };
const root = document.getElementById("root");
root.dataset.loadedAt = (performance.timeOrigin + performance.now()).toFixed(0); // wall clock, for the benchmark
const S = {
  spec: null, vols: {}, gridId: null, version: null,
  pos: [0, 0, 0], active: "axial", activePanel: 0, conv: "radiological", channel: 0, layout: "planes",
  wl: {}, zoom: 1, pan: { axial: [0, 0], coronal: [0, 0], sagittal: [0, 0] },
  heatOpacity: 1, segMode: "outline", segOpacity: 0.45,
  keyAt: null, cells: [], ui: {}, hover: null,
  thr: null, // { value, pred, classes, slice: {flagged, tumour, dice, tp, fp, fn}, counts: {tp, fp, fn, dice} }
};

// -- Streamlit protocol ------------------------------------------------------------------------------------
function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
}
let lastHeight = -1;
function fitHeight() {
  // The content's own height (not the document's, which never drops below the frame's current height:
  // measuring that left a blank gap under the viewer whenever its content got shorter).
  const h = Math.ceil(root.getBoundingClientRect().height) + 2;
  if (h !== lastHeight) { lastHeight = h; send("streamlit:setFrameHeight", { height: h }); }
}
window.addEventListener("message", (ev) => {
  const d = ev.data;
  if (d && d.type === "streamlit:render") onRender(d.args || {}, d.theme);
});
send("streamlit:componentReady", { apiVersion: 1 });

// -- helpers -----------------------------------------------------------------------------------------------
const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c); // strings become text nodes, never HTML
  return e;
}
const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return typeof v === "number" ? (Number.isInteger(v) && !digits ? String(v) : v.toFixed(digits ?? 3)) : String(v);
}
function fmtValue(v) { // a voxel's value: integers as they are, others to 4 significant digits
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
}
function remembered(name, fallback) {
  try { const v = window.sessionStorage.getItem("uad-viewer:" + name); return v === null ? fallback : JSON.parse(v); }
  catch (e) { return fallback; }
}
function remember(name, value) {
  try { window.sessionStorage.setItem("uad-viewer:" + name, JSON.stringify(value)); } catch (e) { /* private mode */ }
}
function memoryKey(what) {
  const m = (S.spec && S.spec.memory) || "";
  return what === "layout" ? `layout:${m.split("|")[0]}` : `${what}:${m}`;
}

// -- receiving data ----------------------------------------------------------------------------------------
// Content hash -> Uint8Array: volumes received earlier are not sent again. One store per browser tab, kept on the
// page that holds the frames (same origin), so a frame that replaces another (Explore revisited, another case on
// the same grid) finds what its predecessor received; app/viewer.py sends by what the frames last reported. Entries
// are copied into the page's own arrays, so no frame outlives its removal through them. A page of another origin
// cannot be reached: the frame keeps its own store, and asks for what it lacks (``missing``).
function tabStore() {
  try {
    const page = window.parent;
    if (page === window || !page.Map) return { map: new Map(), own: (a) => a };
    if (!page.__uadViewerVolumes) page.__uadViewerVolumes = new page.Map();
    return { map: page.__uadViewerVolumes, own: (a) => { const c = new page.Uint8Array(a.length); c.set(a); return c; } };
  } catch (e) {
    return { map: new Map(), own: (a) => a };
  }
}
const tab = tabStore();
const TAB_STORE_BYTES = 256 * 2 ** 20; // about five demo cases in Explore, or three real cases on Data
const store = tab.map;
function report(extra) {
  send("streamlit:setComponentValue", { value: Object.assign({ have: [...store.keys()] }, extra || {}), dataType: "json" });
}
function typed(bytes, dtype) {
  const T = { uint8: Uint8Array, uint16: Uint16Array, int16: Int16Array, float32: Float32Array }[dtype];
  if (!T) return null;
  if (T === Uint8Array) return bytes;
  const b = bytes.byteOffset % T.BYTES_PER_ELEMENT ? bytes.slice() : bytes; // typed views need aligned offsets
  return new T(b.buffer, b.byteOffset, b.byteLength / T.BYTES_PER_ELEMENT);
}

// Volumes travel deflated (zlib, as Python's zlib.compress writes them): 4-5 times fewer bytes through the
// websocket and Streamlit's front end, inflated here by the browser's own DecompressionStream.
async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
let renders = 0;
async function onRender(args, theme) {
  if (theme && theme.base === "light") document.body.classList.add("light");
  const spec = args.spec;
  if (!spec) return;
  if (spec.version === S.version) { fitHeight(); return; } // an unchanged rerun: nothing to redraw
  const mine = ++renders;
  root.dataset.renderStart = (performance.timeOrigin + performance.now()).toFixed(0); // wall clock, for the benchmark
  const incoming = Object.values(spec.volumes).filter((info) => args[info.arg] instanceof Uint8Array && args[info.arg].length);
  let inflated;
  try {
    inflated = await Promise.all(incoming.map((info) => (info.encoding === "deflate" ? inflate(args[info.arg]) : args[info.arg])));
  } catch (e) {
    root.replaceChildren(el("div", { class: "error" }, `Viewer: a volume could not be unpacked (${e})`));
    fitHeight();
    return;
  }
  if (mine !== renders) return; // a newer render arrived meanwhile
  root.dataset.inflatedAt = (performance.timeOrigin + performance.now()).toFixed(0);
  root.dataset.received = String(incoming.length); // volumes that travelled for this render (tests: none on a revisit)
  incoming.forEach((info, i) => store.set(info.hash, tab.own(inflated[i])));
  const received = incoming.length > 0;
  const [Z, Y, X] = spec.shape;
  const vols = {};
  const problems = [];
  const missing = [];
  for (const [name, info] of Object.entries(spec.volumes)) {
    const bytes = store.get(info.hash);
    if (!ArrayBuffer.isView(bytes)) { missing.push(name); continue; } // (arrays of the page's realm: not instanceof here)
    const data = typed(bytes, info.dtype);
    if (!data) { problems.push(`${name}: unknown type ${info.dtype}`); continue; }
    if (data.length !== Z * Y * X) { problems.push(`${name}: ${data.length} values, expected ${Z * Y * X}`); continue; }
    const old = S.vols[name];
    vols[name] = old && old.hash === info.hash ? old
      : { data, info, hash: info.hash, range: null, lut: null, lutKey: "", win: null, off: 0 }; // one shape for every volume
    vols[name].info = info;
  }
  if (missing.length) { // the server thought we held these (e.g. this frame was reloaded): ask again
    for (const h of [...store.keys()]) store.delete(h);
    report({ missing: missing });
    return;
  }
  if (problems.length) {
    root.replaceChildren(el("div", { class: "error" }, "Viewer: " + problems.join("; ")));
    fitHeight();
    return;
  }
  // The tab's store keeps what this render draws and, within TAB_STORE_BYTES, the volumes used most recently
  // before it (a revisit of Explore after Data finds its volumes here: nothing is sent or unpacked again).
  const wanted = new Set(Object.values(spec.volumes).map((v) => v.hash));
  for (const h of wanted) { const v = store.get(h); store.delete(h); store.set(h, v); } // most recent last
  let total = 0;
  for (const v of store.values()) total += v.byteLength;
  const dropped = [];
  for (const [h, v] of [...store.entries()]) {
    if (total <= TAB_STORE_BYTES) break;
    if (!wanted.has(h)) { store.delete(h); dropped.push(h); total -= v.byteLength; }
  }
  // The server sends only what the tab lacks, by what it last heard: say what changed, drops included (a run
  // taken out and chosen again would otherwise be thought held and not sent).
  if (received || dropped.length) report();
  const gridId = `${spec.case_id}|${spec.shape.join("x")}|${spec.source || ""}`;
  S.spec = spec;
  if (gridId !== S.gridId) { // another case: start from its own position and the default view
    S.gridId = gridId;
    S.pos = spec.start.slice();
    S.wl = {}; S.zoom = 1;
    S.pan = { axial: [0, 0], coronal: [0, 0], sagittal: [0, 0] };
    S.conv = spec.convention || "radiological";
    S.active = "axial"; S.activePanel = 0; S.hover = null;
    S.layout = remembered(memoryKey("layout"), "planes");
    if (!(spec.layouts || []).includes(S.layout)) S.layout = "planes";
  }
  if (S.version === null) { S.heatOpacity = spec.heat_opacity ?? 1; S.segMode = spec.seg_mode || "outline"; }
  S.activePanel = clamp(S.activePanel, 0, spec.panels.length - 1);
  S.channel = clamp(S.channel, 0, Math.max((spec.channels || []).length - 1, 0));
  S.vols = vols; S.version = spec.version;
  S.inferno = spec.heat ? spec.heat.lut : null;
  S.heatAlpha = heatAlphas();
  const T = spec.threshold;
  if (T) {
    const prev = S.thr && S.thr.key === memoryKey("threshold") ? S.thr.value : remembered(memoryKey("threshold"), null);
    const value = typeof prev === "number" && prev >= T.min && prev <= T.max ? prev : T.value;
    S.thr = { key: memoryKey("threshold"), value };
    applyThreshold(value);
  } else S.thr = null;
  build();
  draw();
  root.dataset.renderEnd = (performance.timeOrigin + performance.now()).toFixed(0);
}

// -- the pixel threshold, in the browser -------------------------------------------------------------------------
// uad's reference (uad/scoring/postprocess.py threshold_maps, VolumeScores.prediction, uad/scoring/overlap.py):
//   pred = maps >= float32(threshold) over the kept slices; 3-D components (6-connected, neighbouring kept slices)
//   smaller than min_component removed; then pred &= eroded brain; truth = tumour & eroded brain;
//   per slice: flagged, tumour, Dice = 2 TP / (flagged + tumour) (none where both are 0);
//   per volume: TP, FP = flagged - TP, FN = tumour - TP, Dice = 2 TP / (2 TP + FP + FN).
function applyThreshold(value) {
  const T = S.spec.threshold;
  const [Z, Y, X] = S.spec.shape;
  const plane = Y * X;
  const maps = S.vols[T.map].data, mask = S.vols[T.mask].data;
  const truth = T.truth ? S.vols[T.truth].data : null;
  const n = Z * plane;
  const th = S.thr;
  if (!th.pred || th.pred.length !== n) { th.pred = new Uint8Array(n); th.classes = new Uint8Array(n); }
  const pred = th.pred, classes = th.classes;
  if (T.min_component > 1) pred.fill(0);
  classes.fill(0);
  const thr = Math.fround(value); // numpy compares a float32 map in float32
  const components = T.min_component > 1;
  if (components) { // the raw prediction first: components are counted before the brain mask applies, as in uad
    let fg = 0;
    for (const z of T.kept_z) {
      const o = z * plane;
      for (let i = o; i < o + plane; i++) if (maps[i] >= thr) { pred[i] = 1; fg++; }
    }
    if (fg) removeSmallComponents(pred, T.kept_z, Y, X, T.min_component, fg);
  }
  const nz = () => new Array(Z).fill(null);
  const sl = { flagged: nz(), tumour: nz(), dice: nz(), tp: nz(), fp: nz(), fn: nz() };
  let TP = 0, P = 0, G = 0;
  for (const z of T.kept_z) {
    const o = z * plane;
    let tp = 0, p = 0, g = 0;
    for (let i = o; i < o + plane; i++) {
      const inBrain = mask[i] !== 0;
      const pi = (components ? pred[i] !== 0 : maps[i] >= thr) && inBrain;
      const gi = truth !== null && truth[i] !== 0 && inBrain;
      if (pi) p++;
      if (gi) g++;
      if (pi && gi) { tp++; classes[i] = 1; } else if (pi) classes[i] = 2; else if (gi) classes[i] = 3;
    }
    sl.flagged[z] = p; sl.tp[z] = tp; sl.fp[z] = p - tp;
    if (truth) { sl.tumour[z] = g; sl.fn[z] = g - tp; sl.dice[z] = p + g > 0 ? (2 * tp) / (p + g) : null; }
    TP += tp; P += p; G += g;
  }
  const FP = P - TP, FN = G - TP;
  th.value = value;
  th.slice = sl;
  th.counts = { tp: TP, fp: FP, fn: FN, flagged: P, tumour: truth ? G : null,
                dice: truth && 2 * TP + FP + FN > 0 ? (2 * TP) / (2 * TP + FP + FN) : null };
  remember(memoryKey("threshold"), value);
}

// 3-D connected components (6-connectivity, as scipy.ndimage.label's default) of pred over the kept slices,
// in order (kept slice s touches kept slice s - 1, as rows of uad's (S, H, W) stack do); components smaller
// than minSize voxels are cleared. Union-find with path halving.
function removeSmallComponents(pred, keptZ, Y, X, minSize, fg) {
  const plane = Y * X;
  const labels = S.labelBuf && S.labelBuf.length === pred.length ? S.labelBuf : (S.labelBuf = new Int32Array(pred.length));
  const parent = new Int32Array(fg + 1);
  let next = 1;
  const find = (a) => { while (parent[a] !== a) { parent[a] = parent[parent[a]]; a = parent[a]; } return a; };
  const union = (a, b) => { a = find(a); b = find(b); if (a === b) return a; if (a < b) { parent[b] = a; return a; } parent[a] = b; return b; };
  for (let s = 0; s < keptZ.length; s++) {
    const o = keptZ[s] * plane, prev = s > 0 ? keptZ[s - 1] * plane : -1;
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++) {
        const i = o + y * X + x;
        if (!pred[i]) { labels[i] = 0; continue; }
        let l = 0;
        if (x > 0 && pred[i - 1]) l = labels[i - 1];
        if (y > 0 && pred[i - X]) { const u = labels[i - X]; l = l ? union(l, u) : u; }
        if (prev >= 0) { const j = prev + y * X + x; if (pred[j]) { const b = labels[j]; l = l ? union(l, b) : b; } }
        if (!l) { l = next++; parent[l] = l; }
        labels[i] = l;
      }
    }
  }
  const size = new Int32Array(next);
  for (const z of keptZ) { const o = z * plane; for (let i = o; i < o + plane; i++) if (pred[i]) size[find(labels[i])]++; }
  for (const z of keptZ) { const o = z * plane; for (let i = o; i < o + plane; i++) if (pred[i] && size[find(labels[i])] < minSize) pred[i] = 0; }
}

function setThreshold(value) {
  applyThreshold(value);
  draw((c) => c.panel.overlays.some((o) => o.kind === "classes")); // only the views that show the prediction change
}

// -- layout --------------------------------------------------------------------------------------------------
function planeGeom(plane) {
  const [Z, Y, X] = S.spec.shape, [sz, sy, sx] = S.spec.spacing;
  if (plane === "axial") return { w: X, h: Y, sw: sx, sh: sy };
  if (plane === "coronal") return { w: X, h: Z, sw: sx, sh: sz };
  return { w: Y, h: Z, sw: sy, sh: sz };
}
function flipped(plane) { return plane !== "sagittal" && S.conv === "radiological"; }
function letters(plane) {
  // [left, right, top, bottom] of the screen, in patient directions
  const lr = S.conv === "radiological" ? ["R", "L"] : ["L", "R"];
  if (plane === "axial") return [lr[0], lr[1], "A", "P"];
  if (plane === "coronal") return [lr[0], lr[1], "S", "I"];
  return ["A", "P", "S", "I"];
}
function convText() {
  return S.conv === "radiological"
    ? "Radiological convention: the patient's right is on the screen's left"
    : "Neurological convention: the patient's right is on the screen's right";
}
function baseOf(panel) { return Array.isArray(panel.base) ? panel.base[Math.min(S.channel, panel.base.length - 1)] : panel.base; }
function panelTitle(panel) {
  // "{channel}" in a title names the channel shown (Explore's channel switch); a TP/FP/FN panel names its threshold.
  const chans = S.spec.channels || [];
  let t = panel.title.replace("{channel}", chans.length ? chans[Math.min(S.channel, chans.length - 1)] : "");
  if (panel.overlays.some((o) => o.kind === "classes") && S.thr) t += ` ≥ ${S.thr.value.toFixed(4)}`;
  return t;
}

function slider(label, min, max, step, value, oninput, cls) {
  const input = el("input", { type: "range", min, max, step, value, "aria-label": label });
  const out = el("output", {});
  input.addEventListener("input", () => { oninput(Number(input.value)); });
  return { wrap: el("label", { class: cls || "" }, label, input, out), input, out };
}
function select(label, options, value, onchange) {
  const s = el("select", { "aria-label": label }, ...options.map(([v, t]) => el("option", { value: v }, t)));
  s.value = value;
  s.addEventListener("change", () => onchange(s.value));
  return s;
}

// Which cells the layout shows: [{plane, index}] in reading order, and how many columns.
function layoutCells() {
  const n = S.spec.panels.length;
  if (S.layout === "1x3") return { cols: 3, cells: PLANES.map((plane) => ({ plane, index: S.activePanel })), heads: "cell" };
  if (S.layout === "2x2") {
    const cols = Math.max(1, Math.ceil(Math.sqrt(n)));
    return { cols, cells: S.spec.panels.map((_, i) => ({ plane: S.active, index: i })), heads: "cell" };
  }
  if (S.layout === "single") return { cols: 1, cells: [{ plane: S.active, index: S.activePanel }], heads: "cell" };
  const cells = [];
  for (const plane of PLANES) for (let i = 0; i < n; i++) cells.push({ plane, index: i });
  return { cols: n, cells, heads: "column" };
}

function head(panel, i) {
  const h = el("div", { class: "head", "data-panel": String(i) }, el("div", { class: "t" }, panelTitle(panel)));
  if (panel.subtitle) {
    const sub = el("div", { class: "sub" });
    if (panel.colour) sub.append(el("span", { class: "sw", "data-colour": panel.colour.join(","), style: `background:${rgb(panel.colour)}` }));
    sub.append(panel.subtitle);
    h.append(sub);
  }
  return h;
}

function build() {
  const spec = S.spec;
  const ui = {};
  const title = el("div", { class: "title" }, spec.title || spec.case_id,
    ui.conv = el("span", { class: "conv", "data-testid": "convention" }, convText()));

  // slices
  ui.sl = {};
  const slices = el("div", { class: "bar slices" });
  for (const plane of PLANES) {
    const n = spec.shape[PLANE_AXIS[plane]];
    const s = slider(plane[0].toUpperCase() + plane.slice(1), 0, n - 1, 1, S.pos[PLANE_AXIS[plane]], (v) => {
      S.active = plane; moveSlice(plane, v); draw();
    }, "slices");
    s.input.dataset.plane = plane;
    ui.sl[plane] = s;
    slices.append(s.wrap);
  }

  // view controls: layout, what it shows, convention, zoom
  const view = el("div", { class: "bar" });
  ui.layout = select("Layout", (spec.layouts || ["planes"]).map((l) => [l, LAYOUT_NAMES[l] || l]), S.layout, (v) => {
    S.layout = v; remember(memoryKey("layout"), v); build(); draw();
  });
  view.append(el("label", {}, "Layout", ui.layout));
  if (S.layout === "1x3" || S.layout === "single") {
    ui.panelSel = select("Panel", spec.panels.map((p, i) => [String(i), p.subtitle ? `${p.title} · ${p.subtitle}` : p.title]),
      String(S.activePanel), (v) => { S.activePanel = Number(v); build(); draw(); });
    view.append(el("label", {}, "Panel", ui.panelSel));
  }
  if (S.layout === "2x2" || S.layout === "single") {
    ui.planeSel = select("Plane", PLANES.map((p) => [p, p]), S.active, (v) => { S.active = v; build(); draw(); });
    view.append(el("label", {}, "Plane", ui.planeSel));
  }
  if ((spec.channels || []).length > 1) {
    ui.chanSel = select("Channel", spec.channels.map((c, i) => [String(i), c]), String(S.channel), (v) => {
      S.channel = Number(v); build(); draw();
    });
    view.append(el("label", {}, "Channel", ui.chanSel));
  }
  ui.convSelect = select("Display convention", [["radiological", "Radiological (R on left)"], ["neurological", "Neurological (R on right)"]],
    S.conv, (v) => { S.conv = v; ui.conv.textContent = convText(); draw(); });
  view.append(el("label", {}, ui.convSelect));
  ui.zoom = slider("Zoom", 1, 8, 0.25, S.zoom, (v) => setZoom(v));
  view.append(ui.zoom.wrap);

  // display controls: the window of the sequence drawn in the last panel clicked, overlays
  const disp = el("div", { class: "bar" });
  ui.wlName = el("span", { class: "wlname", "data-testid": "window-of" });
  ui.lev = slider("Level", 0, 1, 1, 0, (v) => { const b = activeBase(); const w = windowOf(b); setWindow(b, v, w[1]); });
  ui.wid = slider("Width", 0, 1, 1, 1, (v) => { const b = activeBase(); const w = windowOf(b); setWindow(b, w[0], v); });
  disp.append(ui.wlName, ui.lev.wrap, ui.wid.wrap);
  const hasHeat = spec.panels.some((p) => p.overlays.some((o) => o.kind === "heat"));
  const hasLabels = spec.panels.some((p) => p.overlays.some((o) => o.kind === "labels"));
  if (hasHeat) {
    const op = slider("Heatmap opacity", 0, 1, 0.05, S.heatOpacity, (v) => { S.heatOpacity = v; S.heatAlpha = heatAlphas(); draw(); });
    ui.heatOp = op; disp.append(op.wrap);
  }
  if (hasLabels) {
    const seg = select("Segmentation", [["outline", "Segmentation: outline"], ["filled", "Segmentation: filled"], ["off", "Segmentation: off"]],
      S.segMode, (v) => { S.segMode = v; draw(); });
    const op = slider("Fill opacity", 0, 1, 0.05, S.segOpacity, (v) => { S.segOpacity = v; draw(); });
    ui.segOp = op;
    disp.append(el("label", {}, seg), op.wrap);
  }
  const reset = el("button", { type: "button", title: "Default windows, no zoom, centred" }, "Reset view");
  reset.addEventListener("click", () => { S.wl = {}; setZoom(1); });
  disp.append(reset);

  // the pixel threshold (Explore): moved here, computed here
  let thrBar = null, metrics = null;
  if (spec.threshold) {
    const T = spec.threshold;
    thrBar = el("div", { class: "bar thr", "data-testid": "threshold-bar" });
    ui.thr = slider("Pixel threshold", T.min, T.max, T.step, S.thr.value, (v) => setThreshold(v), "thr");
    ui.thr.wrap.prepend(el("span", { class: "what" }, `on ${T.name}'s anomaly map`));
    ui.thr.input.dataset.testid = "threshold";
    ui.thr.wrap.title = "Pixels whose anomaly score is at least this are flagged; marked on the colour bar.";
    thrBar.append(ui.thr.wrap);
    if (T.presets && T.presets.length) {
      thrBar.append(el("span", { class: "note" }, "Presets (healthy FPR):"));
      for (const p of T.presets) {
        const b = el("button", { type: "button", "data-preset": p.label, title: `Threshold at which ${p.label} of healthy validation pixels are flagged` },
          `${p.label} · ${p.value.toFixed(3)}`);
        b.addEventListener("click", () => { ui.thr.input.value = p.value; setThreshold(p.value); });
        thrBar.append(b);
      }
    }
    metrics = el("div", { class: "metrics", "data-testid": "volume-metrics" });
    ui.metrics = metrics;
  }

  // the grid of views
  const lay = layoutCells();
  const grid = el("div", { class: "grid", style: `grid-template-columns: repeat(${lay.cols}, minmax(0, 1fr))` });
  if (lay.heads === "column") spec.panels.forEach((p, i) => grid.append(head(p, i)));
  S.cells = [];
  ui.heads = [];
  for (const { plane, index } of lay.cells) {
    const panel = spec.panels[index];
    const canvas = el("canvas", { "data-plane": plane, "data-panel": String(index) });
    const ori = letters(plane);
    const tags = ["l", "r", "t", "b"].map((side, j) => el("span", { class: `ori ${side}`, "data-side": side }, ori[j]));
    const planeTag = el("span", { class: "plane" }, "");
    const cell = el("div", { class: "cell", "data-plane": plane, "data-panel": String(index) }, canvas, ...tags, planeTag);
    const c = { plane, panel, index, canvas, cell, tags, planeTag, geom: null };
    attachMouse(c);
    S.cells.push(c);
    if (lay.heads === "cell") {
      const box = el("div", { class: "cellbox" }, head(panel, index), cell);
      grid.append(box);
    } else grid.append(cell);
  }

  // under the views: the value under the cursor, legend, colour bar, per-slice numbers, the slice strip
  ui.readout = el("div", { class: "readout", "data-testid": "readout" }, "Point at a view to read the values under the cursor.");
  const foot = el("div", { class: "foot" });
  if (spec.legend && spec.legend.length) {
    foot.append(el("div", { class: "legend" }, ...spec.legend.map((it) =>
      el("span", {}, el("span", { class: "sw", style: `background:${rgb(it.colour)}` }), it.label))));
  }
  if (spec.heat) foot.append(colourBar(spec.heat));
  ui.stats = el("table", { class: "stats", "data-testid": "slice-stats" });
  let stripBox = null;
  if (spec.strip) {
    const strip = el("canvas", { class: "strip", "data-testid": "strip" });
    strip.addEventListener("click", (ev) => {
      const r = strip.getBoundingClientRect();
      const Z = spec.shape[0];
      const z = Math.round(((ev.clientX - r.left - 40) / Math.max(r.width - 50, 1)) * (Z - 1));
      S.active = "axial"; S.pos[0] = clamp(z, 0, Z - 1); draw();
    });
    ui.strip = strip;
    stripBox = el("div", {}, stripLegend(spec.strip), strip);
  }
  const notes = (spec.notes || []).map((t) => el("div", { class: "note" }, t));
  const help = el("div", { class: "note" },
    "Click a view to move the crosshair (and choose the panel whose window the Level/Width sliders set); arrow keys, " +
    "Page Up/Down or the mouse wheel move through the slices of the last view clicked; Ctrl+wheel or the slider zooms " +
    "about the crosshair; drag to pan when zoomed; right-drag for window/level.");
  root.replaceChildren(title, slices, view, disp, ...(thrBar ? [thrBar, metrics] : []), grid, ui.readout, foot, ui.stats,
    ...(stripBox ? [stripBox] : []), ...notes, help);
  S.ui = ui;
  if (ui.thr) ui.thr.input.value = S.thr.value;
}

function stripLegend(strip) {
  // The strip's key: a swatch in each line's (and bar's) colour and its full name, as text.
  const items = [];
  const bars = strip.bars || [];
  for (const b of bars) items.push(el("span", { class: "item", "data-kind": "bar" },
    el("span", { class: "sw bar", style: `background:${rgb(b.colour)}` }), bars.length > 1 ? `${strip.bar_title || "bars"}: ${b.name}` : strip.bar_title || b.name));
  for (const l of strip.lines || []) items.push(el("span", { class: "item", "data-kind": "line", "data-colour": l.colour.join(",") },
    el("span", { class: "sw line", style: `background:${rgb(l.colour)}` }), `${strip.line_title || "line"} · ${l.name}`));
  return el("div", { class: "strip-legend", "data-testid": "strip-legend" }, ...items);
}

function colourBar(heat) {
  const lut = heat.lut;
  const stops = [];
  for (let i = 0; i <= 10; i++) { const c = lut[Math.round((i / 10) * 255)]; stops.push(`${rgb(c)} ${i * 10}%`); }
  const grad = el("span", { class: "grad", style: `background: linear-gradient(to right, ${stops.join(", ")})` });
  const parts = [el("span", {}, heat.label || "score"), el("span", {}, "0"), grad, el("span", {}, fmt(heat.vmax, 3))];
  if (S.spec.threshold) {
    const mark = el("span", { class: "thr" });
    grad.append(mark);
    const label = el("span", { class: "thrlabel", "data-testid": "threshold-label" });
    parts.push(label);
    S.thrMark = { mark, label };
  } else S.thrMark = null;
  return el("span", { class: "cbar", "data-testid": "colourbar" }, ...parts);
}
function drawThresholdMark() {
  if (!S.thrMark || !S.thr) return;
  const t = S.thr.value, vmax = S.spec.heat.vmax;
  S.thrMark.mark.style.left = `calc(${clamp(t / vmax, 0, 1) * 100}% - 1px)`;
  S.thrMark.label.textContent = `threshold ${t.toFixed(4)}` + (t > vmax ? " (above the scale)" : "");
}

// -- window/level per sequence ----------------------------------------------------------------------------------
function volRange(v) {
  if (!v.range) {
    let lo = Infinity, hi = -Infinity;
    const d = v.data, sc = v.info.scale || 1;
    for (let i = 0; i < d.length; i++) { const x = d[i]; if (x < lo) lo = x; if (x > hi) hi = x; }
    v.range = [lo * sc, hi * sc];
  }
  return v.range;
}
function defaultWindow(name) {
  const v = S.vols[name];
  if (v.info.window) return v.info.window.slice();
  return volRange(v).slice();
}
function windowOf(name) { // [level, width] in the volume's values
  const w = S.wl[name];
  if (w) return w;
  const [lo, hi] = defaultWindow(name);
  return [(lo + hi) / 2, Math.max(hi - lo, 1e-9)];
}
function setWindow(name, level, width) {
  S.wl[name] = [level, Math.max(width, 1e-9)];
  draw();
}
function activeBase() { return baseOf(S.spec.panels[S.activePanel]); }
// Grey level of each stored value under the volume's window: a lookup table for integer types, built when
// the window changes (value = stored * scale; low -> black, high -> white, as uad.data.display.window_bytes).
function greyLut(v, name) {
  const [level, width] = windowOf(name);
  const key = `${level}|${width}`;
  if (v.lutKey === key) return v.lut;
  const dt = v.info.dtype, sc = v.info.scale || 1;
  const lo = level - width / 2;
  if (dt === "float32") { v.lut = null; v.lutKey = key; v.win = [lo, width]; return null; }
  const n = dt === "uint8" ? 256 : 65536, off = dt === "int16" ? 32768 : 0;
  const lut = v.lut && v.lut.length === n ? v.lut : new Uint8ClampedArray(n);
  for (let s = 0; s < n; s++) lut[s] = ((s - off) * sc - lo) / width * 255;
  v.lut = lut; v.lutKey = key; v.win = [lo, width]; v.off = off;
  return lut;
}

function heatAlphas() {
  const heat = (S.spec && S.spec.heat) || {};
  const floor = heat.floor ?? 0.2, maxA = (heat.max_alpha ?? 0.85) * S.heatOpacity;
  const a = new Float32Array(256);
  for (let i = 1; i < 256; i++) { const t = (i / 255 - floor) / (1 - floor); a[i] = t <= 0 ? 0 : maxA * Math.pow(Math.min(t, 1), 0.6); }
  return a;
}

// -- zoom about the crosshair -----------------------------------------------------------------------------------------
function crossInPlane(plane) { // the crosshair in a plane's screen-oriented voxel grid: [column, row]
  const [Z] = S.spec.shape;
  const [z, y, x] = S.pos;
  let col, row;
  if (plane === "axial") { col = x; row = y; }
  else if (plane === "coronal") { col = x; row = Z - 1 - z; }
  else { col = y; row = Z - 1 - z; }
  const g = planeGeom(plane);
  return [flipped(plane) ? g.w - 1 - col : col, row];
}
function setZoom(z1) {
  z1 = clamp(z1, 1, 8);
  const z0 = S.zoom;
  if (z1 === 1) S.pan = { axial: [0, 0], coronal: [0, 0], sagittal: [0, 0] };
  else {
    // Keep the crosshair where it is on screen: the crosshair is the zoom's fixed point (ITK-SNAP's zoom to cursor).
    for (const plane of PLANES) {
      const g = planeGeom(plane);
      const [dc, row] = crossInPlane(plane);
      const p = [(dc + 0.5) * g.sw - (g.w * g.sw) / 2, (row + 0.5) * g.sh - (g.h * g.sh) / 2];
      const pan = S.pan[plane];
      S.pan[plane] = [p[0] - (p[0] - pan[0]) * z0 / z1, p[1] - (p[1] - pan[1]) * z0 / z1];
    }
  }
  S.zoom = z1;
  draw();
}

// -- mouse and keys -------------------------------------------------------------------------------------------
function screenToVoxel(c, clientX, clientY) {
  const g = c.geom;
  if (!g) return null;
  const r = c.canvas.getBoundingClientRect();
  const dc = Math.floor((clientX - r.left - g.ox) / (g.s * g.sw));
  const row = Math.floor((clientY - r.top - g.oy) / (g.s * g.sh));
  if (dc < 0 || dc >= g.w || row < 0 || row >= g.h) return null;
  const col = flipped(c.plane) ? g.w - 1 - dc : dc;
  const [Z] = S.spec.shape;
  const [z, y, x] = S.pos;
  if (c.plane === "axial") return [z, row, col];
  if (c.plane === "coronal") return [Z - 1 - row, y, col];
  return [Z - 1 - row, col, x];
}
function attachMouse(c) {
  let down = null;
  c.canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  c.canvas.addEventListener("pointerdown", (ev) => {
    c.canvas.setPointerCapture(ev.pointerId);
    const base = baseOf(c.panel);
    down = { x: ev.clientX, y: ev.clientY, button: ev.button, moved: false, base, wl: windowOf(base).slice(),
             range: volRange(S.vols[base]), pan: S.pan[c.plane].slice() };
    root.focus({ preventScroll: true });
  });
  c.canvas.addEventListener("pointermove", (ev) => {
    if (!down) { hover(c, ev); return; }
    const dx = ev.clientX - down.x, dy = ev.clientY - down.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) down.moved = true;
    if (!down.moved) return;
    if (down.button === 2) { // window/level of this panel's sequence, as in Slicer: horizontal = width, vertical = level
      const unit = Math.max(down.range[1] - down.range[0], 1e-9) / 256;
      S.activePanel = c.index;
      setWindow(down.base, down.wl[0] - dy * unit, down.wl[1] + dx * unit);
      return;
    } else if (c.geom) {
      S.pan[c.plane] = [down.pan[0] - dx / c.geom.s, down.pan[1] - dy / c.geom.s];
    }
    draw();
  });
  c.canvas.addEventListener("pointerleave", () => { if (!down) { S.hover = null; drawReadout(); } });
  c.canvas.addEventListener("pointerup", (ev) => {
    if (down && !down.moved && down.button === 0) setCrosshair(c, ev);
    down = null;
  });
  c.canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (ev.ctrlKey) { setZoom(S.zoom * (ev.deltaY < 0 ? 1.25 : 0.8)); return; }
    S.active = c.plane; step(ev.deltaY > 0 ? -1 : 1);
  }, { passive: false });
}

function hover(c, ev) {
  const v = screenToVoxel(c, ev.clientX, ev.clientY);
  S.hover = v ? { plane: c.plane, voxel: v, clientX: ev.clientX, clientY: ev.clientY, cell: c } : null;
  drawReadout();
}

function setCrosshair(c, ev) {
  const v = screenToVoxel(c, ev.clientX, ev.clientY);
  if (!v) return;
  S.pos = v;
  S.active = c.plane;
  if (S.activePanel !== c.index && S.layout === "planes") S.activePanel = c.index;
  draw();
}

function moveSlice(plane, v) {
  const axis = PLANE_AXIS[plane];
  S.pos[axis] = clamp(v, 0, S.spec.shape[axis] - 1);
  if (S.hover && S.hover.plane === plane) S.hover.voxel[axis] = S.pos[axis]; // the readout follows the slice shown
}
function step(delta) {
  moveSlice(S.active, S.pos[PLANE_AXIS[S.active]] + delta);
  draw();
}

// Key presses are time-stamped (capture phase, before any handler) so the benchmark can read how long
// it took from the key press to the drawn slice: data-key-to-draw-ms, and data-key-to-frame-ms (the
// next animation frame, when the browser paints it).
window.addEventListener("keydown", (ev) => { S.keyAt = ev.timeStamp; }, true);
root.addEventListener("keydown", (ev) => {
  const t = ev.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "BUTTON")) return; // they handle their own keys
  const up = ["ArrowUp", "ArrowRight", "PageUp"].includes(ev.key);
  const down = ["ArrowDown", "ArrowLeft", "PageDown"].includes(ev.key);
  if (!up && !down) return;
  ev.preventDefault();
  step(up ? 1 : -1);
});
let lastWidth = 0; // the frame's height follows its content; only a new width needs a new drawing
window.addEventListener("resize", () => { if (S.spec && root.clientWidth !== lastWidth) draw(); });

// -- the value under the cursor ----------------------------------------------------------------------------------
function apply4(m, v) { return [0, 1, 2].map((r) => m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]); }
function readoutAt(voxel) {
  const spec = S.spec;
  const [Z, Y, X] = spec.shape;
  const [z, y, x] = voxel;
  const i = z * Y * X + y * X + x;
  const out = { grid: [z, y, x], values: {} };
  const pos = spec.position;
  if (pos) {
    const ijk = apply4(pos.to_voxel, [z, y, x]);
    out.voxel = pos.exact ? ijk.map((v) => Math.round(v)) : ijk.map((v) => Math.round(v * 10) / 10);
    out.mm = apply4(pos.affine, pos.exact ? out.voxel : ijk).map((v) => Math.round(v * 100) / 100);
  }
  const kept = spec.slice_labels ? spec.slice_labels[z] : z;
  out.slice = kept;
  for (const [name, v] of Object.entries(S.vols)) {
    const info = v.info;
    const raw = v.data[i];
    if (info.kind === "grey" || info.kind === "heat") out.values[info.label] = raw * (info.scale || 1);
    else if (info.kind === "labels") out.values[info.label] = raw;
    else if (info.kind === "mask" && name !== (spec.threshold && spec.threshold.mask)) out.values[info.label] = raw ? "yes" : "no";
  }
  if (S.thr) {
    const cls = S.thr.classes[i];
    out.values[`at threshold ${S.thr.value.toFixed(4)}`] = spec.threshold.truth
      ? ["–", "TP", "FP", "FN"][cls] : (cls ? "flagged" : "–");
  }
  return out;
}
function drawReadout() {
  const box = S.ui.readout;
  if (!box) return;
  if (!S.hover) { root.dataset.hover = ""; return; }
  const r = readoutAt(S.hover.voxel);
  const spec = S.spec;
  const parts = [];
  if (r.voxel) parts.push(el("span", { class: "k" }, (spec.position.exact ? "voxel " : "≈ voxel ") + r.voxel.join(", ")));
  if (r.mm) parts.push(el("span", { class: "k" }, r.mm.map((v) => v.toFixed(1)).join(", ") + " mm (scanner RAS)"));
  if (!r.voxel) parts.push(el("span", { class: "k" }, `grid ${r.grid.join(", ")}`));
  const names = spec.label_names || {};
  for (const [label, value] of Object.entries(r.values)) {
    let shown = typeof value === "number" ? fmtValue(value) : value;
    const vol = Object.values(S.vols).find((v) => v.info.label === label);
    if (vol && vol.info.kind === "labels") shown = value ? `${value} ${names[String(value)] || ""}`.trim() : "0 (none)";
    parts.push(el("span", {}, el("span", { class: "n" }, label + " "), shown));
  }
  box.replaceChildren(...parts);
  root.dataset.hover = JSON.stringify(r);
}

// -- drawing ---------------------------------------------------------------------------------------------------
// One plane of one panel into an ImageData (screen orientation) plus the label/mask values for outlines.
// The hot loop touches only typed arrays and locals (no object property lookups per pixel) and writes each pixel
// as one 32-bit word: drawing every view of a case is most of the time a slice step takes.
function rasterise(c, g) {
  const spec = S.spec;
  const [Z, Y, X] = spec.shape;
  const baseName = baseOf(c.panel);
  const base = S.vols[baseName];
  if (!c.img || c.img.width !== g.w || c.img.height !== g.h) {
    c.img = new ImageData(g.w, g.h);
    c.px32 = new Uint32Array(c.img.data.buffer);
  }
  const img = c.img, px32 = c.px32;
  const flip = flipped(c.plane);
  const outlines = [];
  const kinds = [], datas = [], alphas = [];
  for (const o of c.panel.overlays) {
    if (o.kind === "contour" || (o.kind === "labels" && S.segMode === "outline")) {
      outlines.push({ o, vals: new Uint8Array(g.w * g.h), data: S.vols[o.volume].data });
    }
    if (o.kind === "heat") { kinds.push(0); datas.push(S.vols[o.volume].data); alphas.push(0); }
    else if (o.kind === "labels" && S.segMode === "filled") { kinds.push(1); datas.push(S.vols[o.volume].data); alphas.push(S.segOpacity); }
    else if (o.kind === "classes" && S.thr) { kinds.push(2); datas.push(S.thr.classes); alphas.push(o.alpha ?? 0.65); }
  }
  const nl = kinds.length, no = outlines.length;
  const ovals = outlines.map((o) => o.vals), odata = outlines.map((o) => o.data);
  const lut = base ? greyLut(base, baseName) : null;
  const bdata = base ? base.data : null, off = base ? base.off : 0;
  const fwin = base && !lut ? base.win : null;
  const heatLut = S.inferno, heatA = S.heatAlpha, vmax = spec.heat ? spec.heat.vmax : 1;
  const labelsC = spec.colours.labels || {}, classesC = spec.colours.classes || {};
  // voxel index = a + row * dr + col * dcol, with col the unflipped column
  const [z, y, x] = S.pos;
  let a, dr, dcol;
  if (c.plane === "axial") { a = z * Y * X; dr = X; dcol = 1; }
  else if (c.plane === "coronal") { a = (Z - 1) * Y * X + y * X; dr = -Y * X; dcol = 1; }
  else { a = (Z - 1) * Y * X + x; dr = -Y * X; dcol = X; }
  const w = g.w;
  for (let row = 0; row < g.h; row++) {
    const ar = a + row * dr;
    for (let dc = 0; dc < w; dc++) {
      const vi = ar + (flip ? w - 1 - dc : dc) * dcol;
      const j = row * w + dc;
      let gval = 0;
      if (bdata !== null) gval = lut !== null ? lut[bdata[vi] + off] : clamp((bdata[vi] - fwin[0]) / fwin[1] * 255, 0, 255);
      let r = gval, gg = gval, b = gval;
      for (let k = 0; k < nl; k++) {
        const v = datas[k][vi];
        if (!v) continue;
        let colr, al;
        const kind = kinds[k];
        if (kind === 0) {
          const idx = Math.round(Math.min(Math.max(v / vmax, 0), 1) * 255);
          al = heatA[idx];
          if (!al) continue;
          colr = heatLut[idx];
        } else if (kind === 1) { colr = labelsC[v] || [200, 200, 200]; al = alphas[k]; }
        else { colr = classesC[v]; al = alphas[k]; if (!colr) continue; }
        r = r * (1 - al) + colr[0] * al; gg = gg * (1 - al) + colr[1] * al; b = b * (1 - al) + colr[2] * al;
      }
      px32[j] = 0xff000000 | (((b + 0.5) | 0) << 16) | (((gg + 0.5) | 0) << 8) | ((r + 0.5) | 0); // RGBA, little-endian
      for (let k = 0; k < no; k++) ovals[k][j] = odata[k][vi];
    }
  }
  return { img, outlines };
}

// Outline of every labelled region along voxel edges, in canvas pixels (crisp at any zoom).
function strokeOutlines(ctx, g, outlines) {
  for (const { o, vals } of outlines) {
    const paths = new Map();
    const path = (v) => { let p = paths.get(v); if (!p) { p = new Path2D(); paths.set(v, p); } return p; };
    const cw = g.s * g.sw, ch = g.s * g.sh;
    for (let row = 0; row < g.h; row++) {
      for (let dc = 0; dc < g.w; dc++) {
        const v = vals[row * g.w + dc];
        if (!v) continue;
        const right = dc + 1 < g.w ? vals[row * g.w + dc + 1] : 0;
        const below = row + 1 < g.h ? vals[(row + 1) * g.w + dc] : 0;
        const left = dc > 0 ? vals[row * g.w + dc - 1] : 0;
        const above = row > 0 ? vals[(row - 1) * g.w + dc] : 0;
        const x0 = g.ox + dc * cw, y0 = g.oy + row * ch;
        const p = path(v);
        if (right !== v) { p.moveTo(x0 + cw, y0); p.lineTo(x0 + cw, y0 + ch); }
        if (left !== v) { p.moveTo(x0, y0); p.lineTo(x0, y0 + ch); }
        if (below !== v) { p.moveTo(x0, y0 + ch); p.lineTo(x0 + cw, y0 + ch); }
        if (above !== v) { p.moveTo(x0, y0); p.lineTo(x0 + cw, y0); }
      }
    }
    ctx.lineWidth = o.width || 1.5;
    for (const [v, p] of paths) {
      const colr = o.kind === "contour" ? (o.colour || S.spec.colours.contour) : ((S.spec.colours.labels || {})[v] || [200, 200, 200]);
      ctx.strokeStyle = rgb(colr);
      ctx.stroke(p);
    }
  }
}

const scratch = document.createElement("canvas");
function drawCell(c, cellW, cellH) {
  const pg = planeGeom(c.plane);
  const dpr = window.devicePixelRatio || 1;
  const cv = c.canvas;
  if (cv.width !== Math.round(cellW * dpr) || cv.height !== Math.round(cellH * dpr)) {
    cv.width = Math.round(cellW * dpr); cv.height = Math.round(cellH * dpr);
  }
  c.cell.style.height = `${cellH}px`;
  const physW = pg.w * pg.sw, physH = pg.h * pg.sh;
  const s = Math.min(cellW / physW, cellH / physH) * S.zoom;
  const pan = S.pan[c.plane];
  const g = Object.assign({}, pg, { s, ox: cellW / 2 - (physW / 2 + pan[0]) * s, oy: cellH / 2 - (physH / 2 + pan[1]) * s });
  c.geom = g;
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, cellW, cellH);
  const { img, outlines } = rasterise(c, g);
  scratch.width = g.w; scratch.height = g.h;
  scratch.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false; // voxels stay voxels, as in ITK-SNAP and Slicer
  ctx.drawImage(scratch, g.ox, g.oy, physW * s, physH * s);
  strokeOutlines(ctx, g, outlines);
  // crosshair
  const [dcol, row] = crossInPlane(c.plane);
  const cx = g.ox + (dcol + 0.5) * g.s * g.sw, cy = g.oy + (row + 0.5) * g.s * g.sh;
  c.cell.dataset.crossX = cx.toFixed(1); c.cell.dataset.crossY = cy.toFixed(1);
  c.cell.dataset.width = String(cellW); c.cell.dataset.height = String(cellH);
  ctx.strokeStyle = c.plane === S.active ? "rgba(0, 200, 90, 0.8)" : "rgba(0, 200, 90, 0.5)";
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(cx, 0); ctx.lineTo(cx, cellH); ctx.moveTo(0, cy); ctx.lineTo(cellW, cy);
  ctx.stroke();
  ctx.setLineDash([]);
  const ori = letters(c.plane);
  c.tags.forEach((t, j) => { t.textContent = ori[j]; });
  c.planeTag.textContent = planeCaption(c.plane);
  c.cell.classList.toggle("chosen", S.layout === "planes" && c.index === S.activePanel && S.spec.panels.length > 1);
}

function planeCaption(plane) {
  const spec = S.spec;
  const [z, y, x] = S.pos;
  if (plane === "axial") {
    const lab = spec.slice_labels ? spec.slice_labels[z] : z;
    return `axial ${lab === null ? "–" : lab}`;
  }
  if (plane === "coronal") return `coronal ${y}`;
  return `sagittal ${x}`;
}

function cellSize(plane, cellW, big) {
  const pg = planeGeom(plane);
  const maxH = big ? Math.max(S.spec.max_cell_height || 360, 640) : (S.spec.max_cell_height || 360);
  return Math.round(Math.min(maxH, cellW * (pg.h * pg.sh) / (pg.w * pg.sw)));
}

function draw(only) { // only: which cells need drawing again (default: all)
  if (!S.spec || !S.cells.length) return;
  const spec = S.spec;
  const lay = layoutCells();
  const gap = 6;
  lastWidth = root.clientWidth;
  const total = root.clientWidth - 4;
  const cellW = Math.max(60, (total - gap * (lay.cols - 1)) / lay.cols);
  const big = S.layout === "single" || S.layout === "1x3";
  const cells = only ? S.cells.filter(only) : S.cells;
  if (S.layout === "planes") {
    for (const plane of PLANES) {
      const h = cellSize(plane, cellW, false);
      for (const c of cells) if (c.plane === plane) drawCell(c, cellW, h);
    }
  } else {
    // one height for every cell of the layout, so the rows line up
    const h = Math.max(...S.cells.map((c) => cellSize(c.plane, cellW, big)));
    for (const c of cells) drawCell(c, cellW, h);
  }
  const ui = S.ui;
  for (const plane of PLANES) {
    const s = ui.sl[plane];
    const v = S.pos[PLANE_AXIS[plane]];
    if (Number(s.input.value) !== v) s.input.value = v;
    if (plane === "axial" && spec.slice_labels) {
      const lab = spec.slice_labels[v];
      s.out.textContent = lab === null ? "–" : String(lab);
    } else s.out.textContent = String(v);
  }
  // window/level of the chosen panel's sequence, in its own values
  const bname = activeBase();
  const bvol = S.vols[bname];
  if (bvol && bvol.info.kind === "grey") {
    const [lo, hi] = volRange(bvol);
    const [level, width] = windowOf(bname);
    const stepv = bvol.info.dtype === "float32" || (bvol.info.scale || 1) !== 1 ? (hi - lo) / 500 || 1e-3 : 1;
    for (const [s, min, max, v] of [[ui.lev, lo, hi, level], [ui.wid, stepv, Math.max(hi - lo, stepv), width]]) {
      s.input.min = min; s.input.max = max; s.input.step = stepv; s.input.value = v;
      s.out.textContent = fmtValue(Number(v.toPrecision(4)));
    }
    ui.wlName.textContent = `Window of ${panelTitle(spec.panels[S.activePanel]).split(" + ")[0]}:`;
    ui.wlName.title = `${bvol.info.label}${bvol.info.unit ? `, in ${bvol.info.unit}` : ""}. Click a panel to set its window.`;
    root.dataset.window = JSON.stringify({ volume: bname, level, width });
  }
  ui.zoom.input.value = S.zoom; ui.zoom.out.textContent = `${S.zoom.toFixed(2)}×`;
  if (ui.heatOp) ui.heatOp.out.textContent = S.heatOpacity.toFixed(2);
  if (ui.segOp) ui.segOp.out.textContent = S.segOpacity.toFixed(2);
  if (ui.convSelect.value !== S.conv) ui.convSelect.value = S.conv;
  ui.conv.textContent = convText();
  if (ui.thr) { ui.thr.out.textContent = S.thr.value.toFixed(4); drawMetrics(); }
  const heads = root.querySelectorAll(".head");
  heads.forEach((h) => { const p = spec.panels[Number(h.dataset.panel)]; h.firstChild.textContent = panelTitle(p); });
  drawThresholdMark();
  drawStats();
  if (ui.strip) drawStrip(ui.strip);
  if (S.hover) drawReadout();
  // state for tests and the benchmark
  const [z, y, x] = S.pos;
  root.dataset.axial = String(z); root.dataset.coronal = String(y); root.dataset.sagittal = String(x);
  root.dataset.axialLabel = String(spec.slice_labels ? spec.slice_labels[z] : z);
  root.dataset.convention = S.conv;
  root.dataset.caseId = spec.case_id;
  root.dataset.layout = S.layout;
  root.dataset.zoom = String(S.zoom);
  if (S.thr) root.dataset.threshold = String(S.thr.value);
  root.dataset.ready = "1";
  const now = performance.now();
  root.dataset.drawnAt = now.toFixed(1);
  if (S.keyAt !== null) {
    const keyAt = S.keyAt;
    S.keyAt = null;
    root.dataset.keyToDrawMs = (now - keyAt).toFixed(1);
    window.requestAnimationFrame(() => {
      root.dataset.keyToFrameMs = (performance.now() - keyAt).toFixed(1);
      root.dataset.frameFor = root.dataset.drawnAt; // painted: this drawing and any made since
    });
  }
  fitHeight();
}

function drawMetrics() {
  const c = S.thr.counts, T = S.spec.threshold;
  const items = [];
  if (T.truth) items.push(["Dice · whole volume", fmt(c.dice, 3), "dice"]);
  items.push(["Flagged pixels · volume", String(c.flagged), "flagged"]);
  if (T.truth) items.push(["Tumour pixels · volume", String(c.tumour), "tumour"]);
  if (T.min_component > 1) items.push(["Components smaller than", `${T.min_component} voxels dropped`, "min-component"]);
  S.ui.metrics.replaceChildren(...items.map(([label, value, key]) =>
    el("div", { class: "metric", "data-metric": key }, el("div", { class: "ml" }, label), el("div", { class: "mv" }, value))));
}

function drawStats() {
  const spec = S.spec;
  const z = S.pos[0];
  const rows = spec.stats || [];
  const tb = S.ui.stats;
  tb.replaceChildren(...rows.map((r) => {
    const v = r.source ? (S.thr ? S.thr.slice[r.source][z] : null) : r.values[z];
    return el("tr", {}, el("td", {}, r.label), el("td", { class: "v", "data-stat": r.label }, fmt(v, r.digits)));
  }));
}

function drawStrip(cv) {
  const spec = S.spec;
  const strip = spec.strip;
  const [Z] = spec.shape;
  const dpr = window.devicePixelRatio || 1;
  const W = cv.clientWidth, H = cv.clientHeight;
  if (cv.width !== Math.round(W * dpr)) { cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr); }
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const L = 40, R = 10, T = 6, B = 16;
  const pw = W - L - R, ph = H - T - B;
  const xz = (z) => L + (Z > 1 ? z / (Z - 1) : 0.5) * pw;
  const fg = getComputedStyle(document.body).getPropertyValue("--muted") || "#999";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = fg;
  // bars: stacked, scaled to their largest total
  const bars = strip.bars || [];
  let maxBar = 0;
  for (let z = 0; z < Z; z++) { let t = 0; for (const b of bars) t += b.values[z] || 0; maxBar = Math.max(maxBar, t); }
  const bw = Math.max(pw / Math.max(Z, 1), 1);
  if (maxBar > 0) {
    for (let z = 0; z < Z; z++) {
      let y0 = T + ph;
      for (const b of bars) {
        const v = b.values[z] || 0;
        if (!v) continue;
        const h = (v / maxBar) * ph;
        ctx.fillStyle = `rgba(${b.colour[0]},${b.colour[1]},${b.colour[2]},0.55)`;
        ctx.fillRect(xz(z) - bw / 2, y0 - h, bw, h);
        y0 -= h;
      }
    }
  }
  // lines: per-slice scores, one scale for all of them (the same models, the same colour scale)
  const lines = strip.lines || [];
  let maxLine = 0;
  for (const l of lines) for (const v of l.values) if (v !== null && v > maxLine) maxLine = v;
  for (const l of lines) {
    ctx.strokeStyle = rgb(l.colour); ctx.lineWidth = 1.6; ctx.beginPath();
    let started = false;
    l.values.forEach((v, z) => {
      if (v === null) { started = false; return; }
      const y = T + ph - (maxLine > 0 ? v / maxLine : 0) * ph;
      if (!started) { ctx.moveTo(xz(z), y); started = true; } else ctx.lineTo(xz(z), y);
    });
    ctx.stroke();
  }
  // axes, current slice
  ctx.strokeStyle = "rgba(128,128,128,0.6)"; ctx.lineWidth = 1;
  ctx.strokeRect(L, T, pw, ph);
  ctx.fillStyle = fg;
  const labs = spec.slice_labels || [];
  ctx.textAlign = "left"; ctx.fillText(`axial ${labs.length ? labs[0] : 0}`, L, H - 3);
  ctx.textAlign = "right"; ctx.fillText(`axial ${labs.length ? labs[Z - 1] : Z - 1}`, L + pw, H - 3);
  ctx.textAlign = "center";
  const scale = [];
  if (bars.length) scale.push(maxBar > 0 ? `bars 0–${fmt(maxBar, 0)}` : strip.empty_bars || "no tumour in this case");
  if (lines.length) scale.push(`lines 0–${fmt(maxLine, 3)}`);
  ctx.fillText(scale.join(" · "), L + pw / 2, H - 3);
  const z = S.pos[0];
  ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(xz(z), T); ctx.lineTo(xz(z), T + ph); ctx.stroke();
  ctx.save(); ctx.translate(12, T + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
  ctx.fillText("per slice", 0, 0); ctx.restore();
}

// -- for tests: the numbers the page shows at the current threshold, and the classes per kept slice ----------------
window.uadViewer = {
  numbers() {
    if (!S.thr) return null;
    const T = S.spec.threshold, th = S.thr;
    const kept = T.kept_z;
    const pick = (a) => kept.map((z) => a[z]);
    return { threshold: th.value, counts: th.counts, kept_z: kept,
             slice: { flagged: pick(th.slice.flagged), tumour: pick(th.slice.tumour), dice: pick(th.slice.dice),
                      tp: pick(th.slice.tp), fp: pick(th.slice.fp), fn: pick(th.slice.fn) } };
  },
  setThreshold(v) { if (S.thr) { S.ui.thr.input.value = v; setThreshold(v); } },
  volume(name) { // the bytes this frame holds for a volume, base64 (a test reads back exactly what it received)
    const v = name === "@classes" ? (S.thr && { data: S.thr.classes, info: { dtype: "uint8" } }) : S.vols[name];
    if (!v) return null;
    const b = new Uint8Array(v.data.buffer, v.data.byteOffset, v.data.byteLength);
    let s = "";
    for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
    return { dtype: v.info.dtype, shape: S.spec.shape, b64: btoa(s) };
  },
  threshold() { return S.spec && S.spec.threshold; },
};
