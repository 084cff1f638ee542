// leukostage drop zone, shared by the prediction page (app.js) and the case page (cases.js): the zone is
// highlighted while files are dragged over it and hands dropped files to the page; a file dropped beside the zone
// does not navigate away from the page. Plain script, loaded (deferred) before the page's own script.
"use strict";

window.leukostageDropZone = function (zone, onFiles) {
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) onFiles(Array.from(e.dataTransfer.files));
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
};
