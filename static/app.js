// Teller chat page behaviour. No inline scripts: the page's CSP allows only this file.
(function () {
  "use strict";

  function composer() { return document.getElementById("composer"); }

  // The sidebar groups conversations by the reader's own calendar day: tell the server the
  // time zone (an IANA name such as "Europe/Zurich"); it uses UTC until it knows.
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && document.cookie.indexOf("teller_tz=" + encodeURIComponent(zone)) < 0) {
      document.cookie = "teller_tz=" + encodeURIComponent(zone) + "; path=/; max-age=31536000; SameSite=Strict";
    }
  } catch (ignored) { /* an old browser: UTC it is */ }

  // Enter sends, Shift+Enter inserts a newline.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target.matches && target.matches("#composer textarea") && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (target.value.trim()) { target.form.requestSubmit(); }
    }
  });

  // Where a request's error is shown: the edit form's own box, else the composer's.
  function errorBox(elt) {
    var form = elt && elt.closest ? elt.closest("form") : null;
    var own = form ? form.querySelector(".edit-error, .form-error") : null;
    return own || document.getElementById("composer-error");
  }

  function showError(elt, text) {
    var box = errorBox(elt);
    if (!box) { window.alert(text); return; }
    box.textContent = "";
    var line = document.createElement("p");
    line.className = "error";
    line.textContent = text;
    box.appendChild(line);
  }

  // Clear the box once the message is accepted, keep it when the server refused it.
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = composer();
    if (!form || event.detail.elt !== form) { return; }
    if (event.detail.successful && event.detail.xhr.status < 300) {
      form.reset();
      document.getElementById("composer-error").textContent = "";
    }
  });

  // The server could not be reached (down, restarting, offline): say so; what was typed stays.
  document.addEventListener("htmx:sendError", function (event) {
    showError(event.detail.elt, "Could not reach the server, so nothing was sent. Your text is kept: send it again once the server is back.");
  });

  // A server failure (5xx) is shown where errors go, never swapped into the conversation.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status >= 500) {
      event.detail.shouldSwap = false;
      var text = (xhr.responseText || "").trim();
      if (!text || text.charAt(0) === "<") { text = "The server failed (" + xhr.status + "). Your text is kept: try again."; }
      showError(event.detail.elt, text);
    }
  });

  // Confirm destructive forms.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  }, true);

  // ---- copy buttons ----------------------------------------------------------------------

  function copyText(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { copyWithSelection(text, done); });
    } else {
      copyWithSelection(text, done);
    }
  }

  // Plain http on a LAN address has no clipboard API: copy through a selected text area.
  function copyWithSelection(text, done) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } catch (ignored) { /* nothing to copy with */ }
    document.body.removeChild(area);
  }

  // "Copied" for a moment: a code block's button says it through CSS, the others in words.
  function confirmCopied(button) {
    var label = button.classList.contains("code-copy") ? null : button.textContent;
    button.setAttribute("data-copied", "");
    if (label !== null) { button.textContent = "Copied"; }
    window.setTimeout(function () {
      button.removeAttribute("data-copied");
      if (label !== null) { button.textContent = label; }
    }, 1500);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button.copy, button.code-copy");
    if (!button) { return; }
    var source = button.classList.contains("code-copy")
      ? button.parentElement.querySelector("pre")
      : document.querySelector(button.getAttribute("data-copy"));
    if (!source) { return; }
    copyText(source.innerText.replace(/\n+$/, ""), function () { confirmCopied(button); });
  });

  // A copy button on every code block of a finished answer (its label is CSS, so copying
  // the whole answer does not pick up the buttons' words).
  function addCodeButtons() {
    document.querySelectorAll(".msg .body:not(.streaming) pre:not([data-copy-ready])").forEach(function (pre) {
      pre.setAttribute("data-copy-ready", "");
      var block = document.createElement("div");
      block.className = "code-block";
      pre.parentNode.insertBefore(block, pre);
      block.appendChild(pre);
      var button = document.createElement("button");
      button.type = "button";
      button.className = "code-copy";
      button.setAttribute("aria-label", "Copy code");
      block.appendChild(button);
    });
  }
  document.addEventListener("htmx:afterSwap", addCodeButtons);
  document.addEventListener("htmx:sseMessage", addCodeButtons);
  document.addEventListener("DOMContentLoaded", addCodeButtons);

  // ---- citations -------------------------------------------------------------------------

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

  // ---- scrolling -------------------------------------------------------------------------

  // Keep the newest text in view while an answer streams in, unless the reader has scrolled
  // up to read something earlier.
  var following = true;
  function messages() { return document.getElementById("messages"); }
  function nearEnd() {
    var box = messages();
    return !box || box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  }
  function scrollToEnd() {
    var box = messages();
    if (box && following) { box.scrollTop = box.scrollHeight; }
  }
  document.addEventListener("htmx:sseBeforeMessage", function () { following = nearEnd(); });
  document.addEventListener("htmx:beforeRequest", function () { following = true; });
  document.addEventListener("htmx:afterSwap", scrollToEnd);
  document.addEventListener("htmx:sseMessage", scrollToEnd);
  document.addEventListener("DOMContentLoaded", scrollToEnd);
})();
