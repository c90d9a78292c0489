// Reader page of the busgen reader study. No external code: this file, reader.html and style.css are all.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const view = { zoom: 1, fit: 1, level: 128, width: 255 };
  let state = null;        // last state from the server
  let current = null;      // {image_id, position}
  let pixels = null;       // original grey values of the current image (Uint8ClampedArray, RGBA)
  let shownAt = 0;
  let call = null;
  let busy = false;

  function show(id) {
    for (const s of ["login-view", "study-view", "done-view"]) $(s).hidden = s !== id;
    $("who").hidden = id === "login-view";
  }

  function error(msg) { const e = $("error"); e.textContent = msg || ""; e.hidden = !msg; }

  async function api(method, path, body) {
    const opts = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const resp = await fetch(path, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = { error: "server answered " + resp.status }; }
    return { status: resp.status, data };
  }

  function fillSelect(sel, values) {
    if (sel.options.length > 1) return;
    for (const v of values) { const o = document.createElement("option"); o.value = v; o.textContent = v; sel.appendChild(o); }
  }

  function render() {
    const canvas = $("canvas");
    if (!pixels) return;
    const ctx = canvas.getContext("2d");
    const out = ctx.createImageData(canvas.width, canvas.height);
    const lo = view.level - view.width / 2, scale = 255 / Math.max(1, view.width);
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.round((v - lo) * scale);
    for (let i = 0; i < pixels.length; i += 4) {
      const g = lut[pixels[i]];
      out.data[i] = g; out.data[i + 1] = g; out.data[i + 2] = g; out.data[i + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    const px = Math.round(canvas.width * view.fit * view.zoom);
    canvas.style.width = px + "px";
    canvas.style.height = Math.round(canvas.height * view.fit * view.zoom) + "px";
    $("zoom-text").textContent = Math.round(view.zoom * 100) + "%";
    $("wl-text").textContent = "L " + Math.round(view.level) + " / W " + Math.round(view.width);
    $("wl-level").value = view.level; $("wl-width").value = view.width;
  }

  function resetView() { view.zoom = 1; view.level = 128; view.width = 255; render(); }

  async function loadImage(imageId) {
    const resp = await fetch("/image/" + encodeURIComponent(imageId), { credentials: "same-origin" });
    if (!resp.ok) { let m = "could not load the image"; try { m = (await resp.json()).error; } catch (e) {} throw new Error(m); }
    const bitmap = await createImageBitmap(await resp.blob());
    const canvas = $("canvas");
    canvas.width = bitmap.width; canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    pixels = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data.slice();
    const box = $("viewer");
    view.fit = Math.min((box.clientWidth - 8) / bitmap.width, (box.clientHeight - 8) / bitmap.height);
    canvas.dataset.imageId = imageId;
    resetView();
  }

  function resetAnswer() {
    call = null;
    for (const b of document.querySelectorAll(".call")) b.classList.remove("selected");
    for (const r of document.querySelectorAll("input[name=confidence]")) r.checked = false;
    $("pathology").value = ""; $("birads").value = "";
    updateSubmit();
  }

  function confidence() {
    const r = document.querySelector("input[name=confidence]:checked");
    return r ? parseInt(r.value, 10) : null;
  }

  function updateSubmit() { $("submit").disabled = busy || !(call && confidence()); }

  function setCall(c) {
    call = c;
    for (const b of document.querySelectorAll(".call")) b.classList.toggle("selected", b.dataset.call === c);
    updateSubmit();
  }

  async function apply(newState) {
    state = newState;
    $("reader-name").textContent = state.reader;
    $("progress").max = state.n_total; $("progress").value = state.n_done;
    $("progress-text").textContent = state.n_done + " / " + state.n_total;
    fillSelect($("pathology"), state.pathologies);
    fillSelect($("birads"), state.birads_values);
    if (!state.next) {
      current = null; pixels = null;
      $("done-text").textContent = "All " + state.n_total + " images answered. Thank you, " + state.reader + ".";
      show("done-view");
      return;
    }
    show("study-view");
    if (!current || current.image_id !== state.next.image_id) {
      current = state.next;
      resetAnswer();
      await loadImage(current.image_id);
      shownAt = performance.now();
    }
    document.body.dataset.ready = current.image_id;
  }

  async function submit(ev) {
    if (ev) ev.preventDefault();
    if (busy || !current || !call || !confidence()) return;
    busy = true; updateSubmit();
    const body = { image_id: current.image_id, call, confidence: confidence(),
                   pathology: $("pathology").value || null, birads: $("birads").value || null,
                   elapsed_ms: Math.round(performance.now() - shownAt) };
    $("message").textContent = "";
    try {
      const r = await api("POST", "/api/answer", body);
      if (r.status === 200) { await apply(r.data); }
      else if (r.status === 409) { $("message").textContent = r.data.error; const s = await api("GET", "/api/state"); if (s.status === 200) await apply(s.data); }
      else if (r.status === 401) { show("login-view"); error(r.data.error); }
      else { $("message").textContent = r.data.error || ("error " + r.status); }
    } catch (e) {
      $("message").textContent = "Not saved (server unreachable). Try again: " + e.message;
    } finally { busy = false; updateSubmit(); }
  }

  async function start() {
    const r = await api("GET", "/api/state");
    if (r.status === 200) { error(""); await apply(r.data); } else { show("login-view"); $("login-code").focus(); }
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/api/login", { code: $("login-code").value.trim() });
    if (r.status === 200) { error(""); $("login-code").value = ""; current = null; await apply(r.data); }
    else error(r.data.error);
  });
  $("logout").addEventListener("click", async () => { await api("POST", "/api/logout"); current = null; show("login-view"); });
  for (const b of document.querySelectorAll(".call")) b.addEventListener("click", () => setCall(b.dataset.call));
  for (const r of document.querySelectorAll("input[name=confidence]")) r.addEventListener("change", updateSubmit);
  $("answer-form").addEventListener("submit", submit);
  $("submit").addEventListener("click", submit);
  $("zoom-in").addEventListener("click", () => { view.zoom = Math.min(8, view.zoom * 1.25); render(); });
  $("zoom-out").addEventListener("click", () => { view.zoom = Math.max(0.25, view.zoom / 1.25); render(); });
  $("zoom-reset").addEventListener("click", resetView);
  $("wl-level").addEventListener("input", (e) => { view.level = +e.target.value; render(); });
  $("wl-width").addEventListener("input", (e) => { view.width = +e.target.value; render(); });
  $("viewer").addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault(); view.zoom = Math.min(8, Math.max(0.25, view.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1))); render();
  }, { passive: false });
  let drag = null;
  $("viewer").addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, sl: $("viewer").scrollLeft, st: $("viewer").scrollTop }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (e) => { if (drag) { $("viewer").scrollLeft = drag.sl - (e.clientX - drag.x); $("viewer").scrollTop = drag.st - (e.clientY - drag.y); } });

  document.addEventListener("keydown", (e) => {
    if ($("study-view").hidden || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.target && e.target.tagName === "SELECT") return;
    const k = e.key;
    if (k === "r" || k === "R") setCall("real");
    else if (k === "g" || k === "G") setCall("generated");
    else if (k >= "1" && k <= "5") { document.querySelector("input[name=confidence][value='" + k + "']").checked = true; updateSubmit(); }
    else if (k === "Enter") submit(e);
    else if (k === "+" || k === "=") { view.zoom = Math.min(8, view.zoom * 1.25); render(); }
    else if (k === "-") { view.zoom = Math.max(0.25, view.zoom / 1.25); render(); }
    else if (k === "0") resetView();
    else if (k === "ArrowUp") { view.level = Math.min(255, view.level + 4); render(); }
    else if (k === "ArrowDown") { view.level = Math.max(0, view.level - 4); render(); }
    else if (k === "ArrowRight") { view.width = Math.min(255, view.width + 8); render(); }
    else if (k === "ArrowLeft") { view.width = Math.max(1, view.width - 8); render(); }
    else return;
    e.preventDefault();
  });

  start().catch((e) => error(e.message));
})();
