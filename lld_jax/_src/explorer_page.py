"""The HTML/CSS/JS template of :func:`lld_jax.slices.explorer_html` (self-contained: nothing is fetched).

``__TITLE__`` and ``__DATA__`` (the JSON payload, arrays as little-endian base64) are filled in.
The hover maths mirrors :func:`lld_jax._src.explorer.payload_values` operation for operation.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title><link rel="icon" href="data:,">
<style>
body{margin:0;font:13px/1.4 system-ui,sans-serif;display:flex;height:100vh;overflow:hidden;color:#222}
#plot{flex:1;position:relative;min-width:200px}
#plot canvas{position:absolute;left:0;top:0;width:100%;height:100%}
#side{width:330px;padding:10px 12px;border-left:1px solid #ccc;overflow-y:auto;background:#fafafa}
h1{font-size:15px;margin:0 0 8px}
button{margin:0 4px 4px 0;padding:3px 8px;border:1px solid #999;background:#fff;border-radius:3px;cursor:pointer}
button.on{background:#2c6fbb;color:#fff;border-color:#2c6fbb}
#panel{margin-top:8px;padding:8px;background:#fff;border:1px solid #ccc;border-radius:4px;font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;min-height:190px}
#panel b{font-family:system-ui,sans-serif}
.legend span{display:inline-block;width:12px;height:12px;margin:0 3px 0 8px;vertical-align:middle;border:1px solid #888}
.note{color:#666;font-size:11px;margin-top:8px}
</style></head><body>
<div id="plot"><canvas id="base"></canvas><canvas id="over"></canvas></div>
<div id="side"><h1 id="title"></h1>
<div id="modelButtons"></div>
<div><button id="byClass" class="on">colour: class</button><button id="byPattern">colour: pattern</button><button id="edges" class="on">region edges</button><button id="reset">reset view</button></div>
<div id="panel">hover over the plot</div>
<div class="legend" id="legend"></div>
<div class="note">Exact values from each region's affine maps: margin = exact l2 distance (full input space) to the region's boundary;
certified = min(margin, d_D) less 64 epsilons, d_D = distance to the region's affine decision boundary. Wheel: zoom, drag: pan.</div>
</div>
<script type="application/json" id="lld-data">__DATA__</script>
<script>
(() => {
"use strict";
const T0 = performance.now(), D = JSON.parse(document.getElementById("lld-data").textContent), timings = {parse: performance.now() - T0};
const TYPES = {f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array};
function decode(o) {
  const s = atob(o.b64 !== undefined ? o.b64 : o), u8 = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u8[i] = s.charCodeAt(i);
  return new (TYPES[o.dtype] || Float64Array)(u8.buffer);
}
const CLASS_FILL = ["#aec7e8","#ffbb78","#98df8a","#ff9896","#c5b0d5","#c49c94","#f7b6d2","#d9d9d9","#dbdb8d","#9edae5"];
const CLASS_DOT = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
const NPAL = 509, SLACK = 64 * Math.pow(2, -52);
const palette = Array.from({length: NPAL}, (_, i) => `hsl(${(i * 137.508) % 360},${45 + (i * 7) % 35}%,${58 + (i * 13) % 25}%)`);
const fillOf = c => CLASS_FILL[((c % 10) + 10) % 10];
const poly = D.polygon.flat();
const pts = decode({b64: D.points.uv, dtype: "f8"}), ptLab = decode({b64: D.points.labels, dtype: "i4"});
const names = Object.keys(D.models);
const models = {};
for (const name of names) {
  const m = D.models[name], M = {name, R: m.numRegions, L: m.numLogits, layerSizes: m.layerSizes};
  for (const [k, v] of Object.entries(m)) if (v && v.b64 !== undefined) M[k] = decode(v);
  models[name] = M;
}
timings.decode = performance.now() - T0 - timings.parse;
let bu0 = Infinity, bu1 = -Infinity, bv0 = Infinity, bv1 = -Infinity;
for (let i = 0; i < poly.length; i += 2) { bu0 = Math.min(bu0, poly[i]); bu1 = Math.max(bu1, poly[i]); bv0 = Math.min(bv0, poly[i + 1]); bv1 = Math.max(bv1, poly[i + 1]); }

function insideConvex(V, o0, o1, u, v, tol) {  // CCW polygon V[2*o0 .. 2*o1)
  const n = o1 - o0;
  for (let i = 0; i < n; i++) {
    const p = 2 * (o0 + i), q = 2 * (o0 + (i + 1) % n);
    const ex = V[q] - V[p], ey = V[q + 1] - V[p + 1];
    if (ex * (v - V[p + 1]) - ey * (u - V[p]) < -tol) return false;
  }
  return true;
}
function buildGrid(M) {  // uniform grid of region indices over the polygon's box, for hover lookup
  const G = Math.max(1, Math.min(1024, Math.ceil(1.5 * Math.sqrt(M.R)))), V = M.vertices, O = M.vertexOffsets;
  const du = (bu1 - bu0) / G || 1, dv = (bv1 - bv0) / G || 1, cell = (x, lo, d) => Math.min(G - 1, Math.max(0, Math.floor((x - lo) / d)));
  const boxes = new Int32Array(4 * M.R), count = new Int32Array(G * G + 1);
  for (let r = 0; r < M.R; r++) {
    let a0 = Infinity, a1 = -Infinity, b0 = Infinity, b1 = -Infinity;
    for (let k = O[r]; k < O[r + 1]; k++) { a0 = Math.min(a0, V[2 * k]); a1 = Math.max(a1, V[2 * k]); b0 = Math.min(b0, V[2 * k + 1]); b1 = Math.max(b1, V[2 * k + 1]); }
    const bx = [cell(a0, bu0, du), cell(a1, bu0, du), cell(b0, bv0, dv), cell(b1, bv0, dv)];
    boxes.set(bx, 4 * r);
    for (let i = bx[0]; i <= bx[1]; i++) for (let j = bx[2]; j <= bx[3]; j++) count[i * G + j + 1]++;
  }
  for (let c = 0; c < G * G; c++) count[c + 1] += count[c];
  const fill = count.slice(0, G * G), list = new Int32Array(count[G * G]);
  for (let r = 0; r < M.R; r++)
    for (let i = boxes[4 * r]; i <= boxes[4 * r + 1]; i++) for (let j = boxes[4 * r + 2]; j <= boxes[4 * r + 3]; j++) list[fill[i * G + j]++] = r;
  M.grid = {G, du, dv, cell, start: count, list};
}
function locate(M, u, v) {
  if (!M.grid) buildGrid(M);
  const g = M.grid, c = g.cell(u, bu0, g.du) * g.G + g.cell(v, bv0, g.dv);
  for (let k = g.start[c]; k < g.start[c + 1]; k++) {
    const r = g.list[k];
    if (insideConvex(M.vertices, M.vertexOffsets[r], M.vertexOffsets[r + 1], u, v, 1e-12)) return r;
  }
  return -1;
}
function valuesAt(u, v, name) {
  const M = models[name === undefined ? current : name];
  if (!M) throw new Error(`no model ${name}; models: ${names.join(", ")}`);
  const none = {outside: true, region: -1, hash: null, cls: null, logits: null, margin: null, neuron: null, layer: null, unit: null, boundaryDistance: null, certified: null};
  if (!insideConvex(poly, 0, poly.length / 2, u, v, 1e-12)) return none;
  const r = locate(M, u, v);
  if (r < 0) return none;
  const L = M.L, lg = M.logits, f = new Array(L);
  for (let l = 0; l < L; l++) { const o = 3 * (r * L + l); f[l] = lg[o] + u * lg[o + 1] + v * lg[o + 2]; }
  let margin = Infinity, neuron = -1;
  for (let c = M.candOffsets[r]; c < M.candOffsets[r + 1]; c++) {
    const A = M.candAffine, t = Math.abs(A[4 * c] + u * A[4 * c + 1] + v * A[4 * c + 2]) / A[4 * c + 3];
    if (t < margin || neuron < 0) { margin = t; neuron = M.candNeuron[c]; }
  }
  let cls = 0;
  if (L === 1) cls = f[0] > 0 ? 1 : 0; else for (let l = 1; l < L; l++) if (f[l] > f[cls]) cls = l;
  let dD = NaN;
  for (let k = M.classOffsets[r]; k < M.classOffsets[r + 1]; k++) {
    if (M.classIds[k] !== cls) continue;
    dD = Infinity;
    for (let l = 0; l < L; l++) {
      if (L > 1 && l === cls) continue;
      const n = M.classNorms[k * L + l], m = L === 1 ? Math.abs(f[0]) : f[cls] - f[l];
      dD = Math.min(dD, n > 0 ? Math.max(m, 0) / n : (m > 0 ? Infinity : 0));
    }
    break;
  }
  let layer = -1, unit = -1;
  if (neuron >= 0) { let s = 0; for (layer = 0; neuron >= s + M.layerSizes[layer]; layer++) s += M.layerSizes[layer]; unit = neuron - s; }
  return {outside: false, region: r, hash: M.hashes[r].toString(16).padStart(8, "0"), cls, logits: f, margin, neuron, layer, unit,
          boundaryDistance: dD, certified: Math.min(margin, dD) * (1 - SLACK)};
}

// ---- view and drawing ----
const plot = document.getElementById("plot"), base = document.getElementById("base"), over = document.getElementById("over");
const ctx = base.getContext("2d"), octx = over.getContext("2d");
let current = names[0], mode = "class", edges = true, view = {s: 1, ox: 0, oy: 0}, dpr = 1, hoverUV = null;
function resetView() {
  const w = plot.clientWidth, h = plot.clientHeight, pad = 50;
  const s = Math.min((w - 2 * pad) / ((bu1 - bu0) || 1), (h - 2 * pad) / ((bv1 - bv0) || 1));
  view = {s, ox: w / 2 - s * (bu0 + bu1) / 2, oy: h / 2 + s * (bv0 + bv1) / 2};
}
const uvToLocal = (u, v) => [view.ox + view.s * u, view.oy - view.s * v];
function uvToScreen(u, v) { const b = base.getBoundingClientRect(), [x, y] = uvToLocal(u, v); return {x: b.left + x, y: b.top + y}; }
function screenToUV(x, y) { const b = base.getBoundingClientRect(); return {u: (x - b.left - view.ox) / view.s, v: (view.oy - (y - b.top)) / view.s}; }
function polyPath(path, V, O, i) {
  const k0 = O[i], k1 = O[i + 1];
  path.moveTo(V[2 * k0], V[2 * k0 + 1]);
  for (let k = k0 + 1; k < k1; k++) path.lineTo(V[2 * k], V[2 * k + 1]);
  path.closePath();
}
class Paths {  // a list of Path2D of at most 256 polygons each: appending to one long Path2D is quadratic in Chromium
  constructor() { this.list = []; this.n = 0; }
  next() { if (this.n++ % 256 === 0) this.list.push(new Path2D()); return this.list[this.list.length - 1]; }
}
function paths(M) {  // Path2D objects in (u, v) coordinates, built once per model
  if (M.paths) return M.paths;
  const t = performance.now(), byClass = new Map(), byPattern = new Map(), outline = new Paths(), bound = new Paths();
  for (let i = 0; i < M.fillClass.length; i++) {
    const c = M.fillClass[i];
    if (!byClass.has(c)) byClass.set(c, new Paths());
    polyPath(byClass.get(c).next(), M.fillVertices, M.fillOffsets, i);
  }
  for (let r = 0; r < M.R; r++) {
    const c = M.hashes[r] % NPAL;
    if (!byPattern.has(c)) byPattern.set(c, new Paths());
    polyPath(byPattern.get(c).next(), M.vertices, M.vertexOffsets, r);
    polyPath(outline.next(), M.vertices, M.vertexOffsets, r);
  }
  const B = M.boundary;
  for (let i = 0; i < B.length; i += 4) { const p = bound.next(); p.moveTo(B[i], B[i + 1]); p.lineTo(B[i + 2], B[i + 3]); }
  timings.paths = (timings.paths || 0) + performance.now() - t;
  return (M.paths = {byClass, byPattern, outline, bound});
}
function fillAll(P, colour, s) {
  ctx.fillStyle = colour; ctx.strokeStyle = colour; ctx.lineWidth = 0.6 / s;
  for (const p of P.list) { ctx.fill(p); ctx.stroke(p); }  // the stroke hides anti-aliasing seams between neighbours
}
function niceStep(range) { const raw = range / 8, e = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / e; return e * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10); }
function draw() {
  const t = performance.now(), w = plot.clientWidth, h = plot.clientHeight;
  dpr = window.devicePixelRatio || 1;
  for (const c of [base, over]) if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
  const M = models[current], P = paths(M), s = view.s;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, base.width, base.height);
  ctx.setTransform(dpr * s, 0, 0, -dpr * s, dpr * view.ox, dpr * view.oy);
  if (mode === "class") for (const [c, P0] of P.byClass) fillAll(P0, fillOf(c), s);
  else for (const [c, P0] of P.byPattern) fillAll(P0, palette[c], s);
  if (edges) { ctx.strokeStyle = "rgba(60,60,60,0.45)"; ctx.lineWidth = 0.5 / s; for (const p of P.outline.list) ctx.stroke(p); }
  ctx.strokeStyle = "#000"; ctx.lineWidth = 2.2 / s; for (const p of P.bound.list) ctx.stroke(p);
  ctx.beginPath(); ctx.moveTo(poly[0], poly[1]); for (let i = 2; i < poly.length; i += 2) ctx.lineTo(poly[i], poly[i + 1]); ctx.closePath();
  ctx.strokeStyle = "#444"; ctx.lineWidth = 1 / s; ctx.stroke();
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  for (let i = 0; i < D.points.count; i++) {
    const [x, y] = uvToLocal(pts[2 * i], pts[2 * i + 1]), l = ptLab[i];
    ctx.beginPath(); ctx.arc(x, y, 4, 0, 2 * Math.PI); ctx.fillStyle = l >= 0 ? CLASS_DOT[l % 10] : "#fff"; ctx.fill();
    ctx.lineWidth = 1; ctx.strokeStyle = "#000"; ctx.stroke();
  }
  drawAxes(w, h);
  if (window.lldExplorer.drawMs === null) ctx.getImageData(0, 0, 1, 1);  // the first draw waits for the rasterisation: drawMs is of the full draw
  window.lldExplorer.lastDrawMs = performance.now() - t;
  drawHover();
}
function drawAxes(w, h) {
  const [u0, u1, v0, v1] = [-view.ox / view.s, (w - view.ox) / view.s, (view.oy - h) / view.s, view.oy / view.s];
  ctx.fillStyle = "rgba(255,255,255,0.85)"; ctx.fillRect(0, h - 20, w, 20); ctx.fillRect(0, 0, 46, h);
  ctx.fillStyle = "#222"; ctx.strokeStyle = "#222"; ctx.lineWidth = 1; ctx.font = "11px system-ui,sans-serif";
  const su = niceStep(u1 - u0), sv = niceStep(v1 - v0), lab = (x, st) => { const d = Math.max(0, -Math.floor(Math.log10(st) + 1e-9)); return (Math.abs(x) < st / 1e6 ? 0 : x).toFixed(d); };
  ctx.textAlign = "center";
  for (let u = Math.ceil(u0 / su) * su; u <= u1; u += su) { const x = uvToLocal(u, 0)[0]; if (x < 46) continue; ctx.beginPath(); ctx.moveTo(x, h - 20); ctx.lineTo(x, h - 14); ctx.stroke(); ctx.fillText(lab(u, su), x, h - 4); }
  ctx.textAlign = "right";
  for (let v = Math.ceil(v0 / sv) * sv; v <= v1; v += sv) { const y = uvToLocal(0, v)[1]; if (y > h - 20) continue; ctx.beginPath(); ctx.moveTo(46, y); ctx.lineTo(40, y); ctx.stroke(); ctx.fillText(lab(v, sv), 38, y + 4); }
  ctx.textAlign = "left"; ctx.fillText("u", w - 12, h - 4); ctx.fillText("v", 4, 12);
}
const fmt = x => x === null || x === undefined ? "-" : Number.isNaN(x) ? "n/a" : !Number.isFinite(x) ? (x > 0 ? "inf" : "-inf") : x.toPrecision(6);
const esc = s => String(s).replace(/[&<>]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"})[c]);
function showPanel(u, v) {
  const t = performance.now(), r = valuesAt(u, v), el = document.getElementById("panel");
  const head = `<b>${esc(current)}</b>  (u, v) = (<span id="hv-u">${fmt(u)}</span>, <span id="hv-v">${fmt(v)}</span>)\n`;
  if (r.outside) el.innerHTML = head + `<span id="hv-class">outside</span> the slice polygon`;
  else el.innerHTML = head + `region <span id="hv-region">${r.region}</span>  pattern <span id="hv-hash">${r.hash}</span>\n` +
    `class  <span id="hv-class">${r.cls}</span>\nlogits <span id="hv-logits">${r.logits.map(fmt).join(", ")}</span>\n` +
    `l2 margin <span id="hv-margin">${fmt(r.margin)}</span>\n  bounded by neuron <span id="hv-neuron">${r.neuron}</span> (layer ${r.layer}, unit ${r.unit})\n` +
    `d_D       <span id="hv-dd">${fmt(r.boundaryDistance)}</span>\ncertified l2 radius >= <span id="hv-certified">${fmt(r.certified)}</span>`;
  window.lldExplorer.lastHoverMs = performance.now() - t;
}
function drawHover() {
  octx.setTransform(1, 0, 0, 1, 0, 0); octx.clearRect(0, 0, over.width, over.height);
  if (!hoverUV) return;
  octx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const [x, y] = uvToLocal(hoverUV.u, hoverUV.v);
  octx.strokeStyle = "#d00"; octx.lineWidth = 2; octx.beginPath(); octx.moveTo(x - 11, y); octx.lineTo(x + 11, y); octx.moveTo(x, y - 11); octx.lineTo(x, y + 11);
  octx.moveTo(x + 6, y); octx.arc(x, y, 6, 0, 2 * Math.PI); octx.stroke();
}
function refreshControls() {
  document.getElementById("byClass").classList.toggle("on", mode === "class");
  document.getElementById("byPattern").classList.toggle("on", mode === "pattern");
  document.getElementById("edges").classList.toggle("on", edges);
  for (const b of document.querySelectorAll("#modelButtons button")) b.classList.toggle("on", b.dataset.model === current);
  const M = models[current], cls = [...new Set(M.fillClass)].sort((a, b) => a - b);
  document.getElementById("legend").innerHTML = `${M.R} regions; class:` + cls.map(c => `<span style="background:${fillOf(c)}"></span>${c}`).join("");
}
function setModel(name) {
  if (!models[name]) throw new Error(`no model ${name}; models: ${names.join(", ")}`);
  current = name; refreshControls(); draw();
  if (hoverUV) showPanel(hoverUV.u, hoverUV.v);
}
document.getElementById("title").textContent = D.title || "lld_jax region explorer";
for (const name of names) {
  const b = document.createElement("button"); b.textContent = `${name} (${models[name].R} regions)`; b.dataset.model = name;
  b.onclick = () => setModel(name); document.getElementById("modelButtons").appendChild(b);
}
document.getElementById("byClass").onclick = () => { mode = "class"; refreshControls(); draw(); };
document.getElementById("byPattern").onclick = () => { mode = "pattern"; refreshControls(); draw(); };
document.getElementById("edges").onclick = () => { edges = !edges; refreshControls(); draw(); };
document.getElementById("reset").onclick = () => { resetView(); draw(); };
let drag = null, pending = false;
const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } };
over.addEventListener("mousedown", e => { drag = {x: e.clientX, y: e.clientY, ox: view.ox, oy: view.oy}; });
window.addEventListener("mouseup", () => { drag = null; });
over.addEventListener("mousemove", e => {
  if (drag) { view.ox = drag.ox + e.clientX - drag.x; view.oy = drag.oy + e.clientY - drag.y; redraw(); }
  hoverUV = screenToUV(e.clientX, e.clientY); showPanel(hoverUV.u, hoverUV.v); drawHover();
});
over.addEventListener("wheel", e => {
  e.preventDefault();
  const b = base.getBoundingClientRect(), x = e.clientX - b.left, y = e.clientY - b.top, k = Math.exp(-e.deltaY * 0.0015);
  view.ox = x - (x - view.ox) * k; view.oy = y - (y - view.oy) * k; view.s *= k; redraw();
}, {passive: false});
window.addEventListener("resize", redraw);
window.lldExplorer = {valuesAt, screenToUV, uvToScreen, setModel, hoverUV: () => hoverUV, models: names, regionCounts: Object.fromEntries(names.map(n => [n, models[n].R])),
  setColorMode: m => { mode = m; refreshControls(); draw(); }, drawMs: null, lastDrawMs: null, lastHoverMs: null};
window.lldExplorer.timings = timings;
resetView(); refreshControls(); draw();
window.lldExplorer.drawMs = performance.now();  // from navigation start to the first full draw
setTimeout(() => { for (const n of names) if (!models[n].grid) buildGrid(models[n]); }, 0);  // hover lookup grids, after the first draw
})();
</script></body></html>
"""
