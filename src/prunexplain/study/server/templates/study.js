(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) { return; }
  var radios = Array.prototype.slice.call(form.querySelectorAll("input[type=radio]"));
  var sent = false;
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "Enter") {
      event.preventDefault();
      if (form.querySelector("input[type=radio]:checked")) { form.requestSubmit(); }
      return;
    }
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    radios.forEach(function (radio) {
      if (radio.dataset.keys.split(" ").indexOf(key) >= 0) {
        event.preventDefault();
        radio.checked = true;
        radio.focus();
      }
    });
  });
})();
