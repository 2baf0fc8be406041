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
