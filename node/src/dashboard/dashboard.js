// The replicator dashboard: polls GET /dashboard (this node's view of the network) every
// second and draws it. Everything a peer reported is text put in with textContent, never
// parsed as HTML. No library: the page works offline.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 2500;
const HISTORY_MAX = 300;
const TOKEN_KEY = "replicator-api-token";

const page = {
  view: null,          // the last /dashboard answer
  samples: [],         // rate samples, oldest first
  lastOkMs: 0,         // when this node last answered (browser clock)
  failingSinceMs: 0,   // when it stopped answering, 0 while it answers
  key: null,           // the key shown in the key view
  keyAnswer: null,     // its last verify answer
};

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, String(v));
  }
  return e;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function request(method, path, body, extraHeaders) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS * 4);
  try {
    return await fetch(path, { method, body, headers: headers(extraHeaders), signal: ctl.signal, cache: "no-store" });
  } finally {
    clearTimeout(timer);
  }
}

function shortId(peer) {
  return peer.length > 12 ? "…" + peer.slice(-8) : peer;
}

function fmtNum(n) {
  if (n === null || n === undefined) return "?";
  if (n >= 100) return Math.round(n).toString();
  if (n >= 10) return n.toFixed(1).replace(/\.0$/, "");
  return n.toFixed(2).replace(/\.?0+$/, "") || "0";
}

function canWrite() {
  const v = page.view;
  if (!v) return false;
  return !v.api.token_configured || v.api.token_accepted;
}

// ---- polling ----------------------------------------------------------------------------

async function poll() {
  const since = page.samples.length ? page.samples[page.samples.length - 1].unix_ms : null;
  const path = "/dashboard" + (since !== null ? "?since=" + since : "");
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch(path, { headers: headers(), signal: ctl.signal, cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      showConn("auth", r.status === 401
        ? "this node needs the API token to show its dashboard"
        : "the API token is wrong");
      $("token-bar").hidden = false;
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const v = await r.json();
    page.view = v;
    page.lastOkMs = Date.now();
    page.failingSinceMs = 0;
    for (const s of v.history.samples) page.samples.push(s);
    if (page.samples.length > HISTORY_MAX) page.samples.splice(0, page.samples.length - HISTORY_MAX);
    document.body.classList.remove("offline");
    showConn("live", "live · updated " + new Date().toLocaleTimeString());
    render(v);
  } catch (e) {
    if (!page.failingSinceMs) page.failingSinceMs = Date.now();
    document.body.classList.add("offline");
    const since = new Date(page.failingSinceMs).toLocaleTimeString();
    const age = page.lastOkMs ? Math.round((Date.now() - page.lastOkMs) / 1000) + " s old" : "none yet";
    showConn("down", "this node is not answering (since " + since + "); data shown: " + age);
  } finally {
    clearTimeout(timer);
  }
}

function showConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

async function loop() {
  const started = Date.now();
  await poll();
  if (page.key !== null && page.view && !document.body.classList.contains("offline")) {
    await lookup(page.key, true);
  }
  setTimeout(loop, Math.max(0, POLL_MS - (Date.now() - started)));
}

// ---- rendering --------------------------------------------------------------------------

function render(v) {
  $("network").textContent = v.network;
  $("self-node").textContent = shortId(v.node);
  $("self-node").title = v.node;
  $("self-cluster").textContent = v.cluster;
  renderToken(v);
  const w = $("self-writable");
  w.className = "verdict " + (v.writable ? "yes" : "no");
  w.textContent = v.writable
    ? "A write sent to this node can be decided now."
    : "A write sent to this node cannot be decided now: " + v.not_writable.join(", ");
  renderClusters(v);
  renderCharts(v);
  renderWriteControls();
  if (page.keyAnswer) renderKey();
}

function renderToken(v) {
  const bar = $("token-bar");
  bar.hidden = !v.api.token_configured;
  bar.classList.toggle("accepted", v.api.token_accepted);
  $("token-forget").hidden = !token();
  const st = $("token-status");
  if (v.api.token_accepted) st.textContent = "API token accepted: writes and removals enabled.";
  else if (token()) st.textContent = "The API token given is wrong: the page stays read-only.";
  else st.textContent = "This node has an API token: without it the page is read-only.";
}

function renderWriteControls() {
  const ok = canWrite();
  $("write-controls").hidden = !ok;
  $("write-note").textContent = ok ? "" : "read-only: give the API token to write";
}

function nodeRow(v, c, n) {
  const r = n.report;
  const cells = [];
  const stateCell = el("td", {}, el("span", { class: "state " + n.state, text: n.state }));
  if (n.suspected && n.state !== "suspected") stateCell.append(" ", el("span", { class: "note", text: "suspected" }));
  const id = el("td", { class: "mono id", title: n.node }, shortId(n.node));
  const addr = el("td", { class: "mono addr" });
  if (n.http) addr.append(el("a", { href: n.http + "/", text: n.http.replace(/^https?:\/\//, "") }));
  else addr.append(el("span", { class: "unknown", text: n.self ? "" : "http unknown" }));
  for (const a of n.p2p_addrs.slice(0, 1)) addr.append(el("div", { class: "note", title: a, text: a.replace(/\/p2p\/.*$/, "") }));
  cells.push(id, stateCell, addr);
  const numbers = ["keys_stored", "accepted_undecided", "puts_in_flight", "behind"];
  if (!r) {
    for (const _ of numbers) cells.push(el("td", { class: "num unknown", text: "unknown" }));
    cells.push(el("td", { class: "unknown", text: "no report" }));
  } else {
    for (const k of numbers) cells.push(el("td", { class: "num" + (r.fresh ? "" : " stale"), text: r[k] }));
    const age = r.source === "self" ? "this node, now" : (r.age_ms / 1000).toFixed(1) + " s ago";
    const info = el("td", { class: r.fresh ? "note" : "stale" }, age);
    if (!r.writable) info.append(el("div", { class: "note", text: "not writable: " + r.not_writable.join(", ") }));
    if (r.damaged_keys) info.append(el("div", { class: "stale", text: r.damaged_keys + " damaged keys" }));
    cells.push(info);
  }
  const action = el("td");
  if (!n.self && n.state === "down" && canWrite()) {
    const b = el("button", { class: "danger remove", type: "button", text: "remove…" });
    b.addEventListener("click", () => removePeer(n.node));
    action.append(b);
  }
  cells.push(action);
  return el("tr", { class: "node" + (n.self ? " is-self" : ""), "data-peer": n.node, "data-state": n.state }, ...cells);
}

function renderClusters(v) {
  const box = $("clusters");
  const cards = v.clusters.map(c => {
    const verdict = el("span", {
      class: "verdict " + (c.writable ? "yes" : "no"),
      text: c.writable ? "writable" : "not writable: " + c.not_writable.join(", "),
    });
    const head = el("h3", {}, "cluster " + c.cluster, verdict,
      el("span", { class: "note", text: c.reachable + " of " + c.members + " members reachable, majority " + c.majority }));
    const thead = el("thead", {}, el("tr", {},
      ...["node", "state", "address", "keys", "undecided", "in flight", "behind", "report", ""].map(h => el("th", { text: h }))));
    const tbody = el("tbody", {}, ...c.nodes.map(n => nodeRow(v, c, n)));
    return el("div", { class: "cluster", "data-cluster": c.cluster }, head, el("table", {}, thead, tbody));
  });
  box.replaceChildren(...cards);
}

// ---- charts -----------------------------------------------------------------------------

const CHART = { w: 320, h: 120, left: 34, right: 6, top: 8, bottom: 16 };

function drawChart(svgId, legendId, series, unit) {
  const svg = $(svgId);
  const samples = page.samples;
  const nodes = [];
  const x0 = CHART.left, x1 = CHART.w - CHART.right, y0 = CHART.h - CHART.bottom, y1 = CHART.top;
  let max = 0;
  for (const s of series) for (const p of samples) { const y = s.get(p); if (y !== null && y > max) max = y; }
  max = max > 0 ? niceCeil(max) : 1;
  const now = samples.length ? samples[samples.length - 1].unix_ms : Date.now();
  const span = 5 * 60 * 1000;
  const xOf = t => x1 - (now - t) / span * (x1 - x0);
  const yOf = y => y0 - y / max * (y0 - y1);
  nodes.push(svgEl("line", { class: "axis", x1: x0, y1: y0, x2: x1, y2: y0 }));
  nodes.push(svgEl("line", { class: "axis", x1: x0, y1: y1, x2: x0, y2: y0 }));
  nodes.push(svgEl("text", { x: x0 - 3, y: y1 + 7, "text-anchor": "end", text: fmtNum(max) }));
  nodes.push(svgEl("text", { x: x0 - 3, y: y0, "text-anchor": "end", text: "0" }));
  nodes.push(svgEl("text", { x: x0, y: CHART.h - 4, text: "-5 min" }));
  nodes.push(svgEl("text", { x: x1, y: CHART.h - 4, "text-anchor": "end", text: "now" }));
  series.forEach((s, i) => {
    // A gap (no value) breaks the line: nothing is drawn where nothing is known.
    let run = [];
    const flush = () => {
      if (run.length > 1) nodes.push(svgEl("polyline", { class: "c" + (i % 10), points: run.join(" ") }));
      if (run.length === 1) nodes.push(svgEl("circle", { class: "c" + (i % 10), cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: 1.2 }));
      run = [];
    };
    for (const p of samples) {
      if (now - p.unix_ms > span) continue;
      const y = s.get(p);
      if (y === null || y === undefined) { flush(); continue; }
      run.push(xOf(p.unix_ms).toFixed(1) + "," + yOf(y).toFixed(1));
    }
    flush();
  });
  svg.replaceChildren(...nodes);
  const last = samples.length ? samples[samples.length - 1] : null;
  $(legendId).replaceChildren(...series.map((s, i) => {
    const v = last ? s.get(last) : null;
    return el("span", {}, el("span", { class: "swatch c" + (i % 10) }), s.name + " ",
      el("b", { text: v === null || v === undefined ? "–" : fmtNum(v) + (unit || "") }));
  }));
}

function niceCeil(x) {
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function outcomeSeries(field) {
  const names = new Set();
  for (const s of page.samples) for (const [k, v] of Object.entries(s[field])) if (v > 0) names.add(k);
  return [...names].sort().map(k => ({ name: k, get: p => (p[field][k] === undefined ? 0 : p[field][k]) }));
}

function renderCharts() {
  const last = page.samples.length ? page.samples[page.samples.length - 1] : null;
  $("charts-note").textContent = last
    ? "(sums over " + last.nodes_counted + " of " + last.nodes_total + " nodes whose counters are known)"
    : "(no sample yet)";
  drawChart("chart-rates", "legend-rates", [
    { name: "creates/s", get: p => p.creates_per_s },
    { name: "reads/s", get: p => p.reads_per_s },
  ], "");
  const puts = outcomeSeries("puts");
  drawChart("chart-puts", "legend-puts", puts.length ? puts : [{ name: "none yet", get: () => 0 }], "");
  const gets = outcomeSeries("gets");
  drawChart("chart-gets", "legend-gets", gets.length ? gets : [{ name: "none yet", get: () => 0 }], "");
  drawChart("chart-latency", "legend-latency", ["p50", "p90", "p99"].map(q => ({
    name: q, get: p => p.put_latency_ms[q],
  })), " ms");
}

// ---- key view ---------------------------------------------------------------------------

async function lookup(key, quiet) {
  page.key = key;
  const path = "/store/" + encodeURIComponent(key) + "?verify=true";
  let r;
  try {
    r = await request("GET", path);
  } catch (e) {
    if (!quiet) $("key-result").textContent = "no answer from this node";
    return;
  }
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (page.key !== key) return;
  if (!r.ok || !body) {
    page.keyAnswer = null;
    $("key-table").hidden = true;
    $("key-result").textContent = "lookup failed: HTTP " + r.status + (body && body.message ? " — " + body.message : "");
    return;
  }
  page.keyAnswer = body;
  renderKey();
}

function renderKey() {
  const a = page.keyAnswer;
  const stored = a.answers.filter(x => x.state === "stored");
  const values = [...new Set(stored.map(x => x.value))];
  let summary;
  if (!stored.length) summary = "no node holds a value for “" + a.key + "”";
  else if (values.length === 1) summary = "value of “" + a.key + "”: " + values[0];
  else summary = "nodes hold different values for “" + a.key + "”: " + values.join(" / ");
  summary += a.agree ? " · the nodes that answered agree" : " · the nodes that answered do not agree (yet)";
  $("key-result").textContent = summary;
  const answers = new Map(a.answers.map(x => [x.node, x]));
  const silent = new Set(a.silent_nodes);
  const rows = [];
  const members = page.view ? page.view.clusters.flatMap(c => c.nodes.map(n => [c.cluster, n.node])) : [];
  const seen = new Set();
  for (const [cluster, peer] of members) {
    seen.add(peer);
    rows.push(keyRow(cluster, peer, answers.get(peer), silent.has(peer)));
  }
  for (const x of a.answers) if (!seen.has(x.node)) rows.push(keyRow("?", x.node, x, false));
  $("key-rows").replaceChildren(...rows);
  $("key-table").hidden = false;
}

function keyRow(cluster, peer, answer, silent) {
  const state = answer ? answer.state : (silent ? "silent" : "unasked");
  const holds = answer ? answer.state : (silent ? "no answer" : "not asked");
  const value = answer && answer.value !== null ? answer.value : "";
  return el("tr", { class: "key-answer " + state, "data-peer": peer, "data-state": state },
    el("td", { class: "mono", title: peer, text: shortId(peer) }),
    el("td", { text: cluster }),
    el("td", { class: "holds", text: holds }),
    el("td", { class: "value mono", text: value }));
}

async function put() {
  const key = $("key-input").value;
  const value = $("value-input").value;
  if (!key) return;
  $("put-result").textContent = "PUT " + key + ": storing…";
  let r, body = null;
  try {
    r = await request("PUT", "/store/" + encodeURIComponent(key), value, { "Content-Type": "application/octet-stream" });
    try { body = await r.json(); } catch (e) { body = null; }
  } catch (e) {
    $("put-result").textContent = "PUT " + key + ": no answer from this node";
    return;
  }
  const what = r.status === 201 ? "stored" : (body && body.error ? body.error : "HTTP " + r.status);
  const msg = body && body.message ? " — " + body.message : "";
  $("put-result").textContent = "PUT " + key + ": " + what + msg;
  await lookup(key, false);
}

async function removePeer(peer) {
  if (!confirm("Remove " + peer + " from the network for good? Only a dead node should be removed.")) return;
  const r = await request("DELETE", "/peers/" + encodeURIComponent(peer));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  alert(r.ok ? "removed " + peer : "not removed: " + (body && body.message ? body.message : "HTTP " + r.status));
}

// ---- start ------------------------------------------------------------------------------

function start() {
  $("key-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const key = $("key-input").value;
    if (key) lookup(key, false);
  });
  $("put-button").addEventListener("click", () => put());
  $("token-save").addEventListener("click", () => {
    const t = $("token-input").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $("token-input").value = "";
    poll();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    poll();
  });
  loop();
}

document.addEventListener("DOMContentLoaded", start);
