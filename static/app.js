// Teller chat page behaviour. No inline scripts: the page's CSP allows only this file.
(function () {
  "use strict";

  function composer() { return document.getElementById("composer"); }

  // Enter sends, Shift+Enter inserts a newline.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target.matches && target.matches("#composer textarea") && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (target.value.trim()) { target.form.requestSubmit(); }
    }
  });

  // Clear the box once the message is accepted, keep it when the server refused it.
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = composer();
    if (!form || event.detail.elt !== form) { return; }
    if (event.detail.successful && event.detail.xhr.status < 300) {
      form.reset();
      document.getElementById("composer-error").textContent = "";
    }
  });

  // Confirm destructive forms.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  }, true);

  // Keep the newest text in view while an answer streams in.
  function scrollToEnd() {
    var messages = document.getElementById("messages");
    if (messages) { messages.scrollTop = messages.scrollHeight; }
  }
  document.addEventListener("htmx:afterSwap", scrollToEnd);
  document.addEventListener("htmx:sseMessage", scrollToEnd);
  document.addEventListener("DOMContentLoaded", scrollToEnd);
})();
