// While something runs, fetch this page again every few seconds and swap its <main> in place; stop
// when the server's copy says there is nothing left to watch (data-refresh="0").
(function () {
  var seconds = Number(document.body.getAttribute("data-refresh"));
  if (!(seconds > 0)) return;
  var timer = setInterval(function () {
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var main = fresh.querySelector("main");
        if (main) document.querySelector("main").replaceWith(document.importNode(main, true));
        if (!(Number(fresh.body.getAttribute("data-refresh")) > 0)) clearInterval(timer);
      })
      .catch(function () { /* the coordinator restarting: try again at the next tick */ });
  }, seconds * 1000);
})();
