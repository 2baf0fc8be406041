// Keyward's own script: niceties on top of pages that work without it. No inline script
// anywhere (the CSP forbids it); everything hangs off data attributes.
"use strict";

// Show/hide for secret inputs: <button data-toggle-secret="ID" aria-pressed="false">.
for (const button of document.querySelectorAll("[data-toggle-secret]")) {
  button.hidden = false;
  button.addEventListener("click", () => {
    const input = document.getElementById(button.dataset.toggleSecret);
    if (!input) return;
    const show = input.type === "password";
    input.type = show ? "text" : "password";
    button.setAttribute("aria-pressed", String(show));
    button.textContent = show ? "Hide" : "Show";
  });
}

// How long a revealed value (and a copied one) may stay, in seconds.
const CLEAR_AFTER = 30;

// Copy buttons: <button data-copy="text"> or <button data-copy-from="ID">. A copied secret
// is cleared from the clipboard after CLEAR_AFTER seconds, if it is still what we put there
// (reading the clipboard back may be refused; then we overwrite it anyway).
for (const button of document.querySelectorAll("[data-copy], [data-copy-from]")) {
  if (!navigator.clipboard) continue;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const from = button.dataset.copyFrom && document.getElementById(button.dataset.copyFrom);
    const text = from ? from.textContent : button.dataset.copy;
    if (!text) return;
    try {
      await navigator.clipboard.writeText(from ? text : new URL(text, location.href).href);
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = label; }, 1500);
      if (from) {
        setTimeout(async () => {
          try {
            const now = await navigator.clipboard.readText().catch(() => text);
            if (now === text) await navigator.clipboard.writeText("");
          } catch (_) { /* the browser does not allow it */ }
        }, CLEAR_AFTER * 1000);
      }
    } catch (_) {
      button.textContent = "Copy failed";
    }
  });
}

// A revealed value: count down, then remove it from the page and go back to the key.
for (const panel of document.querySelectorAll("[data-reveal-seconds]")) {
  let left = Number(panel.dataset.revealSeconds) || CLEAR_AFTER;
  const countdown = panel.querySelector("[data-countdown]");
  const timer = setInterval(() => {
    left -= 1;
    if (countdown) countdown.textContent = String(Math.max(left, 0));
    if (left > 0) return;
    clearInterval(timer);
    const value = panel.querySelector(".revealed");
    if (value) value.textContent = "";
    for (const copy of panel.querySelectorAll("[data-copy-from]")) copy.remove();
    const note = document.createElement("p");
    note.className = "flash";
    note.setAttribute("role", "status");
    note.textContent = "The value was cleared from this page.";
    panel.prepend(note);
  }, 1000);
}

// The add-key wizard's Validate button: ask the API without leaving the page, so the
// typed key stays in its field. Without JavaScript the button posts the form instead.
for (const button of document.querySelectorAll("[data-validate]")) {
  button.addEventListener("click", async (event) => {
    const form = button.form;
    const out = document.getElementById("validation");
    const service = form.elements.service.value;
    const secret = form.elements.secret.value;
    if (!service || !secret) return; // let the form post and say what is missing
    event.preventDefault();
    out.className = "verdict";
    out.textContent = "Checking…";
    try {
      const answer = await fetch(`/api/v1/services/${encodeURIComponent(service)}/validate`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": form.elements.csrf.value },
        body: JSON.stringify({ secret, environment: form.elements.environment.value }),
      });
      const body = await answer.json();
      if (answer.ok) {
        out.className = `verdict ${body.verdict}`;
        out.textContent = `${body.message} (${body.latency_ms} ms)`;
      } else {
        out.className = "verdict rejected";
        out.textContent = body.error ? body.error.message : `HTTP ${answer.status}`;
      }
    } catch (_) {
      out.className = "verdict unreachable";
      out.textContent = "Keyward could not be reached.";
    }
  });
}

// A search box over a <select>: <input data-filter-select="ID"> hides the options (and
// empty groups) that do not match, and picks the only match. The select works without it.
for (const input of document.querySelectorAll("[data-filter-select]")) {
  const select = document.getElementById(input.dataset.filterSelect);
  if (!select) continue;
  input.hidden = false;
  input.addEventListener("input", () => {
    const wanted = input.value.trim().toLowerCase();
    const matches = [];
    for (const option of select.querySelectorAll("option")) {
      if (!option.value) continue;
      const hit = !wanted || option.textContent.toLowerCase().includes(wanted) || option.value.includes(wanted);
      option.hidden = !hit;
      if (hit) matches.push(option);
    }
    for (const group of select.querySelectorAll("optgroup")) {
      group.hidden = ![...group.querySelectorAll("option")].some((o) => !o.hidden);
    }
    if (matches.length === 1) select.value = matches[0].value;
  });
}

// The chosen service's guidance (where to get a key, its format and plans) next to the
// picker; all of it stays in the "Where to get a key" list for browsers without script.
for (const guide of document.querySelectorAll("[data-guide-for]")) {
  const select = document.getElementById(guide.dataset.guideFor);
  if (!select) continue;
  const show = () => {
    guide.replaceChildren();
    const source = document.querySelector(`dd[data-service="${CSS.escape(select.value)}"]`);
    if (source) guide.append(...[...source.childNodes].map((n) => n.cloneNode(true)));
  };
  select.addEventListener("change", show);
  show();
}

// Panels that keep themselves current: <section id="…" data-live="SECONDS"> is refetched
// from the same page every SECONDS and swapped for its new version — unless the page is
// hidden or someone is using a form inside it (a half-typed comment is never lost).
const live = [...document.querySelectorAll("[data-live][id]")];
if (live.length) {
  const every = Math.max(5, Math.min(...live.map((p) => Number(p.dataset.live) || 30)));
  setInterval(async () => {
    if (document.hidden) return;
    let text;
    try {
      const answer = await fetch(location.href, { headers: { accept: "text/html" }, credentials: "same-origin" });
      if (!answer.ok || answer.redirected) return;
      text = await answer.text();
    } catch {
      return;
    }
    const fresh = new DOMParser().parseFromString(text, "text/html");
    for (const panel of document.querySelectorAll("[data-live][id]")) {
      if (panel.contains(document.activeElement) && document.activeElement !== document.body) continue;
      const next = fresh.getElementById(panel.id);
      if (next) panel.replaceWith(document.importNode(next, true));
    }
  }, every * 1000);
}
