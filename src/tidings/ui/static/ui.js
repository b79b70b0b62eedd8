// tidings dashboard: small conveniences on top of pages that work without script.
(function () {
  "use strict";

  // Times are rendered in UTC on the server; show them in the browser's time zone as well.
  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) {
        el.title = el.textContent;
        el.textContent = when.toLocaleString();
      }
    });
  }

  // Filter selects submit their form when changed.
  function autosubmit() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (el) {
      el.addEventListener("change", function () { el.form.submit(); });
    });
  }

  // Forms that change something ask first.
  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  // Optional auto-refresh of the overview, remembered per browser.
  function autorefresh() {
    var box = document.querySelector("input[data-autorefresh]");
    if (!box) { return; }
    var key = "tidings.autorefresh";
    var seconds = parseInt(box.getAttribute("data-autorefresh"), 10) || 15;
    var timer = null;
    function apply() {
      if (timer) { clearTimeout(timer); timer = null; }
      if (box.checked) { timer = setTimeout(function () { window.location.reload(); }, seconds * 1000); }
    }
    box.checked = window.localStorage.getItem(key) === "1";
    box.addEventListener("change", function () {
      window.localStorage.setItem(key, box.checked ? "1" : "0");
      apply();
    });
    apply();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    autosubmit();
    confirmations();
    autorefresh();
  });
})();
