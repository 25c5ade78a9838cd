// shangpin workbench: keyboard review over the REST API (the login cookie plus the X-Requested-With header).
(function () {
  "use strict";
  const table = document.querySelector("table.queue, table.review[data-can-write]");
  const canWrite = !!document.querySelector('[data-can-write="true"]');
  const toast = document.getElementById("toast");
  let toastTimer = null;

  function say(text) {
    if (!toast) return;
    toast.textContent = text;
    toast.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => toast.classList.remove("show"), 2200);
  }

  async function api(path, body) {
    const answer = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Requested-With": "shangpin" },
      credentials: "same-origin",
      body: body === undefined ? "{}" : JSON.stringify(body),
    });
    const data = await answer.json().catch(() => ({}));
    if (!answer.ok) throw new Error(data.detail && typeof data.detail === "string" ? data.detail : data.message || answer.statusText);
    return data;
  }

  function rows() { return Array.from(document.querySelectorAll("table.queue tbody tr[data-id], table.review tbody tr[data-id]")); }
  function current() { return document.querySelector("tr.cur[data-id]") || null; }
  function select(row) {
    if (!row) return;
    rows().forEach((r) => r.classList.remove("cur"));
    row.classList.add("cur");
    row.scrollIntoView({ block: "nearest" });
  }
  function move(step) {
    const all = rows();
    if (!all.length) return;
    const at = all.indexOf(current());
    select(all[Math.max(0, Math.min(all.length - 1, at < 0 ? 0 : at + step))]);
  }
  function nextOpen(from) {
    const all = rows();
    const start = all.indexOf(from);
    for (let i = 1; i <= all.length; i++) {
      const r = all[(start + i) % all.length];
      if (!r.classList.contains("done")) return r;
    }
    return null;
  }
  function show(row, s) {
    const status = row.querySelector("td.status");
    if (status) { status.textContent = s.status; status.className = "status " + s.status; }
    const v = row.querySelector(".v");
    if (v && s.final_value) v.textContent = s.final_value;
    row.classList.toggle("done", s.status !== "pending");
  }
  function remaining(delta) {
    const el = document.getElementById("remaining");
    if (el) el.textContent = String(Math.max(0, parseInt(el.textContent, 10) + delta));
  }

  async function decide(action, value) {
    const row = current();
    if (!row || !canWrite) return;
    const id = row.dataset.id;
    const wasPending = !row.classList.contains("done");
    try {
      const s = await api(`/v1/suggestions/${id}/${action}`, value === undefined ? undefined : { value });
      show(row, s);
      if (wasPending) remaining(-1);
      say(`${action === "edit" ? "edited" : action + "ed"}: ${s.attribute || ""} ${s.final_value || s.value}`);
      const next = nextOpen(row);
      if (next) select(next);
      else if (document.querySelector("table.queue")) setTimeout(() => location.reload(), 400);
    } catch (err) { say(String(err.message || err)); }
  }

  function edit() {
    const row = current();
    if (!row || !canWrite) return;
    const input = row.querySelector("input.edit");
    if (!input) return;
    input.hidden = false;
    input.value = (row.querySelector(".v") || {}).textContent || "";
    input.focus();
    input.select();
    input.onkeydown = (ev) => {
      if (ev.key === "Enter") { ev.preventDefault(); const v = input.value.trim(); input.hidden = true; if (v) decide("edit", v); }
      else if (ev.key === "Escape") { ev.preventDefault(); input.hidden = true; }
      ev.stopPropagation();
    };
  }

  async function undo() {
    if (!canWrite) return;
    try {
      const s = await api("/v1/suggestions/undo");
      const row = document.querySelector(`tr[data-id="${s.id}"]`);
      if (row) { const was = row.classList.contains("done"); show(row, s); select(row); if (was && s.status === "pending") remaining(1); }
      say(`undone: ${s.attribute || ""} is ${s.status} again`);
    } catch (err) { say(String(err.message || err)); }
  }

  const bulk = document.getElementById("bulk");
  if (bulk) {
    bulk.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const score = parseFloat(document.getElementById("bulk-score").value);
      const body = { min_score: score };
      for (const k of ["attribute", "category", "stage"]) if (bulk.dataset[k]) body[k] = bulk.dataset[k];
      try {
        const r = await api("/v1/suggestions/bulk-accept", body);
        say(`accepted ${r.accepted} suggestions with score ≥ ${score}`);
        setTimeout(() => location.reload(), 600);
      } catch (err) { say(String(err.message || err)); }
    });
  }

  document.addEventListener("click", (ev) => {
    const row = ev.target.closest && ev.target.closest("tr[data-id]");
    if (row && !ev.target.closest("a, input")) select(row);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.target.matches("input, select, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const keys = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      a: () => decide("accept"), r: () => decide("reject"), e: edit, u: undo,
      o: () => { const r = current(); if (r && r.dataset.product) location.href = "/ui/products/" + encodeURIComponent(r.dataset.product); },
      b: () => { const el = document.getElementById("bulk-score"); if (el) el.focus(); },
    };
    const fn = keys[ev.key];
    if (fn) { ev.preventDefault(); fn(); }
  });
  if (table && !current()) move(0);
})();
