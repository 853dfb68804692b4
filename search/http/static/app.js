// Changing a filter re-runs the search at once (when there is a query to run).
document.querySelectorAll("form.search select").forEach(function (select) {
  select.addEventListener("change", function () {
    if (select.form.q.value.trim()) select.form.submit();
  });
});
