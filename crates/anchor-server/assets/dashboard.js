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
