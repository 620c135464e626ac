// uad multiplanar viewer: a Streamlit component (components.v1 protocol, no library, no build step).
//
// Receives from app/viewer.py, once per case (or threshold):
//   args.spec   JSON: grid shape [Z, Y, X], voxel spacing [z, y, x] mm, panels, overlays, colours, per-slice stats;
//   args.<name> uint8 volumes, Z-major, each Z*Y*X bytes: Z inferior -> superior, Y anterior -> posterior,
//               X the patient's left -> right (uad's RAS+ volumes in display order).
// Everything else happens here: the three planes, the linked crosshair, orientation letters, the
// radiological / neurological switch, window/level, zoom and pan, overlay opacity, the slice strip.
// Nothing is sent back to Python, so moving through the slices never waits for the server.
"use strict";

const PLANES = ["axial", "coronal", "sagittal"];
const PLANE_AXIS = { axial: 0, coronal: 1, sagittal: 2 }; // index into pos = [z, y, x]
const root = document.getElementById("root");
const S = {
  spec: null, vols: {}, gridId: null, version: null,
  pos: [0, 0, 0], active: "axial", conv: "radiological",
  level: 127.5, width: 255, zoom: 1, pan: { axial: [0, 0], coronal: [0, 0], sagittal: [0, 0] },
  heatOpacity: 1, segMode: "outline", segOpacity: 0.45,
  keyAt: null, cells: [], ui: {}, wlLut: new Uint8ClampedArray(256), width0: 0,
};

// -- Streamlit protocol ------------------------------------------------------------------------------------
function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
}
let lastHeight = -1;
function fitHeight() {
  const h = Math.ceil(document.documentElement.scrollHeight || document.body.scrollHeight);
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
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return typeof v === "number" ? (Number.isInteger(v) && !digits ? String(v) : v.toFixed(digits ?? 3)) : String(v);
}

// -- receiving data ----------------------------------------------------------------------------------------
const store = new Map(); // content hash -> Uint8Array: volumes received earlier are not sent again
function report(extra) {
  send("streamlit:setComponentValue", { value: Object.assign({ have: [...store.keys()] }, extra || {}), dataType: "json" });
}

function onRender(args, theme) {
  if (theme && theme.base === "light") document.body.classList.add("light");
  const spec = args.spec;
  if (!spec) return;
  if (spec.version === S.version) { fitHeight(); return; } // an unchanged rerun: nothing to redraw
  const [Z, Y, X] = spec.shape;
  const vols = {};
  const problems = [];
  let received = false;
  const missing = [];
  for (const [name, info] of Object.entries(spec.volumes)) {
    let data = args[info.arg];
    if (data instanceof Uint8Array && data.length) { store.set(info.hash, data); received = true; }
    else data = store.get(info.hash);
    if (!(data instanceof Uint8Array)) { missing.push(name); continue; }
    if (data.length !== Z * Y * X) { problems.push(`${name}: ${data.length} bytes, expected ${Z * Y * X}`); continue; }
    vols[name] = data;
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
  const wanted = new Set(Object.values(spec.volumes).map((v) => v.hash));
  for (const h of [...store.keys()]) if (!wanted.has(h)) store.delete(h);
  if (received) report();
  const gridId = `${spec.case_id}|${spec.shape.join("x")}|${spec.source || ""}`;
  if (gridId !== S.gridId) { // another case: start from its own position and the default view
    S.gridId = gridId;
    S.pos = spec.start.slice();
    S.level = 127.5; S.width = 255; S.zoom = 1;
    S.pan = { axial: [0, 0], coronal: [0, 0], sagittal: [0, 0] };
    S.conv = spec.convention || "radiological";
    S.active = "axial";
  }
  if (S.version === null) { S.heatOpacity = spec.heat_opacity ?? 1; S.segMode = spec.seg_mode || "outline"; }
  S.spec = spec; S.vols = vols; S.version = spec.version;
  S.inferno = spec.heat ? spec.heat.lut : null;
  build();
  draw();
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

function slider(label, min, max, step, value, oninput, cls) {
  const input = el("input", { type: "range", min, max, step, value, "aria-label": label });
  const out = el("output", {});
  input.addEventListener("input", () => { oninput(Number(input.value)); });
  return { wrap: el("label", { class: cls || "" }, label, input, out), input, out };
}

function build() {
  const spec = S.spec;
  const [Z, Y, X] = spec.shape;
  const ui = {};
  const title = el("div", { class: "title" }, spec.title || spec.case_id,
    ui.conv = el("span", { class: "conv", "data-testid": "convention" }, convText()));

  // slices
  ui.sl = {};
  const slices = el("div", { class: "bar slices" });
  for (const plane of PLANES) {
    const n = spec.shape[PLANE_AXIS[plane]];
    const s = slider(plane[0].toUpperCase() + plane.slice(1), 0, n - 1, 1, S.pos[PLANE_AXIS[plane]], (v) => {
      S.active = plane; S.pos[PLANE_AXIS[plane]] = v; draw();
    }, "slices");
    s.input.dataset.plane = plane;
    ui.sl[plane] = s;
    slices.append(s.wrap);
  }
  // display controls
  const conv = el("select", { "aria-label": "Display convention" },
    el("option", { value: "radiological" }, "Radiological (R on left)"),
    el("option", { value: "neurological" }, "Neurological (R on right)"));
  conv.value = S.conv;
  conv.addEventListener("change", () => { S.conv = conv.value; ui.conv.textContent = convText(); draw(); });
  ui.convSelect = conv;
  const lev = slider("Level", 0, 255, 1, S.level, (v) => { S.level = v; draw(); });
  const wid = slider("Width", 1, 255, 1, S.width, (v) => { S.width = v; draw(); });
  const zoom = slider("Zoom", 1, 8, 0.25, S.zoom, (v) => { S.zoom = v; draw(); });
  ui.lev = lev; ui.wid = wid; ui.zoom = zoom;
  const reset = el("button", { type: "button", title: "Full window, no zoom, centred" }, "Reset view");
  reset.addEventListener("click", () => {
    S.level = 127.5; S.width = 255; S.zoom = 1; S.pan = { axial: [0, 0], coronal: [0, 0], sagittal: [0, 0] }; draw();
  });
  const controls = el("div", { class: "bar" }, el("label", {}, conv), lev.wrap, wid.wrap, zoom.wrap);
  const hasHeat = spec.panels.some((p) => p.overlays.some((o) => o.kind === "heat"));
  const hasLabels = spec.panels.some((p) => p.overlays.some((o) => o.kind === "labels"));
  if (hasHeat) {
    const op = slider("Heatmap opacity", 0, 1, 0.05, S.heatOpacity, (v) => { S.heatOpacity = v; draw(); });
    ui.heatOp = op; controls.append(op.wrap);
  }
  if (hasLabels) {
    const seg = el("select", { "aria-label": "Segmentation" },
      el("option", { value: "outline" }, "Segmentation: outline"), el("option", { value: "filled" }, "Segmentation: filled"),
      el("option", { value: "off" }, "Segmentation: off"));
    seg.value = S.segMode;
    seg.addEventListener("change", () => { S.segMode = seg.value; draw(); });
    const op = slider("Fill opacity", 0, 1, 0.05, S.segOpacity, (v) => { S.segOpacity = v; draw(); });
    ui.segOp = op;
    controls.append(el("label", {}, seg), op.wrap);
  }
  controls.append(reset);

  // the grid: one column per panel, one row per plane
  const n = spec.panels.length;
  const grid = el("div", { class: "grid", style: `grid-template-columns: repeat(${n}, minmax(0, 1fr))` });
  for (const p of spec.panels) grid.append(el("div", { class: "head", title: p.title }, p.title));
  S.cells = [];
  for (const plane of PLANES) {
    spec.panels.forEach((panel, i) => {
      const canvas = el("canvas", { "data-plane": plane, "data-panel": String(i) });
      const ori = letters(plane);
      const tags = ["l", "r", "t", "b"].map((side, j) => el("span", { class: `ori ${side}`, "data-side": side }, ori[j]));
      const planeTag = el("span", { class: "plane" }, "");
      const cell = el("div", { class: "cell", "data-plane": plane, "data-panel": String(i) }, canvas, ...tags, planeTag);
      const c = { plane, panel, index: i, canvas, cell, tags, planeTag, geom: null };
      attachMouse(c);
      S.cells.push(c);
      grid.append(cell);
    });
  }

  // footer: legend, colour bar, per-slice numbers, slice strip
  const foot = el("div", { class: "foot" });
  if (spec.legend && spec.legend.length) {
    foot.append(el("div", { class: "legend" }, ...spec.legend.map((it) =>
      el("span", {}, el("span", { class: "sw", style: `background:${rgb(it.colour)}` }), it.label))));
  }
  if (spec.heat) foot.append(colourBar(spec.heat));
  ui.stats = el("table", { class: "stats", "data-testid": "slice-stats" });
  const strip = spec.strip ? el("canvas", { class: "strip", "data-testid": "strip" }) : null;
  if (strip) strip.addEventListener("click", (ev) => {
    const r = strip.getBoundingClientRect();
    const z = Math.round(((ev.clientX - r.left - 40) / Math.max(r.width - 50, 1)) * (Z - 1));
    S.active = "axial"; S.pos[0] = clamp(z, 0, Z - 1); draw();
  });
  ui.strip = strip;
  const notes = (spec.notes || []).map((t) => el("div", { class: "note" }, t));
  const help = el("div", { class: "note" },
    "Click a view to move the crosshair; arrow keys, Page Up/Down or the mouse wheel move through the slices of the " +
    "last view clicked; drag to pan when zoomed; right-drag for window/level.");
  root.replaceChildren(title, slices, controls, grid, foot, ui.stats, ...(strip ? [strip] : []), ...notes, help);
  S.ui = ui;
  window.requestAnimationFrame(() => { draw(); });
}

function colourBar(heat) {
  const stops = [];
  for (let i = 0; i < 256; i += 32) stops.push(rgb(heat.lut[i]));
  stops.push(rgb(heat.lut[255]));
  const grad = el("span", { class: "grad", style: `background: linear-gradient(90deg, ${stops.join(",")})` });
  const parts = [el("span", {}, `${heat.label || "anomaly score"}: 0`), grad, el("span", {}, `${fmt(heat.vmax, 3)}+`)];
  if (heat.threshold !== null && heat.threshold !== undefined) {
    const f = clamp(heat.threshold / heat.vmax, 0, 1);
    grad.append(el("span", { class: "thr", style: `left: calc(${(f * 100).toFixed(2)}% - 1px)` }));
    parts.push(el("span", { class: "thrlabel", "data-testid": "threshold-label" },
      `▏pixel threshold ${fmt(heat.threshold, 4)}` + (heat.threshold > heat.vmax ? " (above the scale)" : "")));
  }
  return el("span", { class: "cbar", "data-testid": "colourbar" }, ...parts);
}

// -- mouse and keys -------------------------------------------------------------------------------------------
function attachMouse(c) {
  let down = null;
  c.canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  c.canvas.addEventListener("pointerdown", (ev) => {
    c.canvas.setPointerCapture(ev.pointerId);
    down = { x: ev.clientX, y: ev.clientY, button: ev.button, moved: false, level: S.level, width: S.width,
             pan: S.pan[c.plane].slice() };
    root.focus({ preventScroll: true });
  });
  c.canvas.addEventListener("pointermove", (ev) => {
    if (!down) return;
    const dx = ev.clientX - down.x, dy = ev.clientY - down.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) down.moved = true;
    if (!down.moved) return;
    if (down.button === 2) { // window/level, as in Slicer: horizontal = width, vertical = level
      S.width = clamp(down.width + dx, 1, 255); S.level = clamp(down.level - dy, 0, 255);
    } else if (c.geom) {
      S.pan[c.plane] = [down.pan[0] - dx / c.geom.s, down.pan[1] - dy / c.geom.s];
    }
    draw();
  });
  c.canvas.addEventListener("pointerup", (ev) => {
    if (down && !down.moved && down.button === 0) setCrosshair(c, ev);
    down = null;
  });
  c.canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (ev.ctrlKey) { S.zoom = clamp(S.zoom * (ev.deltaY < 0 ? 1.25 : 0.8), 1, 8); }
    else { S.active = c.plane; step(ev.deltaY > 0 ? -1 : 1); return; }
    draw();
  }, { passive: false });
}

function setCrosshair(c, ev) {
  const g = c.geom;
  if (!g) return;
  const r = c.canvas.getBoundingClientRect();
  const dc = Math.floor((ev.clientX - r.left - g.ox) / (g.s * g.sw));
  const row = Math.floor((ev.clientY - r.top - g.oy) / (g.s * g.sh));
  if (dc < 0 || dc >= g.w || row < 0 || row >= g.h) return;
  const col = flipped(c.plane) ? g.w - 1 - dc : dc;
  const [Z] = S.spec.shape;
  if (c.plane === "axial") { S.pos[2] = col; S.pos[1] = row; }
  else if (c.plane === "coronal") { S.pos[2] = col; S.pos[0] = Z - 1 - row; }
  else { S.pos[1] = col; S.pos[0] = Z - 1 - row; }
  S.active = c.plane;
  draw();
}

function step(delta) {
  const axis = PLANE_AXIS[S.active];
  S.pos[axis] = clamp(S.pos[axis] + delta, 0, S.spec.shape[axis] - 1);
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
window.addEventListener("resize", () => { if (S.spec) draw(); });

// -- drawing ---------------------------------------------------------------------------------------------------
function voxelIndex(plane, row, col) {
  const [Z, Y, X] = S.spec.shape;
  const [z, y, x] = S.pos;
  if (plane === "axial") return z * Y * X + row * X + col;
  if (plane === "coronal") return (Z - 1 - row) * Y * X + y * X + col;
  return (Z - 1 - row) * Y * X + col * X + x;
}

function windowLut() {
  const lo = S.level - S.width / 2;
  for (let v = 0; v < 256; v++) S.wlLut[v] = clamp(((v - lo) / S.width) * 255, 0, 255);
}

// One plane of one panel into an ImageData (screen orientation) plus the label/mask values for outlines.
function rasterise(c, g) {
  const spec = S.spec;
  const base = S.vols[c.panel.base];
  const img = new ImageData(g.w, g.h);
  const px = img.data;
  const flip = flipped(c.plane);
  const ovs = c.panel.overlays;
  const outlines = [];
  for (const o of ovs) {
    if (o.kind === "contour" || (o.kind === "labels" && S.segMode === "outline")) {
      outlines.push({ o, vals: new Uint8Array(g.w * g.h) });
    }
  }
  const heatLut = S.inferno;
  const heat = spec.heat || {};
  const floor = heat.floor ?? 0.2, maxA = (heat.max_alpha ?? 0.85) * S.heatOpacity;
  for (let row = 0; row < g.h; row++) {
    for (let dc = 0; dc < g.w; dc++) {
      const col = flip ? g.w - 1 - dc : dc;
      const vi = voxelIndex(c.plane, row, col);
      const p = (row * g.w + dc) * 4;
      let gval = base ? S.wlLut[base[vi]] : 0;
      let r = gval, gg = gval, b = gval;
      for (let k = 0; k < ovs.length; k++) {
        const o = ovs[k];
        const v = S.vols[o.volume][vi];
        if (!v) continue;
        let colr = null, a = 0;
        if (o.kind === "heat") {
          const h = v / 255;
          const t = (h - floor) / (1 - floor);
          if (t <= 0) continue;
          a = maxA * Math.pow(Math.min(t, 1), 0.6);
          colr = heatLut[v];
        } else if (o.kind === "labels") {
          if (S.segMode !== "filled") continue;
          colr = spec.colours.labels[v] || [200, 200, 200]; a = S.segOpacity;
        } else if (o.kind === "classes") {
          colr = spec.colours.classes[v]; a = o.alpha ?? 0.65;
        } else continue;
        if (!colr) continue;
        r = r * (1 - a) + colr[0] * a; gg = gg * (1 - a) + colr[1] * a; b = b * (1 - a) + colr[2] * a;
      }
      px[p] = r; px[p + 1] = gg; px[p + 2] = b; px[p + 3] = 255;
      for (const ol of outlines) ol.vals[row * g.w + dc] = S.vols[ol.o.volume][vi];
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
        const right = dc + 1 < g.w ? vals[row * g.w + dc + 1] : 0;
        const below = row + 1 < g.h ? vals[(row + 1) * g.w + dc] : 0;
        const left = dc > 0 ? vals[row * g.w + dc - 1] : 0;
        const above = row > 0 ? vals[(row - 1) * g.w + dc] : 0;
        if (!v) continue;
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
      const colr = o.kind === "contour" ? (o.colour || S.spec.colours.contour) : (S.spec.colours.labels[v] || [200, 200, 200]);
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
  const [Z, Y, X] = S.spec.shape;
  const [z, y, x] = S.pos;
  let col, row;
  if (c.plane === "axial") { col = x; row = y; }
  else if (c.plane === "coronal") { col = x; row = Z - 1 - z; }
  else { col = y; row = Z - 1 - z; }
  const dcol = flipped(c.plane) ? g.w - 1 - col : col;
  const cx = g.ox + (dcol + 0.5) * g.s * g.sw, cy = g.oy + (row + 0.5) * g.s * g.sh;
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

function draw() {
  if (!S.spec || !S.cells.length) return;
  windowLut();
  const spec = S.spec;
  const n = spec.panels.length;
  const gap = 6;
  const total = root.clientWidth - 4;
  const cellW = Math.max(60, (total - gap * (n - 1)) / n);
  const maxH = spec.max_cell_height || 360;
  for (const plane of PLANES) {
    const pg = planeGeom(plane);
    const cellH = Math.round(Math.min(maxH, cellW * (pg.h * pg.sh) / (pg.w * pg.sw)));
    for (const c of S.cells) if (c.plane === plane) drawCell(c, cellW, cellH);
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
  ui.lev.input.value = S.level; ui.lev.out.textContent = Math.round(S.level);
  ui.wid.input.value = S.width; ui.wid.out.textContent = Math.round(S.width);
  ui.zoom.input.value = S.zoom; ui.zoom.out.textContent = `${S.zoom.toFixed(2)}×`;
  if (ui.heatOp) ui.heatOp.out.textContent = S.heatOpacity.toFixed(2);
  if (ui.segOp) ui.segOp.out.textContent = S.segOpacity.toFixed(2);
  if (ui.convSelect.value !== S.conv) ui.convSelect.value = S.conv;
  ui.conv.textContent = convText();
  drawStats();
  if (ui.strip) drawStrip(ui.strip);
  // state for tests and the benchmark
  const [z, y, x] = S.pos;
  root.dataset.axial = String(z); root.dataset.coronal = String(y); root.dataset.sagittal = String(x);
  root.dataset.axialLabel = String(spec.slice_labels ? spec.slice_labels[z] : z);
  root.dataset.convention = S.conv;
  root.dataset.caseId = spec.case_id;
  root.dataset.ready = "1";
  const now = performance.now();
  root.dataset.drawnAt = now.toFixed(1);
  if (S.keyAt !== null) {
    const keyAt = S.keyAt;
    S.keyAt = null;
    root.dataset.keyToDrawMs = (now - keyAt).toFixed(1);
    const drawnAt = root.dataset.drawnAt;
    window.requestAnimationFrame(() => {
      root.dataset.keyToFrameMs = (performance.now() - keyAt).toFixed(1);
      root.dataset.frameFor = drawnAt;
    });
  }
  fitHeight();
}

function drawStats() {
  const spec = S.spec;
  const z = S.pos[0];
  const rows = spec.stats || [];
  const tb = S.ui.stats;
  tb.replaceChildren(...rows.map((r) => el("tr", {}, el("td", {}, r.label),
    el("td", { class: "v", "data-stat": r.label }, fmt(r.values[z], r.digits)))));
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
  const L = 40, R = 10, T = 14, B = 16;
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
    ctx.strokeStyle = l.colour; ctx.lineWidth = 1.6; ctx.beginPath();
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
  ctx.textAlign = "left";
  const legendParts = [];
  if (bars.length) legendParts.push(maxBar > 0 ? `bars: ${strip.bar_title || "tumour"} (max ${fmt(maxBar, 0)})` : strip.empty_bars || "no tumour in this case");
  for (const l of lines) legendParts.push(`${l.name}`);
  if (lines.length) legendParts.push(`lines: slice score, 0 to ${fmt(maxLine, 3)}`);
  ctx.fillText(legendParts.join(" · "), L, 10);
  const z = S.pos[0];
  ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(xz(z), T); ctx.lineTo(xz(z), T + ph); ctx.stroke();
  ctx.save(); ctx.translate(12, T + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
  ctx.fillText("per slice", 0, 0); ctx.restore();
}
