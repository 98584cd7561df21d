// Sortable, filterable tables without a library or a network: inlined into every results page by digit_bench.report.
// A click on a header of a `table.sortable` sorts by that column (again: reversed); cells sort by `data-sort` when
// they carry one, else by their leading number, else as text; empty cells ("–") go last. An <input data-filter="ID">
// hides the rows of table#ID that do not contain its text (case-insensitive).
(function () {
  "use strict";
  function key(cell) {
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (raw === "" || raw === "–") return null;
    const num = parseFloat(raw.replace(/^[^0-9+\-.]+/, ""));
    return Number.isNaN(num) ? raw.toLowerCase() : num;
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  function sortBy(table, index, th) {
    const body = table.tBodies[0];
    const ascending = th.dataset.order !== "asc";
    Array.from(table.tHead.rows[0].cells).forEach((h) => { delete h.dataset.order; });
    th.dataset.order = ascending ? "asc" : "desc";
    const rows = Array.from(body.rows);
    rows.sort((r1, r2) => {
      const c = compare(key(r1.cells[index]), key(r2.cells[index]));
      return ascending ? c : -c;
    });
    rows.forEach((r) => body.appendChild(r));
  }
  document.querySelectorAll("table.sortable").forEach((table) => {
    if (!table.tHead || !table.tBodies.length) return;
    Array.from(table.tHead.rows[0].cells).forEach((th, index) => {
      th.title = "click to sort";
      th.addEventListener("click", () => sortBy(table, index, th));
    });
  });
  document.querySelectorAll("input[data-filter]").forEach((input) => {
    const table = document.getElementById(input.dataset.filter);
    if (!table || !table.tBodies.length) return;
    input.addEventListener("input", () => {
      const text = input.value.toLowerCase();
      Array.from(table.tBodies[0].rows).forEach((row) => {
        row.hidden = text !== "" && !row.textContent.toLowerCase().includes(text);
      });
    });
  });
})();
