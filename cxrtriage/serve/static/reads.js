// The reader's panel of the viewer: agree with the AI in one click (or key A), or give a label
// (keys 1-9); a change keeps the earlier read in the history. Text goes in through textContent only.
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  let study = null;
  let current = null;
  let labels = [];
  let findings = [];
  let busy = false;

  const { el, apiJson, message } = window.cxrPage;  // app.js, loaded first

  async function call(path, opts) {
    return (await apiJson(path, opts)).body;
  }

  function render(h) {
    current = h.current;
    labels = h.labels || [];
    findings = h.findings || [];
    const box = $("read-buttons");
    box.replaceChildren();
    const agree = el("button", "btn btn-small btn-primary read-agree", "Agree (A)");
    agree.type = "button";
    agree.disabled = !(study && study.result && study.result.label);
    agree.addEventListener("click", () => save({ agree: true }));
    box.append(agree);
    labels.forEach((label, i) => {
      const b = el("button", "btn btn-small read-label", `${i + 1} ${label}`);
      b.type = "button";
      b.dataset.label = label;
      if (current && current.label === label) b.classList.add("chosen");
      b.addEventListener("click", () => save({ label }));
      box.append(b);
    });
    const fbox = $("read-findings");
    fbox.replaceChildren();
    fbox.hidden = !findings.length;
    for (const f of findings) {
      const lab = el("label", "read-finding");
      const cb = el("input");
      cb.type = "checkbox";
      cb.value = f;
      cb.checked = !!(current && current.findings.includes(f));
      lab.append(cb, document.createTextNode(" " + f));
      fbox.append(lab);
    }
    const cur = $("read-current");
    if (current) {
      const what = current.label + (current.findings.length ? ` (${current.findings.join(", ")})` : "");
      const stance = current.agree === true ? "agrees with the AI" : current.agree === false ? "disagrees with the AI" : "";
      cur.textContent = `Read: ${what} by ${current.reader}${stance ? ", " + stance : ""} · model ${current.model.version || "–"}`;
    } else {
      cur.textContent = "Not read yet.";
    }
    const hist = $("read-history");
    hist.replaceChildren();
    for (const r of h.history || []) {
      hist.append(el("li", null, `${new Date(r.created_at).toLocaleString()} · ${r.reader}: ${r.label}` +
        (r.findings.length ? ` (${r.findings.join(", ")})` : "") + (r.current ? "" : " (changed)")));
    }
    $("read-panel").hidden = false;
  }

  async function load(id) {
    try {
      const h = await call(`${API}/studies/${encodeURIComponent(id)}/read`);
      if (study && study.id === id) render(h);
    } catch (e) {
      $("read-panel").hidden = true;
    }
  }

  async function save(body) {
    if (!study || busy) return;
    const id = study.id;
    const ai = study.result && study.result.label;
    if (body.label && ai) body.agree = body.label === ai;
    if (findings.length) {
      const ticked = [...document.querySelectorAll("#read-findings input:checked")].map((c) => c.value);
      if (body.label === "abnormal" || (body.agree && ai && ai !== "no finding")) body.findings = ticked;
    }
    busy = true;
    try {
      const h = await call(`${API}/studies/${encodeURIComponent(id)}/read`, {
        method: "PUT", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, source: "viewer" }),
      });
      if (study && study.id === id) render(h);
      message("ok", `read stored: ${h.current.label}`);
      document.dispatchEvent(new CustomEvent("cxr:refresh"));
    } catch (e) {
      message("err", `the read was not stored: ${e.message}`);
    } finally {
      busy = false;
    }
  }

  document.addEventListener("cxr:study", (e) => {
    const s = e.detail;
    const changed = !study || !s || study.id !== s.id;
    study = s;
    if (!s) { $("read-panel").hidden = true; return; }
    if (changed || !current) load(s.id);
  });

  document.addEventListener("keydown", (e) => {
    if (!study || e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, select, textarea, dialog")) return;
    if (document.body.classList.contains("read-only")) return;
    if (e.key === "a" || e.key === "A") {
      e.preventDefault();
      save({ agree: true });
    } else if (/^[1-9]$/.test(e.key) && labels[Number(e.key) - 1]) {
      e.preventDefault();
      save({ label: labels[Number(e.key) - 1] });
    }
  });
})();
