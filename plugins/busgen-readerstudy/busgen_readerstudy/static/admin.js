// Coordinator page of the busgen reader study: progress per reader and answer exports.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function error(msg) { const e = $("error"); e.textContent = msg || ""; e.hidden = !msg; }

  async function refresh() {
    const resp = await fetch("/api/admin/progress", { credentials: "same-origin" });
    const data = await resp.json();
    if (resp.status !== 200) { $("admin-view").hidden = true; $("admin-login").hidden = false; if (timer) clearInterval(timer); timer = null; return false; }
    $("admin-login").hidden = true; $("admin-view").hidden = false; error("");
    const body = document.querySelector("#progress-table tbody");
    body.textContent = "";
    for (const r of data.readers) {
      const tr = document.createElement("tr");
      tr.dataset.reader = r.reader;
      const last = r.last_answer_at ? new Date(r.last_answer_at * 1000).toLocaleString() : "-";
      for (const v of [r.reader, r.answered, r.total, Math.round(100 * r.answered / Math.max(1, r.total)) + "%", last]) {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    const refused = Object.entries(data.refused).map(([k, v]) => k.replace("refused_", "") + ": " + v).join(", ");
    $("refused").textContent = "Refused requests: " + (refused || "none");
    document.body.dataset.loaded = String(Date.now());
    return true;
  }

  $("admin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const resp = await fetch("/api/admin/login", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code: $("admin-code").value.trim() }) });
    const data = await resp.json();
    if (resp.status !== 200) { error(data.error); return; }
    $("admin-code").value = "";
    if (await refresh() && !timer) timer = setInterval(refresh, 5000);
  });

  refresh().then((ok) => { if (ok) timer = setInterval(refresh, 5000); }).catch((e) => error(e.message));
})();
