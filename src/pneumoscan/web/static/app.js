// pneumoscan review pages: picture controls, heatmap toggle and keyboard shortcuts. No inline script (CSP).
"use strict";

function setupViewer() {
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const form = document.getElementById("review-form");
  const comment = document.getElementById("comment");
  const modelLabel = viewer.dataset.modelLabel;
  const next = viewer.dataset.next;

  const stage = document.getElementById("stage");
  if (stage) setupStage(viewer, stage);

  const submitAs = (label) => {
    const radio = form.querySelector(`input[name="label"][value="${label}"]`);
    if (!radio) return;
    radio.checked = true;
    form.submit();
  };
  const other = (label) => (label === "PNEUMONIA" ? "NORMAL" : "PNEUMONIA");
  const confirm = document.getElementById("confirm");
  const override = document.getElementById("override");
  if (confirm) confirm.addEventListener("click", () => submitAs(modelLabel));
  if (override) override.addEventListener("click", () => submitAs(other(modelLabel)));

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target && ["TEXTAREA", "INPUT", "SELECT"].includes(event.target.tagName)
      && event.target.type !== "radio" && event.target.type !== "range";
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.key === "c" && modelLabel) submitAs(modelLabel);
    else if (event.key === "o" && modelLabel) submitAs(other(modelLabel));
    else if (event.key === "h" && viewer.toggleHeatmap) viewer.toggleHeatmap();
    else if (viewer.stageKey && viewer.stageKey(event.key)) { /* zoom, fit, invert */ }
    else if (event.key === "n" && next) window.location.assign(next);
    else return;
    event.preventDefault();
  });
}

// The picture: a canvas fitted to the viewport, zoomed (wheel, + and -) and panned (drag) by one transform; the
// image's own values (values.bin: uint16 with a JSON header) windowed here, so a window change is one table and
// one pass over the pixels; a fast first paint from a small rendition (preview.png); the heatmap drawn over it
// with an opacity.
function setupStage(viewer, stage) {
  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const status = document.getElementById("stage-status");
  const heatLoading = document.getElementById("heatmap-loading");
  const problem = document.getElementById("picture-error");
  const preset = document.getElementById("preset");
  const wlText = document.getElementById("wl");
  const zoomText = document.getElementById("zoom");
  const invertButton = document.getElementById("invert");
  const toggle = document.getElementById("toggle-heatmap");
  const opacity = document.getElementById("heatmap-opacity");
  const note = document.getElementById("heatmap-note");
  const view = { scale: 1, x: 0, y: 0 };
  const state = { source: null, width: 0, height: 0, values: null, meta: null, center: 0, window: 1,
    invert: false, heat: null, heatOn: false, full: false, moved: false };
  stage.viewState = state;
  stage.view = view;

  const resize = () => {
    const box = stage.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(box.width));
    canvas.height = Math.max(1, Math.round(box.height));
  };
  const fit = () => {
    if (!state.width) return;
    const scale = Math.min(canvas.width / state.width, canvas.height / state.height);
    view.scale = scale;
    view.x = (canvas.width - state.width * scale) / 2;
    view.y = (canvas.height - state.height * scale) / 2;
  };
  const draw = () => {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!state.source) return;
    ctx.setTransform(view.scale, 0, 0, view.scale, view.x, view.y);
    ctx.imageSmoothingEnabled = view.scale < 2;
    ctx.filter = state.invert && !state.values ? "invert(1)" : "none";
    ctx.drawImage(state.source, 0, 0, state.width, state.height);
    ctx.filter = "none";
    if (state.heatOn && state.heat) {
      ctx.globalAlpha = opacity ? opacity.value / 100 : 0.7;
      const h = state.heat.naturalHeight * (state.width / state.heat.naturalWidth);
      ctx.drawImage(state.heat, 0, 0, state.width, h);
      ctx.globalAlpha = 1;
    }
    zoomText.textContent = `${Math.round(view.scale * 100)} %`;
    stage.dataset.drawn = String(Number(stage.dataset.drawn || 0) + 1);
    if (!stage.dataset.firstPaintMs) stage.dataset.firstPaintMs = performance.now().toFixed(0);  // since navigation
    if (state.values && !stage.dataset.fullPaintMs) stage.dataset.fullPaintMs = performance.now().toFixed(0);
  };
  const zoomAt = (factor, px, py) => {
    state.moved = true;
    const scale = Math.min(32, Math.max(0.05, view.scale * factor));
    view.x = px - (px - view.x) * (scale / view.scale);
    view.y = py - (py - view.y) * (scale / view.scale);
    view.scale = scale;
    draw();
  };

  // Window/level: a table from the 16-bit values to grey, then one pass.
  let offscreen = null;
  let pixels = null;
  let pixelWords = null;
  const applyWindow = () => {
    if (!state.values) { draw(); return; }
    const t0 = performance.now();
    const { low, step } = state.meta;
    const lower = state.center - state.window / 2;
    // One packed RGBA word per value (little-endian: alpha in the high byte), one write per pixel.
    const lut = new Uint32Array(65536);
    const scale = (step / state.window) * 255;
    const base = ((low - lower) / state.window) * 255;
    for (let q = 0; q < 65536; q += 1) {
      let v = base + q * scale;
      v = v < 0 ? 0 : v > 255 ? 255 : v | 0;
      if (state.invert) v = 255 - v;
      lut[q] = 0xff000000 | (v << 16) | (v << 8) | v;
    }
    const out = pixelWords;
    const values = state.values;
    for (let i = 0; i < values.length; i += 1) out[i] = lut[values[i]];
    offscreen.getContext("2d").putImageData(pixels, 0, 0);
    state.source = offscreen;
    draw();
    stage.dataset.windowMs = (performance.now() - t0).toFixed(1);
    wlText.textContent = `C ${state.center.toFixed(0)} W ${state.window.toFixed(0)}`;
  };
  const setWindow = (center, width) => {
    state.center = center;
    state.window = Math.max(width, state.meta && state.meta.step ? state.meta.step : 1);
    applyWindow();
  };

  // First paint: a small rendition at the first window (preview.png); then the full-resolution values.
  const loadValues = () => fetch(stage.dataset.values, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.arrayBuffer() : Promise.reject(new Error(String(r.status)))))
    .then((buffer) => {
      const length = new DataView(buffer).getUint32(0, true);
      const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
      state.meta = meta;
      state.values = new Uint16Array(buffer, 4 + length, meta.width * meta.height);
      const shownWidth = state.width;
      offscreen = document.createElement("canvas");
      offscreen.width = meta.width; offscreen.height = meta.height;
      pixels = offscreen.getContext("2d").createImageData(meta.width, meta.height);
      pixelWords = new Uint32Array(pixels.data.buffer);
      if (shownWidth) {  // keep the view where it was, in the new pixel units
        view.scale *= shownWidth / meta.width;
      }
      state.width = meta.width; state.height = meta.height;
      state.invert = Boolean(meta.invert);
      invertButton.setAttribute("aria-pressed", state.invert ? "true" : "false");
      preset.replaceChildren(...meta.windows.map((w, i) => {
        const option = document.createElement("option");
        option.value = String(i);
        option.textContent = `${w.name} (C ${Math.round(w.center)}, W ${Math.round(w.width)})`;
        return option;
      }));
      if (!shownWidth || !state.moved) { resize(); fit(); }  // untouched: fitted again at full resolution
      state.full = true;
      stage.dataset.full = "true";
      status.hidden = true;
      setWindow(meta.windows[0].center, meta.windows[0].width);
    })
    .catch(() => { status.textContent = "full resolution unavailable"; });

  // The preview is an <img> of the page itself, so that it is asked for while the page is still being read.
  const first = document.getElementById("first-paint");
  const painted = () => {
    state.source = first;
    state.width = first.naturalWidth;
    state.height = first.naturalHeight;
    resize(); fit(); draw();
    status.textContent = "full resolution loading…";
    loadValues();  // after the first paint, so that it never waits behind the larger transfer
  };
  const failed = () => {  // the API's image route says why, in JSON
    fetch(stage.dataset.image, { credentials: "same-origin" })
      .then((r) => r.json()).then((body) => { problem.textContent = body.detail; problem.hidden = false; })
      .catch(() => { problem.textContent = "The picture cannot be shown."; problem.hidden = false; });
    status.hidden = true;
  };
  if (first.complete) {
    if (first.naturalWidth) painted(); else failed();
  } else {
    first.addEventListener("load", painted);
    first.addEventListener("error", failed);
  }

  preset.addEventListener("change", () => {
    const w = state.meta.windows[Number(preset.value)];
    setWindow(w.center, w.width);
  });
  const invert = () => {
    state.invert = !state.invert;
    invertButton.setAttribute("aria-pressed", state.invert ? "true" : "false");
    applyWindow();
  };
  invertButton.addEventListener("click", invert);
  document.getElementById("reset-view").addEventListener("click", () => { fit(); draw(); });

  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = canvas.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    const windowing = (event.button === 2 || event.shiftKey) && state.values;
    drag = { x: event.clientX, y: event.clientY, windowing, center: state.center, width: state.window,
      vx: view.x, vy: view.y };
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (drag.windowing) {
      const unit = (state.meta.step * 65535) / 1000;  // a full sweep across a large drag
      setWindow(drag.center + dy * unit, drag.width + dx * unit);
    } else {
      state.moved = true;
      view.x = drag.vx + dx; view.y = drag.vy + dy; draw();
    }
  });
  const endDrag = () => { drag = null; };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  window.addEventListener("resize", () => { resize(); fit(); draw(); });

  if (toggle) {  // absent in a blinded reading
    const showHeatmap = (on) => {
      state.heatOn = on;
      toggle.setAttribute("aria-pressed", on ? "true" : "false");
      toggle.textContent = on ? "Hide heatmap (h)" : "Show heatmap (h)";
      note.hidden = true;
      heatLoading.hidden = true;
      if (on && !state.heat) {
        heatLoading.hidden = false;  // until the overlay is drawn, never the caption alone
        stage.dataset.heatmapState = "loading";
        const heat = new Image();
        heat.addEventListener("load", () => {
          state.heat = heat;
          heatLoading.hidden = true;
          stage.dataset.heatmapState = "drawn";
          if (state.heatOn) { note.hidden = false; draw(); }
        });
        heat.addEventListener("error", () => {
          stage.dataset.heatmapState = "failed";
          fetch(heat.src, { credentials: "same-origin" })
            .then((r) => r.json()).then((body) => { heatLoading.textContent = `no heatmap: ${body.detail}`; })
            .catch(() => { heatLoading.textContent = "the heatmap cannot be drawn"; });
        });
        heat.src = stage.dataset.heatmap;
        return;
      }
      if (on) { note.hidden = false; stage.dataset.heatmapState = "drawn"; } else { stage.dataset.heatmapState = "off"; }
      draw();
    };
    toggle.addEventListener("click", () => showHeatmap(toggle.getAttribute("aria-pressed") !== "true"));
    viewer.toggleHeatmap = () => toggle.click();
    opacity.addEventListener("input", draw);
  }

  viewer.stageKey = (key) => {
    const centre = [canvas.width / 2, canvas.height / 2];
    if (key === "+" || key === "=") zoomAt(1.25, ...centre);
    else if (key === "-") zoomAt(1 / 1.25, ...centre);
    else if (key === "0") { fit(); draw(); } else if (key === "i") invert();
    else return false;
    return true;
  };
}

document.addEventListener("DOMContentLoaded", setupViewer);
