// atlas site: small progressive enhancements; every page works without this file.
(function () {
  "use strict";
  var toggle = document.getElementById("heat-toggle");
  if (toggle) {
    var apply = function () {
      document.body.classList.toggle("no-heat", !toggle.checked);
    };
    toggle.addEventListener("change", apply);
    apply();
  }
  var filter = document.getElementById("unit-filter");
  if (filter) {
    filter.addEventListener("keydown", function (ev) {
      if (ev.key !== "Enter") return;
      var n = parseInt(filter.value, 10);
      var units = parseInt(filter.getAttribute("data-units"), 10);
      if (!isNaN(n) && n >= 0 && n < units) window.location.href = n + ".html";
    });
    filter.addEventListener("input", function () {
      var el = document.getElementById("u" + parseInt(filter.value, 10));
      if (el) el.scrollIntoView({block: "center"});
    });
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;  // leave browser shortcuts alone
    var t = ev.target;
    if (t && t.tagName === "INPUT" && t.type !== "checkbox") return;  // typing in a field
    var rel = ev.key === "ArrowLeft" ? "prev" : ev.key === "ArrowRight" ? "next" : null;
    var link = rel && document.querySelector('a[rel="' + rel + '"]');
    if (link) window.location.href = link.getAttribute("href");
  });
})();
