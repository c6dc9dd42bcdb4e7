// Release Anchor's dashboard: a little progressive enhancement. Every page works without it;
// it is served from this server only (the Content-Security-Policy allows nothing inline).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Filters apply as soon as a choice changes; typing in the search box waits for Enter.
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    for (const control of form.querySelectorAll("select, input[type=checkbox]")) {
      control.addEventListener("change", () => form.requestSubmit());
    }
  }
  // A destructive button cannot be pressed twice by accident while its request is on its way.
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) {
        button.disabled = true;
      }
    });
  }
});

// Forms with several submit buttons (the targeting editor's "Add a condition" beside "Save")
// say which was pressed by its name and value; the handler above disables the buttons, and a
// disabled button is not sent, so the pressed one is repeated as a hidden field.
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-keep-submitter]")) {
    form.addEventListener("submit", (event) => {
      const button = event.submitter;
      if (button && button.name) {
        const hidden = document.createElement("input");
        hidden.type = "hidden";
        hidden.name = button.name;
        hidden.value = button.value;
        form.prepend(hidden);
      }
    });
  }
});
