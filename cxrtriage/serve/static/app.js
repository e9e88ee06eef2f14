// cxr-triage worklist and viewer. Plain JavaScript, no build step.
// Everything the user supplied (file names) goes into the page through textContent only.
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const PRIORITY_TEXT = {
    urgent: "Urgent", review: "Review", routine: "Routine", refused: "Refused", error: "Unreadable",
    pending: "Analysing", failed: "Failed",
  };

  const state = {
    token: sessionStorage.getItem("cxr-token") || "",
    sort: "priority", offset: 0, limit: 50, total: 0,
    selected: null, study: null, info: null,
    wl: null,                 // {c, w} when the user changed window/level, else null (as stored)
    imgSeq: 0, hmSeq: 0, urls: { original: null, heatmap: null },
    listTimer: null, askingToken: false, analyzing: false, following: null,
    view: "local",            // "local" (the service's studies) or "pacs" (the PACS's studies)
    pacs: { configured: false, offset: 0, limit: 25, next: null, filter: "", timer: null, seq: 0, opening: new Set() },
  };

  // -- helpers ----------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `request failed (${status})`);
      this.status = status;
      this.body = body;
    }
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (state.token) headers.set("Authorization", "Bearer " + state.token);
    const res = await fetch(path, { ...opts, headers });
    if (res.status === 401) {
      askToken();
      throw new ApiError(401, { message: "API token required" });
    }
    return res;
  }

  async function apiJson(path, opts) {
    const res = await api(path, opts);
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    if (!res.ok) throw new ApiError(res.status, body);
    return { status: res.status, body };
  }

  async function apiBlobUrl(path) {
    const res = await api(path);
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      throw new ApiError(res.status, body);
    }
    return URL.createObjectURL(await res.blob());
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const now = new Date();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    if (d.toDateString() === now.toDateString()) return hm;
    return d.toLocaleDateString([], { day: "2-digit", month: "short" }) + " " + hm;
  }

  function fmtNum(v, digits = 2) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
  }

  function priorityOf(s) {
    const pending = s.status === "queued" || s.status === "running";
    if (pending && (!s.priority || s.priority === "pending")) return "pending";
    if (!s.priority) return s.status === "failed" ? "failed" : "pending";
    return s.priority;
  }

  function badge(p, big) {
    const b = el("span", `badge p-${p}${big ? " big" : ""}`, PRIORITY_TEXT[p] || p);
    if (p === "pending") b.prepend(el("span", "spinner"));
    return b;
  }

  function studyTitle(s) {
    return s.name || `study ${s.id.slice(0, 8)}`;
  }

  function describeImage(s) {
    const im = s.image || {};
    const parts = [];
    if (im.format === "dicom") parts.push(["DICOM", im.modality].filter(Boolean).join(" "));
    else if (im.format) parts.push(im.format.toUpperCase());
    if (im.view_position) parts.push(im.view_position);
    return parts.join(" · ");
  }

  function message(kind, text) {
    const box = $("messages");
    const m = el("div", `msg ${kind}`, text);
    box.prepend(m);
    while (box.children.length > 5) box.lastChild.remove();
    setTimeout(() => m.remove(), kind === "err" ? 15000 : 7000);
  }

  // -- token --------------------------------------------------------------------------
  function askToken() {
    $("token-button").hidden = false;
    if (state.askingToken) return;
    state.askingToken = true;
    const dlg = $("token-dialog");
    $("token-input").value = "";
    if (!dlg.open) dlg.showModal();
  }

  $("token-form").addEventListener("submit", () => {
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("cxr-token", state.token);
    state.askingToken = false;
    boot();
  });
  $("token-button").addEventListener("click", () => { state.askingToken = false; askToken(); });

  // -- service status ---------------------------------------------------------------
  async function loadInfo() {
    try {
      const { body } = await apiJson(`${API}/info`);
      state.info = body;
      const chip = $("model-chip");
      if (body.model) {
        chip.textContent = `${body.model.name} · ${body.model.version}`;
        chip.hidden = false;
      }
      setPacsConfigured(!!(body.pacs && body.pacs.configured), body.pacs && body.pacs.url);
      // a read-only (viewer) token: no upload, analysis, delete or read; the page says so
      const readOnly = !!(body.access && body.access.can_write === false);
      document.body.classList.toggle("read-only", readOnly);
      $("read-only-chip").hidden = !readOnly;
    } catch (_) { /* shown by the status dot */ }
  }

  async function checkReady() {
    let ok = false;
    let text = "offline";
    try {
      const res = await api("/readyz");
      const body = await res.json();
      ok = res.ok;
      text = ok ? "ready" : (body.checks && body.checks.model && body.checks.model.error) || "not ready";
      if (ok) loadInfo();  // the model in use can change without a restart
    } catch (e) {
      text = e.status === 401 ? "token needed" : "offline";
    }
    $("status-dot").className = "dot " + (ok ? "ok" : "bad");
    $("status-text").textContent = text;
  }

  // -- worklist -----------------------------------------------------------------------
  async function refreshList() {
    clearTimeout(state.listTimer);
    let pending = false;
    try {
      const q = `sort=${encodeURIComponent(state.sort)}&limit=${state.limit}&offset=${state.offset}`;
      const { body } = await apiJson(`${API}/studies?${q}`);
      state.total = body.total;
      renderList(body.items);
      pending = body.items.some((s) => priorityOf(s) === "pending");
      const sel = body.items.find((s) => s.id === state.selected);
      if (sel && state.study && sel.status !== state.study.status && !state.analyzing) {
        loadStudy(sel.id, { keepWindow: true });
      }
    } catch (e) {
      if (e.status !== 401) $("status-text").textContent = "offline";
    }
    state.listTimer = setTimeout(refreshList, pending ? 800 : 5000);
  }

  function renderList(items) {
    const tbody = $("worklist-body");
    tbody.replaceChildren();
    for (const s of items) {
      const p = priorityOf(s);
      const tr = el("tr", `p-${p}`);
      tr.dataset.id = s.id;
      tr.tabIndex = -1;
      if (s.id === state.selected) tr.classList.add("selected");
      const flag = el("td", "col-flag");
      flag.append(el("span", "flag"));
      const pr = el("td");
      pr.append(badge(p));
      const st = el("td");
      const name = el("div", "study-name", studyTitle(s));
      name.title = studyTitle(s);
      const info = [s.patient_ref, describeImage(s), s.source !== "upload" ? s.source : null].filter(Boolean);
      st.append(name, el("div", "study-info", info.join(" · ")));
      const ai = el("td", "ai");
      if (s.read_label) st.append(el("div", "study-read", `read: ${s.read_label}`));
      if (s.label) {
        ai.append(el("span", "ai-label", s.label), el("span", "ai-score", `P ${fmtNum(s.score)}`));
        if (s.judged_by) ai.append(el("span", "ai-model", s.judged_by));
      } else {
        ai.append(el("span", "muted", p === "pending" ? "…" : "–"));
      }
      const tm = el("td", "time", fmtTime(s.created_at));
      tr.append(flag, pr, st, ai, tm);
      tr.addEventListener("click", () => selectStudy(s.id));
      tbody.append(tr);
    }
    $("empty-list").hidden = items.length > 0;
    $("worklist-count").textContent = state.total ? `(${state.total})` : "";
    const last = Math.min(state.offset + items.length, state.total);
    $("page-info").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "";
    $("prev-page").disabled = state.offset === 0;
    $("next-page").disabled = state.offset + state.limit >= state.total;
  }

  $("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.offset = 0; refreshList(); });
  $("prev-page").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); refreshList(); });
  $("next-page").addEventListener("click", () => { state.offset += state.limit; refreshList(); });

  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea, dialog") || (e.key !== "ArrowDown" && e.key !== "ArrowUp")) return;
    const rows = [...document.querySelectorAll("#worklist-body tr")];
    if (!rows.length) return;
    const i = rows.findIndex((r) => r.dataset.id === state.selected);
    const next = rows[Math.max(0, Math.min(rows.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)))];
    e.preventDefault();
    selectStudy(next.dataset.id);
    next.scrollIntoView({ block: "nearest" });
  });

  // -- PACS view ------------------------------------------------------------------------
  // Only when the service has a PACS (GET /info says so). Lists the PACS's chest radiograph
  // studies with any AI result stored there; "Open" imports a study and selects it.
  const LOCAL_ONLY = ["sort-box", "dropzone", "local-wrap", "local-pager"];
  const PACS_ONLY = ["pacs-bar", "pacs-wrap", "pacs-pager"];

  function setPacsConfigured(on, url) {
    state.pacs.configured = on;
    $("view-tabs").hidden = !on;
    $("tab-pacs").title = url ? `Studies in ${url}` : "";
    $("pacs-where").textContent = url || "";
    if (!on && state.view === "pacs") showView("local");
  }

  function showView(view) {
    state.view = view;
    const pacs = view === "pacs";
    $("tab-local").setAttribute("aria-selected", String(!pacs));
    $("tab-pacs").setAttribute("aria-selected", String(pacs));
    $("tab-local").classList.toggle("active", !pacs);
    $("tab-pacs").classList.toggle("active", pacs);
    for (const id of LOCAL_ONLY) $(id).hidden = pacs;
    for (const id of PACS_ONLY) $(id).hidden = !pacs;
    clearTimeout(state.pacs.timer);
    if (pacs) refreshPacs();
  }

  $("tab-local").addEventListener("click", () => showView("local"));
  $("tab-pacs").addEventListener("click", () => showView("pacs"));
  $("pacs-bar").addEventListener("submit", (e) => {
    e.preventDefault();
    state.pacs.filter = $("pacs-filter").value.trim();
    state.pacs.offset = 0;
    refreshPacs();
  });
  $("pacs-prev").addEventListener("click", () => {
    state.pacs.offset = Math.max(0, state.pacs.offset - state.pacs.limit);
    refreshPacs();
  });
  $("pacs-next").addEventListener("click", () => {
    if (state.pacs.next !== null) { state.pacs.offset = state.pacs.next; refreshPacs(); }
  });

  function dicomDate(d, t) {
    if (!d || d.length < 8) return "";
    let out = `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}`;
    if (t && t.length >= 4) out += ` ${t.slice(0, 2)}:${t.slice(2, 4)}`;
    return out;
  }

  function personName(pn) {
    return (pn || "").split("^").filter(Boolean).join(", ");
  }

  async function refreshPacs() {
    const P = state.pacs;
    clearTimeout(P.timer);
    if (state.view !== "pacs") return;
    const seq = ++P.seq;
    let pending = false;
    $("pacs-page-info").textContent = "loading…";
    try {
      let q = `limit=${P.limit}&offset=${P.offset}`;
      if (P.filter) q += `&patient_id=${encodeURIComponent(P.filter)}`;
      const { body } = await apiJson(`${API}/pacs/studies?${q}`);
      if (seq !== P.seq || state.view !== "pacs") return;
      P.next = body.next_offset;
      renderPacs(body.items);
      pending = body.items.some((r) => r.ai && r.ai.priority === "pending");
    } catch (e) {
      if (seq !== P.seq) return;
      $("pacs-page-info").textContent = "";
      if (e.status === 404) { setPacsConfigured(false); return; }
      if (e.status !== 401) {
        $("pacs-body").replaceChildren();
        const box = $("pacs-empty");
        box.hidden = false;
        box.textContent = `PACS not available: ${e.message}`;
      }
    }
    if (state.view === "pacs") P.timer = setTimeout(refreshPacs, pending ? 2000 : 30000);
  }

  function renderPacs(items) {
    const tbody = $("pacs-body");
    tbody.replaceChildren();
    for (const r of items) {
      const ai = r.ai;
      const p = ai && ai.priority ? ai.priority : null;
      const tr = el("tr", p ? `p-${p}` : "p-none");
      tr.dataset.uid = r.study_uid;
      const opened = r.opened || [];
      if (opened.some((o) => o.id === state.selected)) tr.classList.add("selected");
      const flag = el("td", "col-flag");
      flag.append(el("span", "flag"));
      const pr = el("td");
      if (p) pr.append(badge(p));
      else pr.append(el("span", "muted", "Not triaged"));
      const st = el("td");
      const title = r.description || r.accession_number || "Chest radiograph study";
      const name = el("div", "study-name", title);
      name.title = `Study Instance UID ${r.study_uid}`;
      const who = [personName(r.patient_name), r.patient_id].filter(Boolean).join(" · ");
      const n = r.n_instances;
      const info = [dicomDate(r.study_date, r.study_time), who, r.accession_number ? `Acc ${r.accession_number}` : null,
        (r.modalities || []).join("/"), n ? `${n} image${n === 1 ? "" : "s"}` : null,
        opened.length ? "opened" : null].filter(Boolean).join(" · ");
      const line = el("div", "study-info", info);
      line.title = info;
      st.append(name, line);
      const aiCell = el("td", "ai");
      if (ai && ai.label) {
        aiCell.append(el("span", "ai-label", ai.label));
        const where = ai.source === "pacs" ? "stored in PACS" : "this service";
        const sc = el("span", "ai-score", ai.score !== null && ai.score !== undefined ? `P ${fmtNum(ai.score)}` : "–");
        sc.title = `AI result from ${where}`;
        aiCell.append(sc);
      } else if (ai && ai.refused) {
        aiCell.append(el("span", "muted", "not scored"));
      } else {
        aiCell.append(el("span", "muted", p === "pending" ? "…" : "–"));
      }
      const act = el("td", "col-act");
      const btn = el("button", "btn btn-small" + (opened.length ? "" : " btn-open"), opened.length ? "Show" : "Open");
      btn.type = "button";
      btn.setAttribute("aria-label", `${opened.length ? "Show" : "Open"} ${title}`);
      if (state.pacs.opening.has(r.study_uid)) { btn.disabled = true; btn.textContent = "Opening…"; }
      btn.addEventListener("click", (e) => { e.stopPropagation(); openPacs(r, btn); });
      act.append(btn);
      tr.append(flag, pr, st, aiCell, act);
      if (opened.length) tr.addEventListener("click", () => showOpened(opened, r.study_uid));
      tbody.append(tr);
    }
    const box = $("pacs-empty");
    box.textContent = state.pacs.filter ? "No chest radiograph study matches." : "No chest radiograph studies in the PACS.";
    box.hidden = items.length > 0;
    const P = state.pacs;
    $("pacs-page-info").textContent = items.length ? `${P.offset + 1}–${P.offset + items.length}` : "";
    $("pacs-prev").disabled = P.offset === 0;
    $("pacs-next").disabled = P.next === null || P.next === undefined;
  }

  function showOpened(opened, uid) {
    selectStudy(opened[0].id);
    markPacsSelected(uid);
  }

  async function openPacs(r, btn) {
    const opened = r.opened || [];
    if (opened.length) { showOpened(opened, r.study_uid); return; }
    const P = state.pacs;
    if (P.opening.has(r.study_uid)) return;
    P.opening.add(r.study_uid);
    btn.disabled = true;
    btn.textContent = "Opening…";
    try {
      const res = await api(`${API}/pacs/studies/${encodeURIComponent(r.study_uid)}/open`, { method: "POST" });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      if (!res.ok) {
        message("err", (body && body.message) || `opening the PACS study failed (${res.status})`);
        return;
      }
      const added = body.studies.filter((s) => s.created).length;
      const title = r.description || r.accession_number || "PACS study";
      message("ok", added ? `${title}: ${added} image${added === 1 ? "" : "s"} opened, analysing`
        : `${title}: already in the worklist`);
      for (const err of body.errors || []) message("err", err.message);
      refreshList();
      if (body.ids.length) {
        selectStudy(body.ids[0]);
        markPacsSelected(r.study_uid);
      }
    } catch (e) {
      if (e.status !== 401) message("err", `opening the PACS study failed: ${e.message}`);
    } finally {
      P.opening.delete(r.study_uid);
      refreshPacs();
    }
  }

  function markPacsSelected(uid) {
    for (const tr of document.querySelectorAll("#pacs-body tr")) tr.classList.toggle("selected", tr.dataset.uid === uid);
  }

  // -- upload ---------------------------------------------------------------------------
  // The file input and drag-and-drop both end here.
  async function uploadFiles(fileList) {
    const files = [...fileList];
    if (!files.length) return;
    const fd = new FormData();
    for (const f of files) fd.append("files", f, f.name);
    const dz = $("dropzone");
    dz.classList.add("busy");
    try {
      const res = await api(`${API}/studies`, { method: "POST", body: fd });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      if (!res.ok) {
        for (const err of (body && body.errors) || [body || { message: `upload failed (${res.status})` }]) {
          message("err", err.message);
        }
        return;
      }
      for (const s of body.studies) {
        if (s.created) message("ok", `${s.name || "file"}: added, analysing`);
        else message("warn", `${s.name || "file"}: already in the worklist`);
      }
      for (const err of body.errors || []) message("err", err.message);
      await refreshList();
      if (body.id) selectStudy(body.id);
    } catch (e) {
      if (e.status !== 401) message("err", `upload failed: ${e.message}`);
    } finally {
      dz.classList.remove("busy");
    }
  }

  const input = $("file-input");
  input.addEventListener("change", () => { uploadFiles(input.files).finally(() => { input.value = ""; }); });
  const dz = $("dropzone");
  const panel = document.querySelector(".worklist-panel");
  ["dragenter", "dragover"].forEach((t) => panel.addEventListener(t, (e) => {
    e.preventDefault();
    dz.classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((t) => panel.addEventListener(t, (e) => {
    if (!panel.contains(e.relatedTarget)) dz.classList.remove("over");
  }));
  panel.addEventListener("drop", (e) => {
    e.preventDefault();
    dz.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files) uploadFiles(e.dataTransfer.files);
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  // -- selection and details ------------------------------------------------------------
  function selectStudy(id) {
    if (state.selected !== id) state.wl = null;
    state.selected = id;
    for (const tr of document.querySelectorAll("#worklist-body tr")) {
      tr.classList.toggle("selected", tr.dataset.id === id);
    }
    loadStudy(id, { keepWindow: false });
  }

  async function loadStudy(id, { keepWindow }) {
    try {
      const { body } = await apiJson(`${API}/studies/${encodeURIComponent(id)}`);
      if (state.selected !== id) return;
      const heatmapChanged = !state.study || state.study.id !== id ||
        (state.study.result && state.study.result.id) !== (body.result && body.result.id);
      state.study = body;
      renderDetails(body, false);
      setupWindow(body, keepWindow);
      layoutFrame();
      loadOriginal();
      if (heatmapChanged) loadHeatmap();
      if (priorityOf(body) === "pending") followStudy(id);
    } catch (e) {
      if (e.status === 404) {
        message("warn", "that study no longer exists");
        clearSelection();
        refreshList();
      }
    }
  }

  // A selected study still waiting for the model: hold a long poll until its result is in,
  // wherever it sits in the worklist (or on another page, or opened from the PACS view).
  async function followStudy(id) {
    if (state.following === id) return;
    state.following = id;
    try {
      while (state.selected === id) {
        const { body } = await apiJson(`${API}/studies/${encodeURIComponent(id)}?wait=20`);
        if (state.selected !== id) return;
        if (priorityOf(body) !== "pending") {
          if (!state.analyzing) {
            state.following = null;
            loadStudy(id, { keepWindow: true });
          }
          return;
        }
      }
    } catch (_) {
      /* the worklist refresh takes over */
    } finally {
      if (state.following === id) state.following = null;
    }
  }

  function clearSelection() {
    state.selected = null;
    state.study = null;
    $("frame").hidden = true;
    $("stage-empty").hidden = false;
    $("legend").hidden = true;
    $("wl-readout").hidden = true;
    $("study-title").textContent = "No study selected";
    $("study-sub").textContent = "";
    $("study-meta").replaceChildren();
    $("result").replaceChildren(el("p", "muted", "The model's call, its probabilities and where it looked appear here."));
    for (const b of ["analyze", "delete", "save-overlay", "wl-center", "wl-width", "wl-reset"]) $(b).disabled = true;
    document.dispatchEvent(new CustomEvent("cxr:study", { detail: null }));
  }
  document.addEventListener("cxr:refresh", () => refreshList());

  function renderDetails(s, fresh) {
    $("study-title").textContent = studyTitle(s);
    $("study-sub").textContent = `study ${s.id}`;
    const meta = $("study-meta");
    meta.replaceChildren();
    const im = s.image || {};
    const rows = [
      ["Patient", s.patient_ref || "–"],
      ["Image", [describeImage(s), im.bits ? `${im.bits}-bit` : null].filter(Boolean).join(" · ") || "–"],
      ["Size", im.width ? `${im.width} × ${im.height} px` : "–"],
      ["Source", s.source + (s.external_ref ? ` (${s.external_ref})` : "")],
      ["Received", fmtTime(s.created_at)],
    ];
    for (const [k, v] of rows) meta.append(el("dt", null, k), el("dd", null, v));
    $("analyze").disabled = state.analyzing;
    $("delete").disabled = false;
    $("save-overlay").disabled = !s.result;
    renderResult(s, fresh);
    document.dispatchEvent(new CustomEvent("cxr:study", { detail: s }));
  }

  function renderResult(s, fresh) {
    const box = $("result");
    box.replaceChildren();
    box.classList.remove("fresh");
    const r = s.result;
    const p = priorityOf(s);
    if (!r) {
      const line = el("p", "muted");
      if (p === "pending") line.append(el("span", "spinner"), " Queued for the model…");
      else line.textContent = "Not analysed yet. Press “AI diagnosis”.";
      box.append(line);
      return;
    }
    const top = el("div", "result-top");
    if (r.error) {
      top.append(el("span", "result-label", "Unreadable"), badge("error", true));
      box.append(top, el("p", "result-error", r.error));
    } else if (r.priority === "refused") {
      top.append(el("span", "result-label", "Not scored"), badge("refused", true));
      box.append(top, el("p", "gate-no", `Quality gate: ${(r.gate && r.gate.reason) || "refused"}`));
    } else {
      const classes = (state.info && state.info.model && state.info.model.classes) || ["normal"];
      const abnormal = r.label && ![classes[0], "normal", "no finding"].includes(r.label);
      top.append(el("span", "result-label" + (abnormal ? " abnormal" : ""), r.label), badge(r.priority, true));
      box.append(top);
      const row = el("div", "score-row");
      const val = el("b", null, fmtNum(r.score));
      row.append(el("span", null, "P(abnormal)"), val);
      const gauge = el("div", "gauge");
      const fill = el("div", "gauge-fill");
      fill.style.width = `${Math.max(0, Math.min(1, r.score || 0)) * 100}%`;
      const mark = el("div", "gauge-mark");
      mark.style.left = `calc(${(r.threshold || 0) * 100}% - 1px)`;
      mark.title = `threshold ${fmtNum(r.threshold)}`;
      gauge.append(fill, mark);
      const hi = state.info && state.info.model ? state.info.model.threshold_high : null;
      const cap = el("div", "gauge-caption",
        `review at ≥ ${fmtNum(r.threshold)}` + (hi !== null && hi !== undefined ? ` · urgent at ≥ ${fmtNum(hi)}` : ""));
      box.append(row, gauge, cap);
      const probs = el("div", "probs");
      for (const [name, v] of Object.entries(r.probabilities || {})) {
        const line = el("div", "prob");
        const bar = el("div", "prob-bar");
        const fillp = el("span");
        fillp.style.width = `${v * 100}%`;
        bar.append(fillp);
        line.append(el("span", "prob-name", name), bar, el("span", "prob-val", `${(v * 100).toFixed(1)}%`));
        probs.append(line);
      }
      box.append(probs);
    }
    if (r.gate && r.gate.warning) box.append(el("p", "gate-no", `Warning: ${r.gate.warning}`));
    const facts = el("dl", "facts");
    const gate = r.gate || {};
    const gateText = gate.accepted ? "accepted" : (gate.reason ? "refused" : "–");
    const t = r.timings_ms || {};
    const rows = [
      ["Quality gate", gateText, gate.accepted ? "gate-ok" : "gate-no"],
      ["Model", `${r.model.name || "?"} · ${r.model.version || "?"}` +
        (r.model.routed_by ? ` (chosen by ${r.model.routed_by === "age" ? "patient age" : "quality gate"})` : "")],
      ["Time", t.total !== undefined ? `${fmtNum(t.total, 1)} ms (model ${fmtNum(t.model, 1)} ms)` : "–"],
      ["Result at", r.created_at ? new Date(r.created_at).toLocaleTimeString([], { hour12: false }) : "–"],
    ];
    for (const [k, v, cls] of rows) facts.append(el("dt", null, k), el("dd", cls || null, v));
    box.append(facts);
    if (fresh) {
      void box.offsetWidth;
      box.classList.add("fresh");
    }
  }

  // -- AI diagnosis ---------------------------------------------------------------------
  $("analyze").addEventListener("click", async () => {
    const id = state.selected;
    if (!id || state.analyzing) return;
    state.analyzing = true;
    const btn = $("analyze");
    btn.disabled = true;
    btn.classList.add("busy");
    $("analyze-label").textContent = "Analysing…";
    try {
      const res = await api(`${API}/studies/${encodeURIComponent(id)}/analyze?wait=30`, { method: "POST" });
      const body = await res.json();
      if (res.status === 202) {
        message("warn", "the model is busy; the result will appear shortly");
      } else if (!res.ok) {
        message("err", body.message || "analysis failed");
      } else if (state.selected === id) {
        state.study = body;
        renderDetails(body, true);
        loadHeatmap();
      }
      refreshList();
    } catch (e) {
      if (e.status !== 401) message("err", `analysis failed: ${e.message}`);
    } finally {
      state.analyzing = false;
      btn.classList.remove("busy");
      btn.disabled = !state.selected;
      $("analyze-label").textContent = "AI diagnosis";
    }
  });

  $("delete").addEventListener("click", async () => {
    const s = state.study;
    if (!s || !window.confirm(`Delete ${studyTitle(s)} and its results?`)) return;
    try {
      await api(`${API}/studies/${encodeURIComponent(s.id)}`, { method: "DELETE" });
      message("ok", `${studyTitle(s)}: deleted`);
      clearSelection();
      refreshList();
    } catch (e) {
      message("err", `delete failed: ${e.message}`);
    }
  });

  $("save-overlay").addEventListener("click", async () => {
    const s = state.study;
    if (!s || !s.result) return;
    try {
      const url = await apiBlobUrl(s.result.overlay_url + "&max_side=1024");
      const a = el("a");
      a.href = url;
      a.download = `cxr-${s.id}-overlay.png`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 5000);
    } catch (e) {
      message("err", `cannot save: ${e.message}`);
    }
  });

  // -- viewer ---------------------------------------------------------------------------
  const stage = $("stage");
  const frame = $("frame");
  const imgOriginal = $("img-original");
  const imgHeatmap = $("img-heatmap");

  function maxSide() {
    const r = stage.getBoundingClientRect();
    const want = Math.max(r.width, r.height) * (window.devicePixelRatio || 1);
    return Math.max(256, Math.min(2048, Math.ceil(want / 256) * 256));
  }

  function layoutFrame() {
    const s = state.study;
    if (!s || !s.image || !s.image.width) return;
    const r = stage.getBoundingClientRect();
    const padX = 16;
    const padY = 42; // room for the banner above and the readout and legend below
    const scale = Math.min((r.width - padX * 2) / s.image.width, (r.height - padY * 2) / s.image.height);
    frame.style.width = `${Math.max(1, Math.floor(s.image.width * scale))}px`;
    frame.style.height = `${Math.max(1, Math.floor(s.image.height * scale))}px`;
  }
  new ResizeObserver(layoutFrame).observe(stage);

  function swapUrl(kind, img, url) {
    const old = state.urls[kind];
    state.urls[kind] = url;
    img.src = url;
    if (old) setTimeout(() => URL.revokeObjectURL(old), 1000);
  }

  async function loadOriginal() {
    const s = state.study;
    if (!s) return;
    const seq = ++state.imgSeq;
    let q = `max_side=${maxSide()}`;
    if (state.wl) q += `&wc=${state.wl.c.toFixed(3)}&ww=${Math.max(1, state.wl.w).toFixed(3)}`;
    try {
      const url = await apiBlobUrl(`${API}/studies/${encodeURIComponent(s.id)}/image.png?${q}`);
      if (seq !== state.imgSeq) { URL.revokeObjectURL(url); return; }
      swapUrl("original", imgOriginal, url);
      $("frame").hidden = false;
      $("stage-empty").hidden = true;
    } catch (e) {
      if (e.status !== 401) message("err", `cannot show the image: ${e.message}`);
    }
  }

  async function loadHeatmap() {
    const s = state.study;
    const seq = ++state.hmSeq;
    const hasMap = !!(s && s.result && s.result.heatmap_url);
    if (!hasMap) {
      imgHeatmap.hidden = true;
      $("legend").hidden = true;
      imgHeatmap.removeAttribute("src");
      return;
    }
    try {
      const url = await apiBlobUrl(`${s.result.heatmap_url}&max_side=${maxSide()}`);
      if (seq !== state.hmSeq) { URL.revokeObjectURL(url); return; }
      swapUrl("heatmap", imgHeatmap, url);
      applyHeatmapVisibility();
    } catch (e) {
      imgHeatmap.hidden = true;
    }
  }

  function applyHeatmapVisibility() {
    const on = $("heatmap-toggle").checked && !!imgHeatmap.getAttribute("src");
    imgHeatmap.hidden = !on;
    $("legend").hidden = !on;
    imgHeatmap.style.opacity = String($("opacity").value / 100);
  }

  $("heatmap-toggle").addEventListener("change", applyHeatmapVisibility);
  $("opacity").addEventListener("input", (e) => {
    $("opacity-value").textContent = `${e.target.value}%`;
    applyHeatmapVisibility();
  });

  // window / level: sliders, drag on the image, reset. The server re-renders the stored file.
  function setupWindow(s, keep) {
    const w = s.window;
    const cs = $("wl-center");
    const ws = $("wl-width");
    const enabled = !!w;
    for (const b of [cs, ws, $("wl-reset")]) b.disabled = !enabled;
    if (!enabled) return;
    const range = Math.max(1, w.max - w.min);
    const step = range > 2000 ? 1 : range / 1000;
    cs.min = String(w.min - range / 2);
    cs.max = String(w.max + range / 2);
    cs.step = String(step);
    ws.min = String(Math.max(step, range / 500));
    ws.max = String(range * 2 + 1);
    ws.step = String(step);
    if (!keep || !state.wl) state.wl = null;
    const cur = state.wl || { c: w.center, w: w.width };
    cs.value = String(cur.c);
    ws.value = String(cur.w);
    showReadout(cur);
  }

  function showReadout(cur) {
    const r = $("wl-readout");
    r.hidden = false;
    r.textContent = `W ${Math.round(cur.w)}  L ${Math.round(cur.c)}` + (state.wl ? "" : "  (as stored)");
  }

  let wlTimer = null;
  function scheduleWindow(immediate) {
    clearTimeout(wlTimer);
    wlTimer = setTimeout(loadOriginal, immediate ? 0 : 90);
  }

  function onSlider() {
    state.wl = { c: Number($("wl-center").value), w: Number($("wl-width").value) };
    showReadout(state.wl);
    scheduleWindow(false);
  }
  $("wl-center").addEventListener("input", onSlider);
  $("wl-width").addEventListener("input", onSlider);
  $("wl-reset").addEventListener("click", () => {
    if (!state.study || !state.study.window) return;
    state.wl = null;
    setupWindow(state.study, false);
    scheduleWindow(true);
  });

  let drag = null;
  frame.addEventListener("pointerdown", (e) => {
    const w = state.study && state.study.window;
    if (!w || e.button !== 0) return;
    frame.setPointerCapture(e.pointerId);
    const cur = state.wl || { c: w.center, w: w.width };
    drag = { x: e.clientX, y: e.clientY, c: cur.c, w: cur.w, k: Math.max(1, w.max - w.min) / 400 };
  });
  frame.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const ww = Math.max(1, drag.w + (e.clientX - drag.x) * drag.k);
    const wc = drag.c + (e.clientY - drag.y) * drag.k;
    state.wl = { c: wc, w: ww };
    $("wl-center").value = String(wc);
    $("wl-width").value = String(ww);
    showReadout(state.wl);
    scheduleWindow(false);
  });
  const endDrag = () => { if (drag) { drag = null; scheduleWindow(true); } };
  frame.addEventListener("pointerup", endDrag);
  frame.addEventListener("pointercancel", endDrag);
  frame.addEventListener("dblclick", () => $("wl-reset").click());

  // -- start ----------------------------------------------------------------------------------
  function boot() {
    loadInfo();
    checkReady();
    refreshList();
  }
  clearSelection();
  boot();
  setInterval(checkReady, 10000);
  // What the page's other scripts (reads.js) share with this one: one element builder, one API
  // call (token and 401 handling) and one message box.
  window.cxrPage = { el, apiJson, message };
})();
