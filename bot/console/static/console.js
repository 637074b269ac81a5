// Switchboard console: the few live parts. No library, no build step.
"use strict";

// Forms that ask before they act (reset, drop).
document.addEventListener("submit", (e) => {
  const form = e.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
});

// /logs: append matching events as they arrive (Server-Sent Events from /logs/stream).
document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("events");
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const live = document.getElementById("live");
  const source = new EventSource(table.dataset.stream);
  source.onopen = () => { live.textContent = "live"; live.className = "small good"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "small bad"; };
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    const row = body.insertRow(-1);
    row.className = e.level || "";
    const cells = [String(e.ts || "").slice(11, 23), e.level, e.event, e.channel || "-",
      e.conversation || "-", e.rest];
    cells.forEach((text, i) => {
      const cell = row.insertCell(-1);
      cell.textContent = text == null ? "" : String(text);
      if (i === 2) cell.className = "event";
      if (i === 5) cell.className = "small";
    });
    while (body.rows.length > 500) body.deleteRow(0);
    row.scrollIntoView({ block: "nearest" });
  };
});
