// The monitoring page: per model version, the recent films' score and gate-distance histograms over the
// reference's, the drift tests by day, and sensitivity / specificity / PPV against reads with their CIs.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);

  function histogram(title, h) {
    const W = 320, H = 140, P = 22;
    const box = el("div", "mon-plot");
    box.append(el("h4", null, title));
    const s = svg("svg", { width: W, height: H, role: "img", "aria-label": title });
    const n = h.edges.length - 1;
    const top = Math.max(0.01, ...(h.recent || [0]), ...(h.reference || [0]));
    const bw = (W - 2 * P) / n;
    for (let i = 0; i < n; i++) {
      const x = P + i * bw;
      const r = h.reference ? h.reference[i] : 0;
      const c = h.recent ? h.recent[i] : 0;
      s.append(svg("rect", { x: x + 1, width: bw - 2, y: H - P - (r / top) * (H - 2 * P), height: (r / top) * (H - 2 * P), fill: "#d0d7de" }));
      s.append(svg("rect", { x: x + bw * 0.3, width: bw * 0.4, y: H - P - (c / top) * (H - 2 * P), height: (c / top) * (H - 2 * P), fill: "#0969da" }));
    }
    for (const i of [0, Math.floor(n / 2), n]) {
      const t = svg("text", { x: P + i * bw, y: H - 6, "font-size": 10, "text-anchor": "middle" });
      t.textContent = String(h.edges[i]);
      s.append(t);
    }
    box.append(s);
    const lg = el("div", "mon-legend");
    lg.append(el("span", "ref", "■ reference "), el("span", "rec", `■ last ${h.recent_films} films`));
    box.append(lg);
    return box;
  }

  function timeline(days) {
    const W = 320, H = 140, P = 22;
    const box = el("div", "mon-plot");
    box.append(el("h4", null, "Films per day (bars) and the day's distance KS (line)"));
    const s = svg("svg", { width: W, height: H, role: "img", "aria-label": "films per day" });
    const n = Math.max(1, days.length);
    const top = Math.max(1, ...days.map((d) => d.scored + d.refused));
    const bw = (W - 2 * P) / n;
    let path = "";
    days.forEach((d, i) => {
      const x = P + i * bw;
      const hs = (d.scored / top) * (H - 2 * P), hr = (d.refused / top) * (H - 2 * P);
      s.append(svg("rect", { x: x + 1, width: Math.max(1, bw - 2), y: H - P - hs, height: hs, fill: "#8c959f" }));
      s.append(svg("rect", { x: x + 1, width: Math.max(1, bw - 2), y: H - P - hs - hr, height: hr, fill: "#cf222e" }));
      const ks = d.drift && d.drift.distance_ks;
      if (ks !== null && ks !== undefined) path += `${path ? "L" : "M"}${x + bw / 2},${H - P - ks * (H - 2 * P)}`;
      d.drift && d.drift.alarm && s.append(svg("circle", { cx: x + bw / 2, cy: P / 2, r: 4, fill: "#cf222e" }));
    });
    if (path) s.append(svg("path", { d: path, stroke: "#0969da", fill: "none", "stroke-width": 2 }));
    box.append(s);
    const lg = el("div", "mon-legend", days.length ? `${days[0].day} … ${days[days.length - 1].day} · grey scored, red refused` : "no films yet");
    box.append(lg);
    return box;
  }

  function perfLine(name, m) {
    const ci = m.ci95 ? ` [${pct(m.ci95[0])}, ${pct(m.ci95[1])}]` : "";
    return `${name} ${pct(m.value)}${ci} (${m.k}/${m.n})`;
  }

  function renderModel(m) {
    const box = el("section", "mon-model" + (m.alarm ? " alarm" : ""));
    box.dataset.model = m.name;
    box.dataset.version = m.version;
    box.append(el("h3", null, `${m.name} · ${m.version}` + (m.alarm ? " — ALARM" : "")));
    const facts = el("div", "mon-facts");
    const d = m.drift;
    facts.append(el("p", null, m.reference ? `Reference: ${m.reference.films} films (${m.reference.source}).` :
      "No reference stored with this model: drift is not measured."));
    if (d) {
      facts.append(el("p", null, `Last ${d.films} films: score KS ${d.score_ks ?? "–"} (p ${d.score_p ?? "–"}), ` +
        `distance KS ${d.distance_ks ?? "–"} (p ${d.distance_p ?? "–"}), refused ${d.refused} (p ${d.refused_p ?? "–"}).`));
      for (const r of d.reasons || []) facts.append(el("p", "mon-reason", `Drift: ${r}`));
    }
    const p = m.performance;
    facts.append(el("p", null, p.reads ? `Against ${p.reads} reads: ${perfLine("sensitivity", p.sensitivity)}; ` +
      `${perfLine("specificity", p.specificity)}; ${perfLine("PPV", p.ppv)}` +
      (p.target_sensitivity ? `; the model promises sensitivity ${pct(p.target_sensitivity)}` : "") : "No reads yet."));
    for (const r of p.reasons || []) facts.append(el("p", "mon-reason", `Performance: ${r}`));
    box.append(facts);
    const plots = el("div", "mon-plots");
    plots.append(histogram("Score (films the gate accepted)", m.histograms.score),
      histogram("Quality-gate distance (every film)", m.histograms.distance), timeline(m.days));
    box.append(plots);
    return box;
  }

  async function refresh() {
    const headers = {};
    const token = sessionStorage.getItem("cxr-token");
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch("/api/v1/monitor", { headers });
    if (res.status === 401) { $("mon-token").hidden = false; $("mon-status").textContent = "token needed"; return; }
    const r = await res.json();
    $("mon-window").textContent = r.window;
    $("mon-alpha").textContent = r.alpha;
    $("mon-status").textContent = r.alarm ? "ALARM" : "no alarm";
    $("mon-status").className = "mon-status " + (r.alarm ? "alarm" : "ok");
    $("mon-models").replaceChildren(...r.models.map(renderModel));
    $("mon-alarms").replaceChildren(...r.alarms.map((a) => {
      const tr = el("tr");
      for (const v of [a.model_name, a.model_version, a.kind, new Date(a.started_at * 1000).toLocaleString(),
        a.ended_at ? new Date(a.ended_at * 1000).toLocaleString() : "ongoing", (a.detail.reasons || []).join("; ")]) tr.append(el("td", null, v));
      return tr;
    }));
  }
  $("mon-token-go").addEventListener("click", () => {
    sessionStorage.setItem("cxr-token", $("mon-token-input").value);
    $("mon-token").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, 15000);
})();
