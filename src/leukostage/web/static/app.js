// leukostage page: choose or drop an image, preview it, upload it to /predict, show the result or the rejection,
// and the Grad-CAM heat map in place of the preview (an Original / Heat map switch) when the model can explain.
// The heat map costs the server more than the prediction, so it is asked for (explain=1) only when the switch is
// pressed, once per image. A result that asserts no class (uncertain) shows no class-coloured result at all: a grey
// badge, the reason in words, the probabilities behind a closed disclosure labelled as not evidence, and a heat map
// not titled as evidence for any class.
// Plain script, no libraries, no external requests (the page must work offline and under a strict CSP).
"use strict";

(function () {
  document.documentElement.classList.add("js");

  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("page-config").textContent);
  const classes = Object.fromEntries(config.classes.map((c) => [c.key, c]));
  const words = config.wording;

  const form = $("upload-form");
  const input = $("file-input");
  const dropZone = $("drop-zone");
  const preview = $("preview");
  const previewImage = $("preview-image");
  const previewName = $("preview-name");
  const viewSwitch = $("view-switch");
  const viewOriginal = $("view-original");
  const viewHeatmap = $("view-heatmap");
  const heatmapView = $("heatmap-view");
  const heatmapImage = $("heatmap-image");
  const heatmapCaption = $("heatmap-caption");
  const progress = $("progress");
  const progressBar = $("progress-bar");
  const progressText = $("progress-text");
  const result = $("result");
  const rejection = $("rejection");

  let previewUrl = null;
  let previewBroken = false; // the browser cannot show this format (TIFF); the heat map (a PNG) still can
  let fileName = "";
  let currentFile = null; // the analysed file, sent again with explain=1 when the heat map is asked for
  let heatState = "none"; // none | loading | ready
  let heatRequest = null; // the heat map's request in flight
  let busy = false;
  let asserted = true; // the shown result names a class (false: uncertain, its heat map is not evidence for one)

  const STATUS_TITLES = {
    400: "No image received",
    413: "File too large",
    415: "Not a supported image",
    422: "Not a usable blood smear photograph",
  };
  // Refusals whose cause is known: the picture is a smear, but this capture of it cannot be read (the reason says
  // what was measured and what to do).
  const CODE_TITLES = {
    out_of_focus: "Out of focus",
    underexposed: "Too dark (underexposed)",
    overexposed: "Too bright (overexposed)",
    magnification_out_of_range: "Magnification out of range",
  };

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  // Binary units, as the server's messages (imaging.mebibytes): "512 KiB", "20 MiB", "21.4 MiB".
  function mebibytes(n) {
    if (n < 1048576) return Math.max(1, Math.round(n / 1024)) + " KiB";
    return (n / 1048576).toFixed(1).replace(/\.0$/, "") + " MiB";
  }

  // Original or heat map: one image at a time, the switch's buttons say which (aria-pressed). Until the heat map
  // has arrived the original stays in view, with the caption saying what is happening.
  function setView(heat) {
    viewOriginal.setAttribute("aria-pressed", String(!heat));
    viewHeatmap.setAttribute("aria-pressed", String(heat));
    const ready = heat && heatState === "ready";
    heatmapView.hidden = !ready;
    heatmapCaption.hidden = !heat;
    previewImage.hidden = ready || previewBroken;
  }

  function clearExplanation() {
    if (heatRequest) heatRequest.abort();
    heatRequest = null;
    heatState = "none";
    viewHeatmap.removeAttribute("aria-busy");
    viewSwitch.hidden = true;
    heatmapImage.removeAttribute("src");
    heatmapImage.alt = "";
    heatmapCaption.textContent = "";
    setView(false);
  }

  function showExplanation(e) {
    heatState = "ready";
    heatmapImage.src = "data:image/png;base64," + e.overlay_png_base64;
    if (asserted) {
      heatmapImage.alt = "Grad-CAM heat map for " + e.display_class + " over " + fileName;
      heatmapCaption.textContent = "Where the model's evidence for " + e.display_class +
        " lies — Grad-CAM, not a segmentation; not diagnostic. Yellow marks the strongest evidence; weak evidence " +
        "is not drawn.";
    } else {
      heatmapImage.alt = "Grad-CAM heat map over " + fileName + ": not evidence, no class is asserted";
      heatmapCaption.textContent = "Where the model looked — Grad-CAM. No class is asserted for this image, so " +
        "this map is not evidence for any class; not a segmentation, not diagnostic.";
    }
    setView(viewHeatmap.getAttribute("aria-pressed") === "true");
  }

  function explanationFailed(message) {
    heatState = "none"; // pressing the switch again retries
    heatmapCaption.textContent = "No heat map: " + message;
    setView(viewHeatmap.getAttribute("aria-pressed") === "true");
  }

  // POST the same file again with explain=1; a newer file (clearExplanation) aborts it.
  function requestExplanation() {
    if (!currentFile || heatState !== "none") return;
    heatState = "loading";
    viewHeatmap.setAttribute("aria-busy", "true");
    heatmapCaption.textContent = "Computing the heat map…";
    const data = new FormData();
    data.append("file", currentFile, currentFile.name);
    const url = new URL(form.action);
    url.searchParams.set("explain", "1");
    const xhr = new XMLHttpRequest();
    heatRequest = xhr;
    xhr.open("POST", url);
    xhr.responseType = "json";
    xhr.addEventListener("load", () => {
      if (heatRequest !== xhr) return;
      const body = xhr.response;
      if (xhr.status === 200 && body && body.explanation) showExplanation(body.explanation);
      else explanationFailed(body && body.error ? body.error.message : "the server answered unexpectedly.");
    });
    xhr.addEventListener("error", () => {
      if (heatRequest === xhr) explanationFailed("the server could not be reached. Try again.");
    });
    xhr.addEventListener("loadend", () => {
      if (heatRequest !== xhr) return;
      heatRequest = null;
      viewHeatmap.removeAttribute("aria-busy");
    });
    xhr.send(data);
  }

  // The colour scale beside the heat map: the server's own ramp (explain.colour_scale_info), bottom = low.
  function paintColourScale(scale) {
    const parts = scale.ramp.map((s) => {
      const [r, g, b] = [1, 3, 5].map((i) => parseInt(s.colour.slice(i, i + 2), 16));
      return "rgba(" + r + ", " + g + ", " + b + ", " + s.alpha + ") " + (100 * s.at).toFixed(0) + "%";
    });
    $("heatmap-scale-bar").style.backgroundImage = "linear-gradient(to top, " + parts.join(", ") + ")";
  }
  if (config.colour_scale) paintColourScale(config.colour_scale);

  viewOriginal.addEventListener("click", () => setView(false));
  viewHeatmap.addEventListener("click", () => {
    setView(true);
    requestExplanation();
  });

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    previewBroken = false;
    fileName = file.name;
    currentFile = file;
    clearExplanation();
    previewImage.hidden = false;
    previewImage.src = previewUrl;
    previewImage.alt = "Preview of " + file.name;
    previewName.textContent = file.name + " (" + mebibytes(file.size) + ")";
    preview.hidden = false;
  }

  // Browsers cannot show TIFF: say so instead of a broken image.
  previewImage.addEventListener("error", () => {
    previewBroken = true;
    previewImage.hidden = true;
    previewName.textContent += ": no preview for this format";
  });

  function setProgress(fraction, text) {
    progress.hidden = false;
    if (fraction === null) progressBar.removeAttribute("value"); // indeterminate while the server works
    else progressBar.value = Math.round(100 * fraction);
    progressText.textContent = text;
  }

  function paintBadge(el, key) {
    const info = classes[key] || classes.uncertain;
    el.textContent = info.display_name;
    el.dataset.label = key;
    el.style.backgroundColor = info.colour;
    el.style.color = info.text_colour;
  }

  function bar(fill, meter, fraction, colour) {
    fill.style.width = percent(fraction);
    fill.style.backgroundColor = colour;
    meter.setAttribute("aria-valuenow", (100 * fraction).toFixed(1));
    meter.setAttribute("aria-valuetext", percent(fraction));
  }

  // How the picture was taken, when there is something to say: a photo through the eyepiece had its round field
  // cropped (and maybe rescaled to the training scale by the red-cell ruler). Words from classes.capture_note.
  function captureNote(el, capture) {
    let text = "";
    if (capture && capture.mode === words.eyepiece_mode) {
      text = words.eyepiece_note + (capture.rescaled_by != null ? ", " + words.rescaled_note : "");
    } else if (capture && capture.rescaled_by != null) {
      text = "Field " + words.rescaled_note;
    }
    el.textContent = text;
    el.hidden = !text;
  }

  function showResult(r) {
    asserted = r.label in classes && r.label !== "uncertain";
    paintBadge($("badge"), asserted ? r.label : "uncertain"); // no class colour without a class
    $("subtype").textContent = asserted ? "dataset subtype: " + r.dataset_label : "no class asserted";
    const note = $("uncertain-note");
    note.hidden = asserted;
    if (!asserted) {
      const reason = r.uncertain_reason || "low_confidence";
      note.dataset.reason = reason;
      note.textContent = words.uncertain_text[reason] || words.uncertain_text.low_confidence;
    }
    captureNote($("capture-note"), r.capture);

    // A class result: its confidence bar and a bar per class, in the classes' colours. No class: neither the
    // confidence bar nor the colours; the probabilities, in grey, behind a closed disclosure saying they are not
    // evidence.
    const classResult = $("class-result");
    const disclosure = $("probabilities-disclosure");
    const list = $("class-bars");
    classResult.hidden = !asserted;
    disclosure.hidden = asserted;
    disclosure.open = false;
    (asserted ? classResult : disclosure).append(list);
    if (asserted) {
      bar($("confidence-bar"), $("confidence-meter"), r.confidence, classes[r.label].colour);
      $("confidence-value").textContent = percent(r.confidence);
    }

    list.replaceChildren();
    for (const info of config.classes) {
      if (!(info.key in r.probabilities)) continue;
      const p = r.probabilities[info.key];
      const li = document.createElement("li");
      li.className = "class-bar";
      li.dataset.key = info.key;
      const label = document.createElement("span");
      label.className = "bar-label";
      label.id = "prob-label-" + info.key;
      label.textContent = info.display_name;
      const sub = document.createElement("small");
      sub.textContent = info.dataset_label;
      label.append(document.createElement("br"), sub);
      const track = document.createElement("div");
      track.className = "bar-track";
      track.setAttribute("role", "meter");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-labelledby", label.id);
      const fill = document.createElement("div");
      fill.className = "bar-fill";
      track.append(fill);
      bar(fill, track, p, asserted ? info.colour : classes.uncertain.colour);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);
      li.append(label, track, value);
      list.append(li);
    }

    const t = r.timing_ms || {};
    const parts = ["decode", "validate", "preprocess", "inference", "explain"]
      .filter((k) => k in t)
      .map((k) => k + " " + t[k].toFixed(1));
    $("timing").textContent = "Server time " + (t.total || 0).toFixed(1) + " ms (" + parts.join(", ") +
      ") · model " + r.model.name + " " + r.model.version;
    viewSwitch.hidden = !config.explain; // the heat map itself is fetched when asked for

    rejection.hidden = true;
    result.hidden = false;
    result.focus();
  }

  function showRejection(status, error) {
    $("rejection-heading").textContent = CODE_TITLES[error.code] || STATUS_TITLES[status] || "Not analysed";
    $("rejection-reason").textContent = error.message;
    captureNote($("rejection-capture"), error.capture);
    $("rejection-code").textContent = error.code + (status ? " (HTTP " + status + ")" : "");
    const table = $("rejection-checks");
    const body = table.tBodies[0];
    body.replaceChildren();
    const checks = error.checks || {};
    for (const [name, c] of Object.entries(checks)) {
      const row = body.insertRow();
      const threshold = Array.isArray(c.threshold) ? c.threshold.join(" to ") : "at least " + c.threshold;
      for (const text of [name.replace(/_/g, " "), String(c.value), threshold, c.passed ? "yes" : "no"]) {
        row.insertCell().textContent = text;
      }
    }
    table.hidden = Object.keys(checks).length === 0;
    clearExplanation();
    result.hidden = true;
    rejection.hidden = false;
    rejection.focus();
  }

  function analyse(file) {
    if (!file || busy) return;
    showPreview(file);
    if (file.size > config.max_bytes) {
      showRejection(413, { code: "file_too_large", message: config.too_large_message });
      return;
    }
    busy = true;
    result.hidden = true;
    rejection.hidden = true;
    setProgress(0, "Uploading…");

    const data = new FormData();
    data.append("file", file, file.name);
    const url = new URL(form.action); // no explain: the heat map is fetched only if the switch is pressed
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      setProgress(e.loaded / e.total, "Uploading… " + Math.round((100 * e.loaded) / e.total) + "%");
    });
    xhr.upload.addEventListener("load", () => setProgress(null, "Analysing…"));
    xhr.addEventListener("load", () => {
      const body = xhr.response;
      if (xhr.status === 200 && body && body.valid) showResult(body);
      else if (body && body.error) showRejection(xhr.status, body.error);
      else showRejection(xhr.status, { code: "http_" + xhr.status, message: "The server answered unexpectedly." });
    });
    xhr.addEventListener("error", () =>
      showRejection(0, { code: "network_error", message: "The server could not be reached. Try again." }));
    xhr.addEventListener("loadend", () => {
      busy = false;
      progress.hidden = true;
    });
    xhr.send(data);
  }

  input.addEventListener("change", () => {
    analyse(input.files[0]);
    input.value = ""; // choosing the same file again analyses it again
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    analyse(input.files[0]);
  });

  window.leukostageDropZone(dropZone, (files) => analyse(files[0]));
})();
