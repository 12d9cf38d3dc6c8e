// pneumoscan review pages: picture controls, heatmap toggle and keyboard shortcuts. No inline script (CSP).
"use strict";

function setupViewer() {
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const picture = document.getElementById("picture");
  const form = document.getElementById("review-form");
  const comment = document.getElementById("comment");
  const modelLabel = viewer.dataset.modelLabel;
  const next = viewer.dataset.next;

  if (picture) {
    const brightness = document.getElementById("brightness");
    const contrast = document.getElementById("contrast");
    const toggle = document.getElementById("toggle-heatmap");
    const note = document.getElementById("heatmap-note");
    const problem = document.getElementById("picture-error");
    const apply = () => {
      picture.style.filter = `brightness(${brightness.value / 100}) contrast(${contrast.value / 100})`;
    };
    brightness.addEventListener("input", apply);
    contrast.addEventListener("input", apply);
    document.getElementById("reset-view").addEventListener("click", () => {
      brightness.value = 100; contrast.value = 100; apply();
    });
    picture.addEventListener("error", () => {
      fetch(picture.src, { credentials: "same-origin" })
        .then((r) => r.json()).then((body) => { problem.textContent = body.detail; problem.hidden = false; })
        .catch(() => { problem.textContent = "The picture cannot be shown."; problem.hidden = false; });
    });
    picture.addEventListener("load", () => { problem.hidden = true; });
    const showHeatmap = (on) => {
      picture.src = on ? picture.dataset.heatmap : picture.dataset.image;
      toggle.setAttribute("aria-pressed", on ? "true" : "false");
      toggle.textContent = on ? "Hide heatmap (h)" : "Show heatmap (h)";
      note.hidden = !on;
    };
    if (toggle) {  // absent in a blinded reading
      toggle.addEventListener("click", () => showHeatmap(toggle.getAttribute("aria-pressed") !== "true"));
      viewer.toggleHeatmap = () => toggle.click();
    }
  }

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
    else if (event.key === "n" && next) window.location.assign(next);
    else return;
    event.preventDefault();
  });
}

document.addEventListener("DOMContentLoaded", setupViewer);
