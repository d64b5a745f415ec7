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

  // "[2]" in an answer becomes a link that opens source 2 under it. Built with DOM nodes
  // (text stays text), only for numbers the answer really has a source for.
  var CITE = /\[(\d{1,2})\]/g;
  function linkCitations() {
    document.querySelectorAll("article.msg.assistant:not([data-cites])").forEach(function (article) {
      var body = article.querySelector(".body:not(.streaming)");
      if (!body || !article.querySelector(".citations")) { return; }
      article.setAttribute("data-cites", "");
      var walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
      var nodes = [];
      while (walker.nextNode()) {
        if (!walker.currentNode.parentElement.closest("a, code, pre")) { nodes.push(walker.currentNode); }
      }
      nodes.forEach(function (node) {
        var text = node.nodeValue, last = 0, parts = [], match;
        CITE.lastIndex = 0;
        while ((match = CITE.exec(text)) !== null) {
          var id = article.id + "-src-" + match[1];
          if (!document.getElementById(id)) { continue; }
          parts.push(document.createTextNode(text.slice(last, match.index)));
          var link = document.createElement("a");
          link.href = "#" + id;
          link.className = "cite";
          link.textContent = match[0];
          parts.push(link);
          last = match.index + match[0].length;
        }
        if (!parts.length) { return; }
        parts.push(document.createTextNode(text.slice(last)));
        parts.forEach(function (part) { node.parentNode.insertBefore(part, node); });
        node.parentNode.removeChild(node);
      });
    });
  }
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a.cite");
    if (!link) { return; }
    var source = document.getElementById(link.getAttribute("href").slice(1));
    if (!source) { return; }
    event.preventDefault();
    source.querySelector("details").open = true;
    source.scrollIntoView({block: "nearest"});
  });
  document.addEventListener("htmx:afterSwap", linkCitations);
  document.addEventListener("htmx:sseMessage", linkCitations);
  document.addEventListener("DOMContentLoaded", linkCitations);

  // Keep the newest text in view while an answer streams in.
  function scrollToEnd() {
    var messages = document.getElementById("messages");
    if (messages) { messages.scrollTop = messages.scrollHeight; }
  }
  document.addEventListener("htmx:afterSwap", scrollToEnd);
  document.addEventListener("htmx:sseMessage", scrollToEnd);
  document.addEventListener("DOMContentLoaded", scrollToEnd);
})();
