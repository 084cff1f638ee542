// leukostage case page: upload many fields (one request per file, a progress bar each), switch the field grid
// between the originals and their Grad-CAM heat maps, open a field large (its heat map, its result, removing it with
// a reason), and send the reviewer's sign-off or amendment to the case API.
// Plain script, no libraries, no external requests (the page works offline under a strict CSP). Every write
// carries the page's CSRF token (header X-CSRFToken), as the API requires of cookie-authenticated requests.
"use strict";

(function () {
  document.documentElement.classList.add("js");

  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("page-config").textContent);
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const classes = Object.fromEntries(config.classes.map((c) => [c.key, c]));
  const UPLOADS_KEY = "leukostage.uploads." + config.case_id; // the last batch, shown again after the reload
  const PARALLEL = 2; // uploads in flight at once: the server analyses each file as it arrives

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  function megabytes(n) {
    if (n < 1048576) return Math.max(1, Math.round(n / 1024)) + " kB";
    return (n / 1048576).toPrecision(3) + " MB";
  }

  // --- uploads --------------------------------------------------------------------------------------------------

  const input = $("file-input");
  const dropZone = $("drop-zone");
  const list = $("upload-list");
  const summary = $("upload-summary");

  function outcomeText(r) {
    if (r.duplicate_of) return "the same photo as field #" + r.duplicate_of + ": not added again";
    if (!r.valid) return "refused: " + (r.reason || r.code);
    if (!(r.label in classes) || r.label === "uncertain") { // no class asserted: no class name, no confidence
      const names = config.wording.uncertain_names;
      return "Uncertain (" + (names[r.uncertain_reason] || names.low_confidence) + ")";
    }
    return (classes[r.label] ? classes[r.label].display_name : r.label) + " " + percent(r.confidence);
  }

  function uploadRow(name, size) {
    const li = document.createElement("li");
    li.className = "upload";
    const label = document.createElement("span");
    label.className = "upload-name";
    label.textContent = name + " (" + megabytes(size) + ")";
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + name);
    const state = document.createElement("span");
    state.className = "upload-state";
    state.textContent = "waiting";
    li.append(label, bar, state);
    list.append(li);
    return { li, bar, state };
  }

  function finish(row, ok, text) {
    row.bar.value = 100;
    row.state.textContent = text;
    row.li.dataset.outcome = ok ? "done" : "failed";
  }

  function sendOne(file, row) {
    return new Promise((resolve) => {
      if (file.size > config.max_bytes) {
        finish(row, false, "too large: at most " + megabytes(config.max_bytes));
        resolve({ name: file.name, ok: false, text: row.state.textContent });
        return;
      }
      const data = new FormData();
      data.append("files", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/v1/cases/" + config.case_id + "/images");
      xhr.setRequestHeader("X-CSRFToken", csrfToken);
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        row.bar.value = Math.round((95 * e.loaded) / e.total); // the last 5% is the server's analysis
        row.state.textContent = "uploading " + Math.round((100 * e.loaded) / e.total) + "%";
      });
      xhr.upload.addEventListener("load", () => { row.state.textContent = "analysing…"; });
      xhr.addEventListener("load", () => {
        const body = xhr.response;
        const stored = xhr.status === 201 && Array.isArray(body) && body.length;
        if (stored) {
          finish(row, true, outcomeText(body[0]));
        } else {
          const message = body && body.error ? body.error.message : "the server answered " + xhr.status;
          finish(row, false, "failed: " + message);
        }
        const duplicate = Boolean(stored && body[0].duplicate_of);
        resolve({ name: file.name, ok: xhr.status === 201, duplicate, text: row.state.textContent });
      });
      xhr.addEventListener("error", () => {
        finish(row, false, "failed: the server could not be reached");
        resolve({ name: file.name, ok: false, text: row.state.textContent });
      });
      row.state.textContent = "uploading";
      xhr.send(data);
    });
  }

  async function uploadAll(files) {
    if (!files.length) return;
    list.replaceChildren();
    summary.textContent = "Uploading " + files.length + " file" + (files.length === 1 ? "" : "s") + "…";
    const rows = files.map((f) => uploadRow(f.name, f.size));
    const outcomes = new Array(files.length);
    let next = 0;
    async function worker() {
      while (next < files.length) {
        const i = next++;
        outcomes[i] = await sendOne(files[i], rows[i]);
      }
    }
    await Promise.all(Array.from({ length: Math.min(PARALLEL, files.length) }, worker));
    const failed = outcomes.filter((o) => !o.ok).length;
    sessionStorage.setItem(UPLOADS_KEY, JSON.stringify(outcomes));
    if (failed) {
      summary.textContent = (files.length - failed) + " of " + files.length + " stored; " + failed +
        " failed (see below). Reload the page to see the stored fields.";
      return;
    }
    summary.textContent = "All " + files.length + " stored. Updating the case…";
    window.location.reload(); // the server renders the new fields, counts, chart and call
  }

  // After the reload, the batch's outcomes stay visible (each bar full), once.
  function showLastBatch() {
    const saved = sessionStorage.getItem(UPLOADS_KEY);
    if (!saved || !list) return;
    sessionStorage.removeItem(UPLOADS_KEY);
    const outcomes = JSON.parse(saved);
    for (const o of outcomes) {
      const row = uploadRow(o.name, 0);
      row.li.querySelector(".upload-name").textContent = o.name;
      finish(row, o.ok, o.text);
    }
    const duplicates = outcomes.filter((o) => o.duplicate).length;
    summary.textContent = "Last upload: " + outcomes.length + " file" + (outcomes.length === 1 ? "" : "s") + ", " +
      outcomes.filter((o) => o.ok && !o.duplicate).length + " stored" +
      (duplicates ? ", " + duplicates + " already in the case (the same photo counts once)." : ".");
  }

  if (input) {
    input.addEventListener("change", () => {
      const files = Array.from(input.files);
      input.value = "";
      uploadAll(files);
    });
    window.leukostageDropZone(dropZone, uploadAll);
    showLastBatch();
  }

  // --- Original / Heat map ----------------------------------------------------------------------------------------

  const viewSwitch = $("view-switch");
  if (viewSwitch) {
    const original = $("view-original");
    const heatmap = $("view-heatmap");
    const caption = $("heatmap-caption");
    viewSwitch.hidden = false;

    function setView(heat) {
      original.setAttribute("aria-pressed", String(!heat));
      heatmap.setAttribute("aria-pressed", String(heat));
      caption.hidden = !heat;
      for (const field of document.querySelectorAll(".field")) {
        const heatImg = field.querySelector("img.heatmap");
        const origImg = field.querySelector("img.original");
        if (!heatImg || heatImg.dataset.failed) continue; // refused fields have no heat map: keep the original
        if (heat && !heatImg.getAttribute("src")) heatImg.src = heatImg.dataset.src; // fetched on first use
        heatImg.hidden = !heat;
        origImg.hidden = heat;
      }
    }

    for (const img of document.querySelectorAll("img.heatmap")) {
      img.addEventListener("error", () => {
        img.dataset.failed = "1";
        img.hidden = true;
        img.closest(".field").querySelector("img.original").hidden = false;
      });
    }
    original.addEventListener("click", () => setView(false));
    heatmap.addEventListener("click", () => setView(true));
  }

  // A JSON write with the page's CSRF token. Done: reload (the server renders the case as it now stands). Refused:
  // the server's message in `problem`, and the button back for another try.
  async function sendAndReload(method, url, body, problem, button) {
    problem.hidden = true;
    button.disabled = true;
    try {
      const response = await fetch(url, {
        method,
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (response.ok) {
        window.location.reload();
        return;
      }
      const answer = await response.json().catch(() => null);
      problem.textContent = answer && answer.error ? answer.error.message : "The server answered " + response.status + ".";
    } catch (err) {
      problem.textContent = "The server could not be reached. Try again.";
    }
    problem.hidden = false;
    button.disabled = false;
  }

  // --- a field opened large ------------------------------------------------------------------------------------------

  function showLarge(dialog, heat) {
    const original = dialog.querySelector("img.large-original");
    const heatImg = dialog.querySelector("img.large-heatmap");
    if (!heatImg) return;
    if (heat && !heatImg.getAttribute("src")) heatImg.src = heatImg.dataset.src;
    heatImg.hidden = !heat;
    original.hidden = heat;
    dialog.querySelector(".show-original").setAttribute("aria-pressed", String(!heat));
    dialog.querySelector(".show-heatmap").setAttribute("aria-pressed", String(heat));
    dialog.querySelector(".heatmap-note").hidden = !heat;
  }

  for (const link of document.querySelectorAll("a.thumb[data-dialog]")) {
    const dialog = $(link.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") continue; // no <dialog>: the link opens the image
    link.addEventListener("click", (e) => {
      e.preventDefault();
      const original = dialog.querySelector("img.large-original");
      if (!original.getAttribute("src")) original.src = original.dataset.src;
      // The grid's heat-map view carries over to fields with a class; a field without one opens on its original
      // (its heat map is there when asked for, and says it is not evidence).
      const heatmapOn = $("view-heatmap") && $("view-heatmap").getAttribute("aria-pressed") === "true";
      const asserted = dialog.dataset.asserted === "true";
      showLarge(dialog, Boolean(heatmapOn && asserted && dialog.querySelector("img.large-heatmap")));
      dialog.showModal();
    });
    dialog.querySelector(".dialog-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); }); // the backdrop
    const toOriginal = dialog.querySelector(".show-original");
    if (toOriginal) {
      toOriginal.addEventListener("click", () => showLarge(dialog, false));
      dialog.querySelector(".show-heatmap").addEventListener("click", () => showLarge(dialog, true));
    }
    const remove = dialog.querySelector(".remove-form");
    if (remove) {
      remove.addEventListener("submit", (e) => {
        e.preventDefault();
        // on 204 the page reloads: the server renders the counts, chart and call without the field
        sendAndReload("DELETE", remove.dataset.url, { reason: remove.elements.reason.value },
          remove.querySelector(".form-error"), remove.querySelector("button[type=submit]"));
      });
    }
  }

  // --- review / amend ---------------------------------------------------------------------------------------------

  const form = $("review-form");
  if (form) {
    const error = $("review-error");
    // Non-diagnostic needs a reason: the comment becomes required while it is the chosen call.
    const needComment = () => {
      form.elements.comment.required = form.dataset.action === "review" &&
        form.elements.final_call.value === "non_diagnostic";
    };
    form.addEventListener("change", needComment);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const overrides = Array.from(document.querySelectorAll(".override-select"))
        .filter((s) => s.value)
        .map((s) => ({ image_id: Number(s.dataset.imageId), label: s.value }));
      const body = { comment: form.elements.comment.value, image_overrides: overrides };
      const finalCall = form.elements.final_call.value;
      if (form.dataset.action === "review") {
        body.final_call = finalCall;
      } else {
        body.reason = form.elements.reason.value;
        if (finalCall) body.final_call = finalCall;
        if (!body.comment) delete body.comment;
      }
      sendAndReload("POST", form.dataset.url, body, error, form.querySelector("button[type=submit]"));
    });
  }
})();
