// Knowledge upload: drop files on the zone (or pick them) and see their names before sending.
// No inline scripts: the page's CSP allows only files from this server.
(function () {
  "use strict";

  function zone() { return document.getElementById("dropzone"); }

  function showNames(input) {
    var list = input.closest(".dropzone").querySelector(".dropzone-files");
    var names = Array.prototype.map.call(input.files, function (file) { return file.name; });
    list.textContent = names.length ? names.length + " file(s): " + names.join(", ") : "";
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches(".dropzone input[type=file]")) {
      showNames(event.target);
    }
  });

  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      var target = zone();
      if (target && target.contains(event.target)) {
        event.preventDefault();
        target.classList.add("dragging");
      }
    });
  });

  ["dragleave", "drop"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      var target = zone();
      if (!target || !target.contains(event.target)) { return; }
      event.preventDefault();
      target.classList.remove("dragging");
      if (name === "drop" && event.dataTransfer && event.dataTransfer.files.length) {
        var input = target.querySelector("input[type=file]");
        input.files = event.dataTransfer.files;
        showNames(input);
      }
    });
  });
})();
