// The Checkpoints page: plain JS, no build step, no CDN. Every path is relative (the page lives
// at /tf-ckpt/ inside the Airflow UI's iframe); the login travels as the UI's cookie.
"use strict";
const $ = (s) => document.querySelector(s);
const PAGE = 50;
const st = { dirs: [], dir: null, offset: 0, total: 0, metrics: null };

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; n = Number(n || 0);
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : ""; }
function banner(msg) { const b = $("#banner"); b.hidden = !msg; b.textContent = msg || ""; }

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin", headers: { Accept: "application/json" } }, opts || {}));
  if (r.status === 401) { banner("Your Airflow session has expired: log in again (reload the page)."); throw new Error("401"); }
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const msg = (body && body.detail) ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.statusText;
    const err = new Error(msg); err.status = r.status; throw err;
  }
  return body;
}
const dirPath = (rest) => "api/dirs/" + encodeURIComponent(st.dir) + "/" + rest;

async function loadDirs() {
  const d = await api("api/dirs");
  st.dirs = d.dirs;
  $("#dir").innerHTML = d.dirs.map((x) => `<option value="${esc(x.id)}">${esc(x.url)}</option>`).join("");
  if (!d.dirs.length) { banner("No checkpoint dirs: no DAG watches one and [tf_ckpt] ui_dirs is empty."); return; }
  const want = new URLSearchParams(location.search).get("dir");
  st.dir = d.dirs.some((x) => x.id === want) ? want : d.dirs[0].id;
  $("#dir").value = st.dir;
  await showDir();
}

async function showDir() {
  banner(""); st.offset = 0; st.metrics = null;
  const info = st.dirs.find((x) => x.id === st.dir);
  const dags = info ? [...new Set(info.used_by.map((w) => w.split(/[ .]/)[0]))] : [];
  $("#usedby").textContent = info ? "watched by " + dags.join(", ") : "";
  $("#usedby").title = info ? info.used_by.join("\n") : "";
  // first paint: never waits for a listing (a dir never listed paints from its state file)
  const [s] = await Promise.all([loadSummary(false), loadSteps(false)]);
  // then the table from a listing at most a few seconds old (the server refreshes it meanwhile)
  if (s && (s.preliminary || s.listed_s_ago > 5)) await Promise.all([loadSummary(true), loadSteps(true)]);
  loadMetrics(); loadQuarantine(); loadPromotions(); loadRetention();  // then the rest, in parallel
}

async function loadSummary(wait) {
  try {
    const s = await api(dirPath("summary?wait=" + (wait === false ? "false" : "true")));
    $("#summary").innerHTML = `<b>${s.steps}</b> steps` + (s.bytes === null || s.bytes === undefined ? "" : `, ${bytes(s.bytes)}`) + "; " +
      Object.entries(s.counts).map(([k, v]) => `<span class="count"><span class="badge ${k}">${k}</span>${v}</span>`).join("") +
      (s.latest ? ` latest: <b>${esc(s.latest)}</b>` : "") +
      (s.preliminary ? ' <span class="small" id="listing-note">from the state file; listing the dir&hellip;</span>' :
        (s.listed_s_ago > 5 ? ` <span class="small">listed ${Math.round(s.listed_s_ago)} s ago; listing again&hellip;</span>` : "")) +
      (s.problem_count ? `<div class="small">${s.problem_count} problem(s): ${esc(s.problems.slice(0, 3).join("; "))}</div>` : "");
    return s;
  } catch (e) { if (e.message !== "401") banner(e.message); return null; }
}

async function loadSteps(wait) {
  const status = $("#status").value;
  let d;
  try { d = await api(dirPath(`steps?offset=${st.offset}&limit=${PAGE}&status=${encodeURIComponent(status)}&wait=${wait === false ? "false" : "true"}`)); }
  catch (e) { if (e.message !== "401") banner(e.message); return; }
  st.total = d.total;
  $("#steps").dataset.complete = d.preliminary ? "0" : "1";
  $("#pageinfo").textContent = d.total ? `${d.offset + 1}-${d.offset + d.rows.length} of ${d.total}` : "no steps";
  $("#prev").disabled = st.offset === 0; $("#next").disabled = st.offset + PAGE >= d.total;
  $("#steps tbody").innerHTML = d.rows.map(rowHtml).join("");
  // user timing (devtools, bench/ui.py): when the first rows were on the page
  if (d.rows.length && !performance.getEntriesByName("tf-ckpt-first-rows").length) performance.mark("tf-ckpt-first-rows");
}

function rowHtml(r) {
  const leases = r.leases.map((l) => `<span class="small">${esc(l.owner)}${l.active ? "" : " (expired)"} until ${when(l.expires)}</span>`).join("<br>");
  const promoted = r.promoted.map((a) => `<span class="badge promoted">${esc(a)}</span>`).join("");
  const act = r.status === "quarantined"
    ? `<button class="act" data-act="unquarantine" data-prefix="${esc(r.prefix)}">release</button>`
    : `<button class="act" data-act="quarantine" data-prefix="${esc(r.prefix)}">quarantine</button>`;
  return `<tr data-prefix="${esc(r.prefix)}" data-status="${esc(r.status)}"><td>${r.step ?? ""}</td><td>${esc(r.prefix)}` +
    (r.latest ? ' <span class="badge latest">latest</span>' : "") + `</td>` +
    `<td><span class="badge status ${esc(r.status)}">${esc(r.status)}</span>` +
    (r.missing.length ? `<div class="small">missing ${esc(r.missing.join(", "))}</div>` : "") + `</td>` +
    `<td>${r.size === null ? "&hellip;" : bytes(r.size)}</td><td>${when(r.saved)}</td><td>${leases}</td><td>${promoted}</td>` +
    `<td>${r.has_metrics ? `<a href="#" data-drill="${esc(r.prefix)}">show</a>` : ""}</td><td>${act}</td></tr>`;
}

async function drill(prefix) {
  const d = await api(dirPath("steps/" + encodeURIComponent(prefix) + "/metrics"));
  $("#drill").innerHTML = `<h3>${esc(prefix)}</h3>` + Object.entries(d.evaluators).map(([ev, r]) =>
    `<div class="evaluation"><b>${esc(ev)}</b>: ` + Object.entries(r.metrics).map(([k, v]) => `${esc(k)} = ${esc(v)}`).join(", ") +
    ` <span class="small">(evaluated ${r.evaluations || 1}&times;, last ${when(r.time)})</span></div>`).join("");
}

async function act(kind, prefix, reason) {
  // no prompt(): the UI's iframe may be sandboxed without modals; the reason is typed in the row
  const opts = { method: "POST", headers: { Accept: "application/json", "Content-Type": "application/json" } };
  if (kind === "quarantine") opts.body = JSON.stringify({ reason });
  try { await api(dirPath("steps/" + encodeURIComponent(prefix) + "/" + kind), opts); banner(""); }
  catch (e) { if (e.message !== "401") banner((e.status === 403 ? "Not allowed: " : "") + e.message); return; }
  await Promise.all([loadSummary(), loadSteps(), loadQuarantine()]);
}

function askReason(button) {
  const cell = button.parentElement, prefix = button.dataset.prefix;
  cell.innerHTML = `<input class="reason" placeholder="reason" value="marked bad in the UI" size="16">` +
    `<button class="act" data-act="do-quarantine" data-prefix="${esc(prefix)}">confirm</button>`;
}

async function loadMetrics() {
  try { st.metrics = await api(dirPath("metrics")); } catch (e) { $("#metrics-note").textContent = e.message; return; }
  const evs = st.metrics.evaluators;
  $("#evaluator").innerHTML = evs.map((e) => `<option>${esc(e)}</option>`).join("");
  fillMetricNames();
}

function metricsNote(pts) {  // what the plot shows, for the chosen evaluator and metric
  const m = st.metrics, ev = $("#evaluator").value;
  $("#metrics-note").textContent = `${pts.length} step(s) with ${$("#metric").value || "metrics"} by ${ev || "no evaluator"}` +
    ` (${m.evaluated_steps} evaluated by any evaluator)` + (m.problems.length ? "; problems: " + m.problems.join("; ") : "");
}

function fillMetricNames() {
  const ev = $("#evaluator").value, names = Object.keys((st.metrics.series[ev] || {})).sort();
  const keep = $("#metric").value;
  $("#metric").innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
  if (names.includes(keep)) $("#metric").value = keep;
  else if (names.includes("loss")) $("#metric").value = "loss";
  $("#mode").value = /acc|auc|precision|recall|f1|score/i.test($("#metric").value) ? "max" : "min";
  plot();
}

function plot() {
  const svg = $("#plot"), W = 800, H = 240, L = 60, R = 15, T = 15, B = 35;
  const pts = ((st.metrics && st.metrics.series[$("#evaluator").value]) || {})[$("#metric").value] || [];
  if (st.metrics) metricsNote(pts);
  if (!pts.length) { svg.innerHTML = `<text x="20" y="30">no metrics yet</text>`; $("#best").textContent = ""; return; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (y1 === y0 ? 0.5 : 1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const max = $("#mode").value === "max", bad = new Set(st.metrics.quarantined || []);
  let best = null;  // a quarantined step is never the best (promotion refuses it)
  for (const p of pts) if (!bad.has(p[0]) && (best === null || (max ? p[1] > best[1] : p[1] < best[1]))) best = p;
  const line = pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
  const dots = pts.length <= 500 ? pts.map((p) => `<circle class="${bad.has(p[0]) ? "point qpoint" : "point"}" cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="${bad.has(p[0]) ? 4 : 2.5}" data-step="${p[0]}"><title>step ${p[0]}: ${p[1]}</title></circle>`).join("") : "";
  svg.innerHTML = `<line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/>` +
    `<line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>` +
    `<text x="${L}" y="${H - 10}">${x0}</text><text x="${W - R}" y="${H - 10}" text-anchor="end">${x1}</text>` +
    `<text x="${L - 5}" y="${T + 8}" text-anchor="end">${y1.toPrecision(4)}</text>` +
    `<text x="${L - 5}" y="${H - B}" text-anchor="end">${y0.toPrecision(4)}</text>` +
    `<text x="${(L + W) / 2}" y="${H - 10}" text-anchor="middle">step</text>` +
    `<polyline class="line" points="${line}"/>` + dots +
    (best ? `<circle class="best" cx="${sx(best[0]).toFixed(1)}" cy="${sy(best[1]).toFixed(1)}" r="6" data-step="${best[0]}"><title>best: step ${best[0]}: ${best[1]}</title></circle>` : "");
  $("#best").innerHTML = best ? `best ${esc($("#metric").value)}: <b id="best-step">step ${best[0]}</b> (${best[1]})` +
    (pts.some((p) => bad.has(p[0])) ? ' <span class="small">(quarantined steps, hollow, are not candidates)</span>' : "") : "";
}

async function loadRetention() {
  let d;
  try { d = await api(dirPath("retention")); } catch (e) { $("#plans").textContent = e.message; return; }
  if (!d.plans.length) { $("#plans").innerHTML = "<p>No retention (GC) task of a DAG manages this dir.</p>"; return; }
  $("#plans").innerHTML = d.plans.map((p, i) => p.error ? `<h3>${esc(p.task)}</h3><p class="delete">${esc(p.error)}</p>` :
    `<h3>${esc(p.task)} <span class="small">(dry run: nothing is deleted)</span></h3>` +
    `<p>${esc(p.policies.join(", "))}: <span class="keep">${p.counts.keep} kept</span>, ` +
    `<span class="delete">${p.counts.delete} to delete</span> (${bytes(p.counts.bytes)})` +
    (p.state_file_rewritten ? "; the state file would be rewritten" : "") + `</p>` +
    `<table class="plan" data-plan="${i}"><thead><tr><th>step</th><th>prefix</th><th>action</th><th>why</th></tr></thead><tbody>` +
    p.decisions.slice(0, 200).map((x) => `<tr data-prefix="${esc(x[1])}"><td>${x[0] ?? ""}</td><td>${esc(x[1])}</td>` +
      `<td class="${esc(x[2])}">${esc(x[2])}</td><td>${esc(x[3])}</td></tr>`).join("") + `</tbody></table>` +
    (p.decisions.length > 200 ? `<p class="small">first 200 of ${p.decisions.length} steps shown</p>` : "")).join("");
}

async function loadQuarantine() {
  let d;
  try { d = await api(dirPath("quarantine")); } catch (e) { return; }
  $("#quarantine tbody").innerHTML = d.records.length ? d.records.map((r) => `<tr data-prefix="${esc(r.prefix)}"><td>${r.step ?? ""}</td>` +
    `<td>${esc(r.prefix)}</td><td class="reason">${esc(r.reason || r.error)}` +
    (r.report_problems && r.report_problems.length ? `<div class="small">${esc(r.report_problems.join("; "))}</div>` : "") +
    `</td><td>${when(r.time)}</td></tr>`).join("") : `<tr><td colspan="4">nothing quarantined</td></tr>`;
}

async function loadPromotions() {
  let d;
  try { d = await api(dirPath("promotions")); } catch (e) { return; }
  $("#promotions tbody").innerHTML = d.records.length ? d.records.map((r) => `<tr data-prefix="${esc(r.prefix)}"><td>${r.step ?? ""}</td>` +
    `<td>${esc(r.prefix)}</td><td>${esc(r.dest)}</td><td>${esc(r.alias || "")}</td><td>${when(r.time)}</td>` +
    `<td>${r.current ? "yes" : "superseded"}</td></tr>`).join("") : `<tr><td colspan="6">nothing promoted</td></tr>`;
  $("#aliases").innerHTML = (d.aliases || []).map((a) => `<div><b>${esc(a.dest)}</b>: ` + (a.error ? esc(a.error) :
    Object.entries(a.aliases).map(([k, v]) => `<span class="badge promoted">${esc(k)}</span> &rarr; ${esc(v.prefix)}`).join(", ")) + "</div>").join("");
}

function tab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== "tab-" + name; });
}

$("#tabs").addEventListener("click", (e) => { if (e.target.dataset.tab) tab(e.target.dataset.tab); });
$("#dir").addEventListener("change", () => { st.dir = $("#dir").value; showDir(); });
$("#refresh").addEventListener("click", () => showDir());
$("#status").addEventListener("change", () => { st.offset = 0; loadSteps(); });
$("#prev").addEventListener("click", () => { st.offset = Math.max(0, st.offset - PAGE); loadSteps(); });
$("#next").addEventListener("click", () => { st.offset += PAGE; loadSteps(); });
$("#evaluator").addEventListener("change", fillMetricNames);
$("#metric").addEventListener("change", () => { $("#mode").value = /acc|auc|precision|recall|f1|score/i.test($("#metric").value) ? "max" : "min"; plot(); });
$("#mode").addEventListener("change", plot);
$("#steps").addEventListener("click", (e) => {
  const t = e.target;
  if (t.dataset.act === "quarantine") askReason(t);
  else if (t.dataset.act === "do-quarantine") {
    const reason = t.parentElement.querySelector("input.reason").value.trim();
    if (reason) act("quarantine", t.dataset.prefix, reason);
  } else if (t.dataset.act) act(t.dataset.act, t.dataset.prefix);
  if (t.dataset.drill) { e.preventDefault(); drill(t.dataset.drill); }
});
loadDirs().catch((e) => { if (e.message !== "401") banner(e.message); });
