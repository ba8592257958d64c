"use strict";
// Draws the trace in the page's data as an SVG sequence diagram: time runs down, a lane per
// node, clusters side by side. Every string from the data goes in through textContent or
// setAttribute, never as markup. window.tracePage exposes the model for tests and the console.
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const data = JSON.parse(document.getElementById("trace-data").textContent);
  const LANE_W = 88, CLUSTER_GAP = 28, AXIS_W = 78, TOP = 12, BOTTOM = 40;
  const MAX_HEIGHT = 2000000;

  const svg = document.getElementById("diagram");
  const scroller = document.getElementById("scroller");
  const byId = (id) => document.getElementById(id);

  // ---- lanes: x of every node, clusters side by side
  const laneX = [];
  const clusters = [];
  let x = AXIS_W;
  data.nodes.forEach((n, i) => {
    const last = clusters[clusters.length - 1];
    if (!last || last.name !== n.cluster) {
      if (last) x += CLUSTER_GAP;
      clusters.push({ name: n.cluster, from: x, lanes: 0 });
    }
    const c = clusters[clusters.length - 1];
    laneX[i] = x + LANE_W / 2;
    c.lanes += 1;
    x += LANE_W;
  });
  const width = x + 20;

  // ---- time scale: pixels per millisecond, zoomed on a log slider
  // At first about 8 px of height per message, so that a busy run spreads out (zoom for more).
  const spanMs = Math.max(data.end, 1) / 1000;
  const maxScale = MAX_HEIGHT / spanMs;
  const clampScale = (v) => Math.min(Math.max(v, 0.001), maxScale);
  const fitScale = clampScale(Math.min(Math.max(data.arrows.length * 8, 1500), 120000) / spanMs);
  let scale = fitScale;
  const y = (us) => TOP + (us / 1000) * scale;

  function el(name, attrs, parent, text) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) {
      const t = document.createElementNS(NS, "title");
      t.textContent = text;
      e.appendChild(t);
    }
    if (parent) parent.appendChild(e);
    return e;
  }
  const fmt = (us) => (us / 1e6).toFixed(6) + "s";

  const layers = {};
  for (const name of ["bands", "ticks", "lifelines", "spans", "arrows", "calls", "marks", "violation"]) {
    layers[name] = el("g", { class: "layer-" + name }, svg);
  }
  const defs = el("defs", {}, svg);
  // Arrowheads keep their size whatever the line's width (userSpaceOnUse).
  for (const [id, colour] of [["head", "#2b6cb0"], ["head-dup", "#6b46c1"], ["head-key", "#d35400"]]) {
    const m = el("marker", { id, viewBox: "0 0 10 10", refX: "10", refY: "5", markerUnits: "userSpaceOnUse",
      markerWidth: "9", markerHeight: "9", orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }, m);
  }

  const violationKey = data.violation && data.violation.key;
  const bands = clusters.map((c, i) => i % 2 === 0
    ? el("rect", { class: "cluster-band", x: c.from, y: 0, width: c.lanes * LANE_W }, layers.bands)
    : null);
  const lifelines = data.nodes.map((n, i) =>
    el("line", { class: "lifeline", x1: laneX[i], x2: laneX[i], y1: 0 }, layers.lifelines));

  // ---- faults as shaded spans on their lane
  const spans = data.spans.map((s) => el("rect", {
    class: "span " + s.kind, x: laneX[s.node] - 7, width: 14,
  }, layers.spans, s.kind + " " + fmt(s.t0) + " .. " + fmt(s.t1) + "\n" + s.text));

  // ---- messages: one path each, class "arrow" (+ dropped, lost, dup, inflight, on-key)
  const arrows = data.arrows.map((a, i) => {
    const cls = ["arrow", "kind-" + a.kind];
    if (a.fate === "dropped" || a.fate === "lost") cls.push("dropped");
    if (a.fate === "lost") cls.push("lost");
    if (a.fate === "inflight") cls.push("inflight");
    if (a.dup) cls.push("dup");
    if (violationKey !== null && violationKey !== undefined && a.key === violationKey) cls.push("on-key");
    const tip = a.text + (a.endText ? "\n" + a.endText : "") + (a.why ? "\n(" + a.why + ")" : "");
    const p = el("path", { class: cls.join(" "), "data-ix": i }, layers.arrows, tip);
    const onKey = cls.includes("on-key");
    if (a.fate === "delivered") p.setAttribute("marker-end", onKey ? "url(#head-key)" : (a.dup ? "url(#head-dup)" : "url(#head)"));
    return p;
  });

  // ---- client calls: a dot at the call, a bar to its answer, a ring at the answer
  const calls = data.calls.map((c) => {
    const cls = ["call", c.lost ? "lost" : (c.t1 === null ? "unanswered" : "answered")];
    if (violationKey !== null && violationKey !== undefined && c.key === violationKey) cls.push("on-key");
    const tip = c.text + "\n" + (c.answer || (c.lost ? "lost: the node was down" : "no answer"));
    const g = el("g", { class: cls.join(" ") }, layers.calls, tip);
    const parts = {
      wait: c.t1 === null ? null : el("line", { class: "wait" }, g),
      ask: el("circle", { class: "ask", r: 4 }, g),
      answer: c.t1 === null ? null : el("circle", { class: "answer", r: 4 }, g),
    };
    return { g, parts };
  });

  // ---- other marks: one lane's (a triangle) or the world's (a dashed line across)
  const marks = data.marks.map((m) => {
    if (m.node === null) {
      return el("line", { class: "mark-line mark " + m.kind, x1: AXIS_W - 10, x2: width }, layers.marks, m.text);
    }
    return el("path", { class: "mark " + m.kind }, layers.marks, m.text);
  });

  // ---- the violation: a red line across every lane at its time, and the banner
  let violationLine = null, violationLabel = null;
  if (data.violation) {
    const v = data.violation;
    violationLine = el("line", { class: "violation", x1: AXIS_W - 10, x2: width }, layers.violation,
      v.invariant + " at " + fmt(v.t) + "\n" + v.detail);
    violationLabel = el("text", { class: "violation-label", x: AXIS_W }, layers.violation);
    violationLabel.textContent = "VIOLATION: " + v.invariant + (v.key !== null ? " (key " + v.key + ")" : "");
    byId("violation-banner").hidden = false;
    byId("violation-what").textContent = v.invariant + " at " + fmt(v.t) + (v.key !== null ? ", key " + v.key : "");
    byId("violation-detail").textContent = v.detail;
  }

  // ---- layout: every position depends on the time scale
  function layout() {
    const height = Math.min(y(data.end) + BOTTOM, MAX_HEIGHT);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    bands.forEach((b) => b && b.setAttribute("height", height));
    lifelines.forEach((l) => l.setAttribute("y2", height));
    data.spans.forEach((s, i) => {
      spans[i].setAttribute("y", y(s.t0));
      spans[i].setAttribute("height", Math.max(y(s.t1) - y(s.t0), 2));
    });
    data.arrows.forEach((a, i) => {
      const x0 = laneX[a.from], y0 = y(a.t0);
      let x1 = laneX[a.to], y1 = y(a.t1);
      if (a.fate === "lost") x1 = (x0 + x1) / 2;
      let d = "M" + x0 + "," + y0 + " L" + x1 + "," + y1;
      if (a.fate === "dropped" || a.fate === "lost") {
        d += " M" + (x1 - 5) + "," + (y1 - 5) + " L" + (x1 + 5) + "," + (y1 + 5) +
          " M" + (x1 - 5) + "," + (y1 + 5) + " L" + (x1 + 5) + "," + (y1 - 5);
      }
      arrows[i].setAttribute("d", d);
    });
    data.calls.forEach((c, i) => {
      const cx = laneX[c.node] - 12, p = calls[i].parts;
      p.ask.setAttribute("cx", cx);
      p.ask.setAttribute("cy", y(c.t0));
      if (p.wait) {
        for (const [k, v] of [["x1", cx], ["x2", cx], ["y1", y(c.t0)], ["y2", y(c.t1)]]) p.wait.setAttribute(k, v);
        p.answer.setAttribute("cx", cx);
        p.answer.setAttribute("cy", y(c.t1));
      }
    });
    data.marks.forEach((m, i) => {
      const yy = y(m.t);
      if (m.node === null) {
        marks[i].setAttribute("y1", yy);
        marks[i].setAttribute("y2", yy);
      } else {
        const mx = laneX[m.node] + 9;
        marks[i].setAttribute("d", "M" + mx + "," + yy + " l8,-5 l0,10 z");
      }
    });
    if (violationLine) {
      const vy = y(data.violation.t);
      violationLine.setAttribute("y1", vy);
      violationLine.setAttribute("y2", vy);
      violationLabel.setAttribute("y", vy - 4);
    }
    drawTicks(height);
    byId("zoom-value").textContent = scale.toFixed(3) + " px/ms";
  }

  function drawTicks(height) {
    layers.ticks.replaceChildren();
    const steps = [];
    for (let e = -3; e <= 6; e++) for (const m of [1, 2, 5]) steps.push(m * Math.pow(10, e));
    const step = steps.find((s) => s * scale >= 60) || steps[steps.length - 1];
    const digits = step < 0.01 ? 6 : (step < 1 ? 5 : 3);
    const endMs = data.end / 1000;
    for (let n = 0; n * step <= endMs + step && n < 4000; n++) {
      const t = n * step;
      const yy = TOP + t * scale;
      if (yy > height) break;
      const g = el("g", { class: "tick" }, layers.ticks);
      el("line", { x1: AXIS_W - 6, x2: width, y1: yy, y2: yy }, g);
      const label = el("text", { x: 4, y: yy + 4 }, g);
      label.textContent = (t / 1000).toFixed(digits) + "s";
    }
  }

  // ---- the lane header above the diagram (scrolls sideways with it)
  const head = byId("lanes-head");
  const headInner = document.createElement("div");
  headInner.style.position = "relative";
  headInner.style.width = width + "px";
  head.appendChild(headInner);
  clusters.forEach((c) => {
    const d = document.createElement("div");
    d.className = "cluster";
    d.style.left = c.from + "px";
    d.style.width = c.lanes * LANE_W + "px";
    d.textContent = "cluster " + c.name;
    headInner.appendChild(d);
  });
  const laneHeads = data.nodes.map((n, i) => {
    const d = document.createElement("div");
    d.className = "lane";
    d.style.left = laneX[i] - LANE_W / 2 + "px";
    d.style.width = LANE_W + "px";
    d.textContent = n.name;
    d.title = "show only the messages of " + n.name;
    d.addEventListener("click", () => {
      nodeSelect.value = nodeSelect.value === String(i) ? "" : String(i);
      applyFilters();
    });
    headInner.appendChild(d);
    return d;
  });
  scroller.addEventListener("scroll", () => { head.scrollLeft = scroller.scrollLeft; });

  // ---- filters: key, node, message kinds, only dropped, client calls
  const keySelect = byId("filter-key"), nodeSelect = byId("filter-node");
  const keys = new Set();
  data.arrows.forEach((a) => a.key !== null && keys.add(a.key));
  data.calls.forEach((c) => c.key !== null && keys.add(c.key));
  [...keys].sort().forEach((k) => {
    const o = document.createElement("option");
    o.value = k;
    o.textContent = k + (k === violationKey ? "  (violation)" : "");
    keySelect.appendChild(o);
  });
  data.nodes.forEach((n, i) => {
    const o = document.createElement("option");
    o.value = String(i);
    o.textContent = n.name;
    nodeSelect.appendChild(o);
  });
  const kinds = [...new Set(data.arrows.map((a) => a.kind))].sort();
  const kindBoxes = {};
  kinds.forEach((k) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = k;
    box.className = "kind-filter";
    box.addEventListener("change", applyFilters);
    kindBoxes[k] = box;
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + k + " (" + data.arrows.filter((a) => a.kind === k).length + ")"));
    byId("kinds").appendChild(label);
  });

  function applyFilters() {
    const key = keySelect.value, node = nodeSelect.value === "" ? null : Number(nodeSelect.value);
    const onlyDropped = byId("only-dropped").checked, showCalls = byId("show-calls").checked;
    let shown = 0;
    data.arrows.forEach((a, i) => {
      const visible = (key === "" || a.key === key)
        && (node === null || a.from === node || a.to === node)
        && kindBoxes[a.kind].checked
        && (!onlyDropped || a.fate === "dropped" || a.fate === "lost");
      arrows[i].classList.toggle("hidden", !visible);
      if (visible) shown++;
    });
    data.calls.forEach((c, i) => {
      const visible = showCalls && (key === "" || c.key === key) && (node === null || c.node === node);
      calls[i].g.classList.toggle("hidden", !visible);
    });
    data.marks.forEach((m, i) => {
      marks[i].classList.toggle("hidden", node !== null && m.node !== null && m.node !== node);
    });
    laneHeads.forEach((d, i) => d.classList.toggle("picked", i === node));
    byId("counts").textContent = shown + " of " + data.arrows.length + " messages shown";
  }
  for (const id of ["filter-key", "filter-node", "only-dropped", "show-calls"]) {
    byId(id).addEventListener("change", applyFilters);
  }
  byId("reset").addEventListener("click", () => {
    keySelect.value = "";
    nodeSelect.value = "";
    byId("only-dropped").checked = false;
    byId("show-calls").checked = true;
    Object.values(kindBoxes).forEach((b) => { b.checked = true; });
    applyFilters();
  });

  // ---- zoom: keeps the time at the middle of the view where it was
  const zoom = byId("zoom");
  zoom.addEventListener("input", () => {
    const middle = (scroller.scrollTop + scroller.clientHeight / 2 - TOP) / scale;
    scale = clampScale(fitScale * Math.pow(10, Number(zoom.value) / 100));
    layout();
    scroller.scrollTop = TOP + middle * scale - scroller.clientHeight / 2;
  });

  function scrollToTime(us) {
    scroller.scrollTop = Math.max(y(us) - scroller.clientHeight / 2, 0);
  }
  byId("violation-focus").addEventListener("click", () => {
    if (violationKey !== null && violationKey !== undefined) keySelect.value = violationKey;
    applyFilters();
    scrollToTime(data.violation.t);
  });

  // ---- details of whatever is clicked
  svg.addEventListener("click", (ev) => {
    const t = ev.target.closest("path, rect, g.call, line");
    const title = t && (t.querySelector(":scope > title") || (t.parentNode && t.parentNode.querySelector(":scope > title")));
    if (!title) return;
    byId("detail-text").textContent = title.textContent;
    byId("detail").hidden = false;
  });
  byId("detail-close").addEventListener("click", () => { byId("detail").hidden = true; });

  byId("title").textContent = data.title + " — " + data.arrows.length + " messages, " +
    data.nodes.length + " nodes, " + fmt(data.end);
  layout();
  applyFilters();
  if (data.violation) scrollToTime(data.violation.t);

  window.tracePage = {
    data,
    arrowCount: () => arrows.length,
    visibleArrows: () => arrows.filter((a) => !a.classList.contains("hidden")).map((a) => data.arrows[Number(a.dataset.ix)]),
    nodeIndex: (name) => data.nodes.findIndex((n) => n.name === name),
    applyFilters,
  };
})();
