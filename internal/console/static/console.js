// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  // "Select all" checkboxes: data-select-all names the checkboxes they tick.
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    var name = all.getAttribute("data-select-all");
    var boxes = function () {
      return document.querySelectorAll('input[type=checkbox][name="' + name + '"]');
    };
    all.addEventListener("change", function () {
      boxes().forEach(function (b) { b.checked = all.checked; });
    });
  });
  // The overview's auto-refresh, remembered across reloads.
  var auto = document.getElementById("autorefresh");
  if (auto) {
    var key = "hookbridge.console.autorefresh";
    var timer = null;
    var arm = function () {
      if (timer) { clearTimeout(timer); timer = null; }
      if (auto.checked) { timer = setTimeout(function () { location.reload(); }, 10000); }
    };
    try { auto.checked = localStorage.getItem(key) === "1"; } catch (e) {}
    auto.addEventListener("change", function () {
      try { localStorage.setItem(key, auto.checked ? "1" : "0"); } catch (e) {}
      arm();
    });
    arm();
  }
})();
