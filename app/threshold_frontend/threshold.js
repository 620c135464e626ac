// uad slice thresholds: a Streamlit component (components.v1 protocol, no library, no build step).
//
// Receives from app/threshold.py, once per rerun of the page:
//   args.spec     JSON: per model its id, label, colour, presets, start threshold and score distribution (bins), the
//                 slice-level ROC and PR curves (uad.evaluation.figures.curve_spec), the chart colours, file names;
//   args.l<i>     uint8 labels of model i's labelled slices (1 = tumour);
//   args.s<i>     float64 (little-endian) slice scores of model i, the values of its evaluation's slices.csv.
// At a threshold t the counts are those of uad.evaluation.metrics.operating_point: a slice is called tumour when
// score >= t. Nothing is sent back to Python: moving a threshold never waits for the server. Every string from a
// file (run names, labels) is written with textContent or drawn on a canvas, never parsed as HTML.
"use strict";

const root = document.getElementById("root");
const S = { spec: null, version: null, theme: "dark", models: [], charts: {}, keyAt: null, drawn: 0 };

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
new ResizeObserver(fitHeight).observe(root);
send("streamlit:componentReady", { apiVersion: 1 });

// -- helpers -----------------------------------------------------------------------------------------------
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
function fmt(v, digits) {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits ?? 3);
}
function fmtThr(v) { // a threshold: enough digits to tell neighbouring scores apart on screen
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(4) : v.toPrecision(6).replace(/\.?0+$/, "");
}

// -- the arithmetic (uad.evaluation.metrics.operating_point) ----------------------------------------------------
function lowerBound(a, t) { // first index whose value is >= t
  let lo = 0, hi = a.length;
  while (lo < hi) { const mid = (lo + hi) >>> 1; if (a[mid] < t) lo = mid + 1; else hi = mid; }
  return lo;
}
function ratio(num, den) { return den > 0 ? num / den : NaN; }
function operatingPoint(m, t) {
  const tp = m.tumour.length - lowerBound(m.tumour, t), fp = m.healthy.length - lowerBound(m.healthy, t);
  const fn = m.tumour.length - tp, tn = m.healthy.length - fp;
  return { threshold: t, tn: tn, fp: fp, fn: fn, tp: tp, precision: ratio(tp, tp + fp), recall: ratio(tp, tp + fn),
           specificity: ratio(tn, tn + fp), fpr: ratio(fp, fp + tn), f1: ratio(2 * tp, 2 * tp + fp + fn),
           accuracy: ratio(tp + tn, tp + tn + fp + fn) };
}
function readModel(info, args) {
  const lab = args[info.labels], sc = args[info.scores];
  if (!(lab instanceof Uint8Array) || !(sc instanceof Uint8Array) || sc.length !== 8 * lab.length || lab.length !== info.n) {
    throw new Error(`${info.label}: labels and scores did not arrive whole`);
  }
  const view = new DataView(sc.buffer, sc.byteOffset, sc.byteLength);
  const healthy = [], tumour = [];
  for (let i = 0; i < lab.length; i++) (lab[i] ? tumour : healthy).push(view.getFloat64(8 * i, true));
  const h = Float64Array.from(healthy).sort(), t = Float64Array.from(tumour).sort();
  const all = Float64Array.from([...h, ...t]).sort();
  const uniq = [];
  for (let i = 0; i < all.length; i++) if (i === 0 || all[i] !== all[i - 1]) uniq.push(all[i]);
  return { info: info, healthy: h, tumour: t, uniq: Float64Array.from(uniq), t: info.start, p: null, ui: {} };
}

// -- charts on canvas -------------------------------------------------------------------------------------------
const DASH = { solid: [], dash: [6, 4], dot: [2, 3] };
function chromeFor() { // the chosen style (light), else the app's theme: on screen and in downloads alike
  return S.spec.style === "light" ? S.spec.chrome.light : S.spec.chrome[S.theme];
}
function niceTicks(lo, hi, n) {
  const span = hi - lo || 1, raw = span / Math.max(n, 1), mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw * 0.999) || 10 * mag;
  const out = [];
  for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i++) out.push(i === 0 ? 0 : i * step);
  const decimals = (String(+step.toPrecision(6)).split(".")[1] || "").length;
  return { ticks: out, digits: decimals };
}
function legendRows(ctx, items, width) {
  ctx.font = "12px system-ui, sans-serif";
  const rows = [[]];
  let x = 0;
  for (const it of items) {
    const w = 24 + ctx.measureText(it.name).width + 14;
    if (x + w > width && rows[rows.length - 1].length) { rows.push([]); x = 0; }
    rows[rows.length - 1].push(Object.assign({ x: x, w: w }, it));
    x += w;
  }
  return items.length ? rows : [];
}
function drawLegend(ctx, rows, left, top, c) {
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  rows.forEach((row, r) => {
    const y = top + 8 + r * 17;
    for (const it of row) {
      ctx.save();
      ctx.strokeStyle = it.colour; ctx.fillStyle = it.colour; ctx.globalAlpha = it.alpha ?? 1;
      if (it.box) { ctx.fillRect(left + it.x, y - 5, 18, 10); }
      else { ctx.lineWidth = Math.min(it.width || 2, 3); ctx.setLineDash(DASH[it.dash] || []); ctx.beginPath();
             ctx.moveTo(left + it.x, y); ctx.lineTo(left + it.x + 18, y); ctx.stroke(); }
      ctx.restore();
      ctx.fillStyle = c.text;
      ctx.fillText(it.name, left + it.x + 24, y);
    }
  });
}
// A plot area with axes, ticks and titles in a (w x h) region whose top left is (ox, oy); returns its transform.
function axes(ctx, ox, oy, w, h, xr, yr, xTitle, yTitle, c, opaque) {
  const M = { l: 52, r: 12, t: 8, b: 40 };
  const box = { x: ox + M.l, y: oy + M.t, w: Math.max(w - M.l - M.r, 10), h: Math.max(h - M.t - M.b, 10) };
  const X = (v) => box.x + (v - xr[0]) / (xr[1] - xr[0]) * box.w;
  const Y = (v) => box.y + box.h - (v - yr[0]) / (yr[1] - yr[0]) * box.h;
  if (opaque) { ctx.fillStyle = c.background; ctx.fillRect(ox, oy, w, h); }
  ctx.font = "11.5px system-ui, sans-serif";
  ctx.lineWidth = 1; ctx.setLineDash([]);
  const xt = niceTicks(xr[0], xr[1], Math.max(3, Math.floor(box.w / 70))), yt = niceTicks(yr[0], yr[1], Math.max(3, Math.floor(box.h / 45)));
  ctx.strokeStyle = c.grid; ctx.fillStyle = c.muted;
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const v of xt.ticks) {
    const x = Math.round(X(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, box.y); ctx.lineTo(x, box.y + box.h); ctx.stroke();
    ctx.fillText(v.toFixed(xt.digits), x, box.y + box.h + 4);
  }
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of yt.ticks) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(box.x, y); ctx.lineTo(box.x + box.w, y); ctx.stroke();
    ctx.fillText(v.toFixed(yt.digits), box.x - 5, y);
  }
  ctx.fillStyle = c.text; ctx.font = "12.5px system-ui, sans-serif";
  ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  ctx.fillText(xTitle, box.x + box.w / 2, oy + h - 2);
  ctx.save(); ctx.translate(ox + 12, box.y + box.h / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = "middle";
  ctx.fillText(yTitle, 0, 0); ctx.restore();
  return { X: X, Y: Y, box: box };
}
function clip(ctx, box) { ctx.save(); ctx.beginPath(); ctx.rect(box.x, box.y, box.w, box.h); ctx.clip(); }

function drawCurve(ctx, ox, oy, w, h, curve, c, opaque) {
  const items = curve.lines.map((l) => ({ name: l.name, colour: l.colour, dash: l.dash, width: l.width }));
  const rows = legendRows(ctx, items, w - 52);
  const legendH = rows.length * 17 + 6;
  const tx = axes(ctx, ox, oy, w, h - legendH, curve.x.range, curve.y.range, curve.x.title, curve.y.title, c, opaque);
  clip(ctx, tx.box);
  if (curve.diagonal) {
    ctx.strokeStyle = "#999999"; ctx.lineWidth = 1; ctx.setLineDash([]);
    ctx.beginPath(); ctx.moveTo(tx.X(0), tx.Y(0)); ctx.lineTo(tx.X(1), tx.Y(1)); ctx.stroke();
  }
  for (const l of curve.lines) {
    ctx.strokeStyle = l.colour; ctx.lineWidth = l.width; ctx.setLineDash(DASH[l.dash] || []); ctx.lineJoin = "round";
    ctx.beginPath();
    let started = false;
    for (let i = 0; i < l.x.length; i++) {
      if (l.x[i] === null || l.y[i] === null) { started = false; continue; }
      const x = tx.X(l.x[i]), y = tx.Y(l.y[i]);
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    }
    ctx.stroke();
  }
  ctx.restore();
  drawLegend(ctx, rows, ox + 52, oy + h - legendH, c);
  return tx;
}
function curveDot(kind, m) {
  const p = m.p;
  return kind === "roc" ? [p.fpr, p.recall] : [p.recall, p.precision];
}
function drawDots(ctx, tx, kind) {
  for (const m of S.models) {
    const [x, y] = curveDot(kind, m);
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    ctx.beginPath(); ctx.arc(tx.X(x), tx.Y(y), 6.5, 0, 2 * Math.PI);
    ctx.fillStyle = m.info.colour; ctx.fill();
    ctx.lineWidth = 2; ctx.setLineDash([]); ctx.strokeStyle = "#ffffff"; ctx.stroke();
  }
}
function drawHist(ctx, ox, oy, w, h, dist, c, opaque) {
  const e = dist.edges, n = e.length - 1;
  const top = Math.max(1, ...dist.series.map((s) => Math.max(...s.counts)));
  const rows = legendRows(ctx, dist.series.map((s) => ({ name: s.name, colour: s.colour, box: true, alpha: 0.65 })), w - 52);
  const legendH = rows.length * 17 + 6;
  const tx = axes(ctx, ox, oy, w, h - legendH, [e[0], e[n]], [0, top * 1.05], dist.x_title, dist.y_title, c, opaque);
  clip(ctx, tx.box);
  for (const s of dist.series) {
    ctx.fillStyle = s.colour; ctx.globalAlpha = 0.65;
    for (let i = 0; i < n; i++) {
      if (!s.counts[i]) continue;
      const x0 = tx.X(e[i]), x1 = tx.X(e[i + 1]), y = tx.Y(s.counts[i]);
      ctx.fillRect(x0, y, Math.max(x1 - x0, 1), tx.Y(0) - y);
    }
    ctx.globalAlpha = 1;
  }
  ctx.restore();
  drawLegend(ctx, rows, ox + 52, oy + h - legendH, c);
  return tx;
}
function drawThreshold(ctx, tx, t, dist) {
  const lo = dist.edges[0], hi = dist.edges[dist.edges.length - 1];
  const x = tx.X(Math.min(Math.max(t, lo), hi));
  ctx.strokeStyle = dist.threshold.colour; ctx.lineWidth = 2; ctx.setLineDash(DASH[dist.threshold.dash] || []);
  ctx.beginPath(); ctx.moveTo(x, tx.box.y); ctx.lineTo(x, tx.box.y + tx.box.h); ctx.stroke(); ctx.setLineDash([]);
}

// A canvas pair (base: axes and data; over: what a threshold moves) sized to its container.
function canvasPair(holder, height) {
  const base = el("canvas"), over = el("canvas", { class: "over" });
  const stack = el("div", { class: "stack" }, base, over);
  holder.append(stack);
  return { base: base, over: over, stack: stack, height: height };
}
function sizeCanvas(cv, w, h) {
  const dpr = window.devicePixelRatio || 1;
  cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
  cv.style.width = w + "px"; cv.style.height = h + "px";
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}
function layoutChart(ch, drawBase) {
  const w = Math.max(ch.stack.clientWidth, 200), h = ch.height;
  const ctx = sizeCanvas(ch.base, w, h);
  ch.w = w;
  ch.tx = drawBase(ctx, w, h);
  ch.octx = sizeCanvas(ch.over, w, h);
}

// -- downloads: the chart as drawn, with its title and what it shows ---------------------------------------------------
function download(name, title, subtitle, draw) {
  const W = 960, H = 560, titleH = subtitle ? 58 : 38, scale = 2;
  const c = chromeFor();
  const cv = document.createElement("canvas");
  cv.width = W * scale; cv.height = (H + titleH) * scale;
  const ctx = cv.getContext("2d");
  ctx.scale(scale, scale);
  ctx.fillStyle = c.background; ctx.fillRect(0, 0, W, H + titleH);
  ctx.fillStyle = c.text; ctx.textAlign = "left"; ctx.textBaseline = "top";
  ctx.font = "600 17px system-ui, sans-serif"; ctx.fillText(title, 14, 12);
  if (subtitle) { ctx.fillStyle = c.muted; ctx.font = "13px system-ui, sans-serif"; ctx.fillText(subtitle, 14, 36, W - 28); }
  draw(ctx, 8, titleH, W - 16, H - 8, c);
  cv.toBlob((blob) => {
    const a = el("a", { href: URL.createObjectURL(blob), download: name + ".png" });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    root.dataset.downloaded = name + ".png";
  }, "image/png");
}
function thresholdsWords() {
  return S.models.map((m) => `${m.info.label} at ${fmtThr(m.t)}`).join("; ");
}

// -- building the page --------------------------------------------------------------------------------------
function onRender(args, theme) {
  S.theme = theme && theme.base === "light" ? "light" : "dark";
  const paper = Boolean(args.spec && args.spec.style === "light");
  document.body.classList.toggle("light", S.theme === "light" || paper);
  document.body.classList.toggle("paper", paper);
  const spec = args.spec;
  if (!spec) return;
  if (spec.version === S.version) { fitHeight(); return; } // an unchanged rerun: thresholds stay as they are
  try {
    const models = spec.models.map((info) => readModel(info, args));
    const before = new Map(S.models.map((m) => [m.info.id, m.t]));
    S.spec = spec; S.version = spec.version; S.models = models;
    for (const m of models) {
      const kept = before.has(m.info.id) ? before.get(m.info.id) : storedThreshold(m);
      m.t = Number.isFinite(kept) ? kept : m.info.start;
      m.p = operatingPoint(m, m.t);
    }
    build();
  } catch (err) {
    root.replaceChildren(el("div", { class: "error" }, "Thresholds: " + err.message));
    fitHeight();
  }
}
function storageKey(m) { return `${S.spec.storage_key}::${m.info.id}`; }
function storedThreshold(m) {
  try { const v = window.sessionStorage.getItem(storageKey(m)); return v === null ? NaN : Number(v); }
  catch (e) { return NaN; } // storage refused (privacy settings): start from the preset
}
function store(m) {
  try { window.sessionStorage.setItem(storageKey(m), String(m.t)); } catch (e) { /* not kept: fine */ }
}

function build() {
  const spec = S.spec;
  S.charts = {};
  const charts = el("div", { class: "charts" });
  for (const kind of ["roc", "pr"]) {
    const curve = spec.curves[kind];
    const holder = el("div", { class: "chart", "data-chart": kind });
    const btn = el("button", { type: "button", title: "Download this chart as a PNG, titled with its data and thresholds" }, "PNG");
    holder.append(el("div", { class: "head" }, el("span", { class: "title" }, curve.title), btn));
    const ch = canvasPair(holder, 330);
    const tip = el("div", { class: "tip" });
    holder.querySelector(".stack").append(tip);
    ch.kind = kind; ch.curve = curve; ch.tip = tip;
    btn.addEventListener("click", () => download(spec.files[kind], curve.title, `${spec.where} · ${thresholdsWords()}`,
      (ctx, ox, oy, w, h, c) => { const tx = drawCurve(ctx, ox, oy, w, h, curve, c, false); drawDots(ctx, tx, kind); }));
    ch.over.addEventListener("mousemove", (ev) => hover(ch, ev));
    ch.over.addEventListener("mouseleave", () => { ch.tip.style.display = "none"; });
    ch.over.addEventListener("click", (ev) => pick(ch, ev));
    S.charts[kind] = ch;
    charts.append(holder);
  }
  const n = S.models.length;
  const panels = el("div", { class: "panels", style: `grid-template-columns: repeat(${Math.max(2, Math.min(n, 3))}, minmax(0, 1fr))` });
  for (const m of S.models) panels.append(panel(m));
  root.replaceChildren(
    charts,
    el("div", { class: "note" }, "Dots: each model's operating point at its threshold below. Hover a model's curve for the " +
       "threshold of each point; click to move its threshold there. Dashed/dotted: baselines."),
    el("h5", {}, "Operating points"),
    el("div", { class: "note" }, `Counted in this browser from each evaluation's labelled slices on ${spec.where} ` +
       "(slices.csv), as uad counts them: a slice is called tumour when its score is at or above the threshold. " +
       "Youden's J and best F1 are chosen on these same labels (oracle operating points)."),
    panels);
  layoutAll();
  for (const m of S.models) update(m, "init");
  root.dataset.ready = "1";
  root.dataset.version = spec.version;
  fitHeight();
}
function layoutAll() {
  for (const kind of ["roc", "pr"]) {
    const ch = S.charts[kind];
    layoutChart(ch, (ctx, w, h) => drawCurve(ctx, 0, 0, w, h, ch.curve, chromeFor(), S.spec.style === "light"));
  }
  for (const m of S.models) {
    const ch = m.ui.chart;
    layoutChart(ch, (ctx, w, h) => drawHist(ctx, 0, 0, w, h, m.info.distribution, chromeFor(), S.spec.style === "light"));
  }
  drawOverlays(null);
}
let resizing = 0;
window.addEventListener("resize", () => {
  if (!S.spec || resizing) return;
  resizing = requestAnimationFrame(() => { resizing = 0; layoutAll(); fitHeight(); });
});

function panel(m) {
  const info = m.info;
  const slider = el("input", { type: "range", min: "0", max: String(Math.max(m.uniq.length - 1, 0)), step: "1",
                               "aria-label": `Slice-score threshold of ${info.label}`, "data-role": "slider" });
  const box = el("input", { type: "number", step: "any", "aria-label": `Threshold value of ${info.label}`, "data-role": "value" });
  slider.addEventListener("keydown", (ev) => { S.keyAt = ev.timeStamp; });
  slider.addEventListener("pointerdown", (ev) => { S.keyAt = ev.timeStamp; });
  slider.addEventListener("input", (ev) => {
    if (S.keyAt === null) S.keyAt = ev.timeStamp;
    setThreshold(m, m.uniq[Number(slider.value)], "slider");
  });
  box.addEventListener("change", () => {
    const v = Number(box.value);
    if (box.value.trim() !== "" && Number.isFinite(v)) { S.keyAt = performance.now(); setThreshold(m, v, "value"); }
    else box.value = String(m.t);
  });
  const presets = el("div", { class: "row presets" }, el("span", { class: "sub" }, "Set to:"));
  for (const p of info.presets) {
    presets.append(el("button", { type: "button", title: `Threshold ${p.threshold} (chosen on these labels)`,
                                  onclick: () => { S.keyAt = performance.now(); setThreshold(m, p.threshold, "preset"); } }, p.name));
  }
  const nums = {};
  const numbers = el("div", { class: "numbers" });
  for (const [k, label] of [["precision", "Precision"], ["recall", "Recall"], ["f1", "F1"], ["specificity", "Specificity"]]) {
    nums[k] = el("div", { class: "v", "data-metric": k });
    numbers.append(el("div", {}, el("div", { class: "k" }, label), nums[k]));
  }
  const cells = {};
  for (const k of ["tp", "fn", "fp", "tn"]) cells[k] = el("td", { "data-count": k });
  const cm = el("table", { class: "cm" },
    el("tr", {}, el("th", {}, ""), el("th", {}, "predicted tumour"), el("th", {}, "predicted healthy")),
    el("tr", {}, el("th", {}, "tumour slices"), cells.tp, cells.fn),
    el("tr", {}, el("th", {}, "healthy slices"), cells.fp, cells.tn));
  const holder = el("div", { class: "chart" });
  const dbtn = el("button", { type: "button", title: "Download this chart as a PNG, titled with its data and threshold" }, "PNG");
  holder.append(el("div", { class: "head" }, el("span", { class: "sub" }, "slice scores"), dbtn));
  const chart = canvasPair(holder, 190);
  dbtn.addEventListener("click", () => download(info.file, `Slice-score distribution · ${info.label}`,
    `${S.spec.where} · threshold ${fmtThr(m.t)}`, (ctx, ox, oy, w, h, c) => {
      const tx = drawHist(ctx, ox, oy, w, h, info.distribution, c, false); drawThreshold(ctx, tx, m.t, info.distribution); }));
  const thrText = el("span", { class: "sub", "data-role": "counts" });
  const node = el("div", { class: "panel", "data-model": info.id },
    el("div", { class: "name" }, el("span", { class: "dot", style: `color:${info.colour}` }, "●"), info.label),
    el("div", { class: "row" }, el("label", {}, "Slice-score threshold"), slider, box),
    presets, numbers, cm, thrText, holder);
  m.ui = { node: node, slider: slider, box: box, nums: nums, cells: cells, chart: chart, counts: thrText };
  return node;
}

function setThreshold(m, t, source) {
  m.t = t;
  update(m, source);
  store(m);
}
function update(m, source) {
  const p = operatingPoint(m, m.t);
  m.p = p;
  const ui = m.ui;
  if (source !== "slider") ui.slider.value = String(Math.min(lowerBound(m.uniq, m.t), Math.max(m.uniq.length - 1, 0)));
  if (source !== "value") ui.box.value = String(m.t);
  for (const k of ["precision", "recall", "f1", "specificity"]) ui.nums[k].textContent = fmt(p[k]);
  for (const k of ["tp", "fn", "fp", "tn"]) ui.cells[k].textContent = String(p[k]);
  ui.counts.textContent = `${p.tp + p.fp} of ${m.healthy.length + m.tumour.length} slices flagged · ` +
                          `${m.tumour.length} tumour, ${m.healthy.length} healthy`;
  const d = ui.node.dataset;
  d.threshold = String(m.t);
  for (const k of ["tp", "fp", "fn", "tn", "precision", "recall", "f1", "specificity", "fpr", "accuracy"]) d[k] = String(p[k]);
  if (source !== "init") drawOverlays(m);
}
function drawOverlays(moved) {
  for (const kind of ["roc", "pr"]) {
    const ch = S.charts[kind];
    if (!ch || !ch.octx) continue;
    ch.octx.clearRect(0, 0, ch.w, ch.height);
    drawDots(ch.octx, ch.tx, kind);
  }
  for (const m of S.models) {
    if (moved && m !== moved) continue;
    const ch = m.ui.chart;
    if (!ch || !ch.octx) continue;
    ch.octx.clearRect(0, 0, ch.w, ch.height);
    drawThreshold(ch.octx, ch.tx, m.t, m.info.distribution);
  }
  S.drawn += 1;
  const drawnAt = String(S.drawn);
  root.dataset.drawnAt = drawnAt;
  if (S.keyAt !== null) {
    const keyAt = S.keyAt;
    root.dataset.keyToDrawMs = (performance.now() - keyAt).toFixed(2);
    S.keyAt = null;
    requestAnimationFrame(() => {
      root.dataset.keyToFrameMs = (performance.now() - keyAt).toFixed(2);
      root.dataset.frameFor = drawnAt;
    });
  }
}

// -- hovering and clicking a curve ------------------------------------------------------------------------------
function nearest(ch, ev) {
  const r = ch.over.getBoundingClientRect(), px = ev.clientX - r.left, py = ev.clientY - r.top;
  let best = null;
  for (const line of ch.curve.lines) {
    if (line.method === null || line.method === undefined) continue;
    for (let i = 0; i < line.x.length; i++) {
      if (line.x[i] === null || line.y[i] === null) continue;
      const d = Math.hypot(ch.tx.X(line.x[i]) - px, ch.tx.Y(line.y[i]) - py);
      if (d < 12 && (!best || d < best.d)) best = { d: d, line: line, i: i, px: px, py: py };
    }
  }
  return best;
}
function hover(ch, ev) {
  const b = nearest(ch, ev);
  if (!b) { ch.tip.style.display = "none"; ch.over.style.cursor = "default"; return; }
  const thr = b.line.thresholds ? b.line.thresholds[b.i] : null;
  const [xn, yn] = ch.kind === "roc" ? ["FPR", "recall"] : ["recall", "precision"];
  ch.tip.textContent = `${b.line.name}: ${xn} ${fmt(b.line.x[b.i])} · ${yn} ${fmt(b.line.y[b.i])} · threshold ` +
                       (Number.isFinite(thr) ? `${fmtThr(thr)} (click to use)` : "above every score");
  ch.tip.style.display = "block";
  ch.tip.style.left = Math.min(b.px + 12, ch.w - ch.tip.offsetWidth - 4) + "px";
  ch.tip.style.top = Math.max(b.py - 28, 0) + "px";
  ch.over.style.cursor = Number.isFinite(thr) ? "pointer" : "default";
}
function pick(ch, ev) {
  const b = nearest(ch, ev);
  const thr = b && b.line.thresholds ? b.line.thresholds[b.i] : null;
  if (!b || !Number.isFinite(thr)) return;
  S.keyAt = ev.timeStamp;
  setThreshold(S.models[b.line.method], thr, "curve");
}
