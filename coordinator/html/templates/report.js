// Sortable tables (click a header; empty cells stay last) and chart points that find their table row.
(function () {
  function value(row, col) {
    var cell = row.cells[col];
    if (!cell) return "";
    return cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
  }
  function sortBy(table, th) {
    var col = Number(th.getAttribute("data-col"));
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.every(function (r) { var v = value(r, col); return v === "" || !isNaN(Number(v)); });
    rows.sort(function (a, b) {
      var x = value(a, col), y = value(b, col);
      if (x === "" || y === "") return (x === "") - (y === "");
      var order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th[data-col]").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(table, th); });
    });
  });
  document.querySelectorAll("svg [data-cand]").forEach(function (mark) {
    mark.addEventListener("click", function () {
      var scope = mark.closest("section") || document;
      var row = scope.querySelector('tr[data-cand="' + CSS.escape(mark.getAttribute("data-cand")) + '"]');
      if (!row) return;
      document.querySelectorAll("tr.flash").forEach(function (r) { r.classList.remove("flash"); });
      row.classList.add("flash");
      row.scrollIntoView({ block: "center" });
    });
  });
})();
