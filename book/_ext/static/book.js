// The book's own behaviour (added by page_fixes.py); tools/check_site.py checks what it is for.
(function () {
  "use strict";
  // Each body cell gets its column's header as data-label, which a stacked table shows above it.
  function label(table) {
    const headRows = table.querySelectorAll("thead tr");
    if (!headRows.length) return;
    const heads = [...headRows[headRows.length - 1].children].map((th) => th.textContent.trim());
    table.querySelectorAll("tbody tr").forEach((tr) =>
      [...tr.children].forEach((cell, i) => {
        if (heads[i]) cell.dataset.label = heads[i];
      })
    );
  }
  // A table wider than its column is shown stacked (book.css); measured again at every width.
  function fit() {
    document.querySelectorAll("article table").forEach((table) => {
      table.classList.remove("table-stacked");
      if (table.scrollWidth > table.parentElement.clientWidth + 1) table.classList.add("table-stacked");
    });
  }
  // Every figure links its full-size image.
  function zoom() {
    document.querySelectorAll("article img").forEach((img) => {
      if (img.closest("a")) return;
      const link = document.createElement("a");
      link.href = img.getAttribute("src");
      link.className = "figure-zoom";
      link.title = "Open the full-size figure";
      img.parentNode.insertBefore(link, img);
      link.appendChild(img);
    });
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("article table").forEach(label);
    fit();
    zoom();
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(fit);
  });
  window.addEventListener("load", fit);
  window.addEventListener("resize", fit);
})();
