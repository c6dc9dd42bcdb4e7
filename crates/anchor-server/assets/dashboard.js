// Release Anchor's dashboard: a little progressive enhancement. Every page works without it;
// it is served from this server only (the Content-Security-Policy allows nothing inline).
"use strict";

// Binds the page's behaviour to the forms under `root`; called again for content that live
// updates put in place.
function enhance(root) {
  // Filters apply as soon as a choice changes; typing in the search box waits for Enter.
  for (const form of root.querySelectorAll("form[data-autosubmit]")) {
    for (const control of form.querySelectorAll("select, input[type=checkbox]")) {
      control.addEventListener("change", () => form.requestSubmit());
    }
  }
  // A destructive button cannot be pressed twice by accident while its request is on its way.
  for (const form of root.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) {
        button.disabled = true;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => enhance(document));

// Live updates: a page carrying `data-live` (the URL of the project's event stream) follows
// it and, when an event it cares about (`data-live-on`) arrives, fetches itself again and
// replaces <main>, keeping the scroll position and the focused control. A page with a form
// being filled in is never replaced: it says that it changed and offers a reload instead.
document.addEventListener("DOMContentLoaded", () => {
  const marker = document.querySelector("[data-live]");
  if (!marker || !window.EventSource || !window.fetch) return;
  const kinds = (marker.dataset.liveOn || "").split(" ").filter(Boolean);
  const release = marker.dataset.liveRelease;
  let edited = false;
  const noteEdit = (event) => {
    if (event.target.closest && event.target.closest("main form")) edited = true;
  };
  document.addEventListener("input", noteEdit);
  document.addEventListener("change", noteEdit);
  const busy = () => {
    const active = document.activeElement;
    return edited || Boolean(active && active.closest && active.closest("main form") &&
      active.matches("input, select, textarea"));
  };
  const notice = () => {
    const main = document.querySelector("main");
    if (!main || main.querySelector(".live-notice")) return;
    const box = document.createElement("p");
    box.className = "live-notice";
    box.setAttribute("role", "status");
    box.append("This page changed since it was loaded. ");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Reload";
    button.addEventListener("click", () => window.location.reload());
    box.append(button);
    main.prepend(box);
  };
  // Someone moving through the page with the keyboard keeps their place: the focused link or
  // button is found again in the new content (by id, else by where it leads or what it says).
  const focusFinder = (main, active) => {
    if (!active || active === document.body || !main.contains(active)) return () => null;
    if (active.id) return () => document.getElementById(active.id);
    const href = active.getAttribute("href");
    const text = active.textContent;
    const tag = active.tagName.toLowerCase();
    return (root) => Array.from(root.querySelectorAll(tag)).find((el) =>
      (href !== null ? el.getAttribute("href") === href : true) && el.textContent === text) || null;
  };
  let running = false;
  let again = false;
  const refresh = async () => {
    if (busy()) { notice(); return; }
    if (running) { again = true; return; }
    running = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      // Signed out meanwhile, or the page is gone: say so rather than show something else.
      if (!response.ok || response.redirected) { notice(); return; }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
      const main = document.querySelector("main");
      if (!fresh || !main) return;
      if (busy()) { notice(); return; }
      const refocus = focusFinder(main, document.activeElement);
      const [x, y] = [window.scrollX, window.scrollY];
      // Copied into an array first: adopting a node takes it out of the live child list.
      const nodes = Array.from(fresh.childNodes);
      main.replaceChildren(...nodes.map((node) => document.adoptNode(node)));
      enhance(main);
      const target = refocus(main);
      if (target) target.focus({ preventScroll: true });
      window.scrollTo(x, y);
      document.documentElement.dataset.liveRefreshes =
        String(Number(document.documentElement.dataset.liveRefreshes || "0") + 1);
    } catch (_) {
      notice();
    } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  };
  // A burst of events (a release step is a revision and a state change) refreshes once.
  let timer = null;
  const schedule = () => {
    if (timer) return;
    timer = window.setTimeout(() => { timer = null; refresh(); }, 250);
  };
  // A page left for another (or kept in the back-forward cache) closes its stream: browsers
  // allow only a few connections per server over HTTP/1.1, and a stream held by a page no one
  // sees would starve the pages people do.
  let source = null;
  const follow = () => {
    source = new EventSource(marker.dataset.live);
    for (const kind of kinds) {
      source.addEventListener(kind, (event) => {
        if (kind === "report" && release) {
          try {
            if (JSON.parse(event.data).id !== release) return;
          } catch (_) {
            return;
          }
        }
        schedule();
      });
    }
  };
  window.addEventListener("pagehide", () => { if (source) { source.close(); source = null; } });
  // Back from the cache: what changed meanwhile is told by the stream's `since` handshake.
  window.addEventListener("pageshow", (event) => { if (event.persisted && !source) follow(); });
  follow();
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
