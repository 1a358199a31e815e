// The events table of both views (a job's, explore.js; every job's, search.js): one row per
// event, the service and message before the event type (a pino file's rows all say `pino.log`
// there). A click on a row (or Enter on it) opens it below to its whole JSON, with each of its
// values as a button that filters by it: level, service, event type and every context value
// (`context.<path>`). Uses app.js's cell().
"use strict";

const EventTable = (() => {
  // What the API accepts as a context path: keys of letters, digits, _ - @ : (explore.py).
  const KEY = /^[A-Za-z0-9_@:-]{1,64}$/;
  const MAX_DEPTH = 8;

  // columns: [[heading, event => text, className?], …]; onFilter(name, value).
  function render(tbody, events, columns, onFilter) {
    tbody.replaceChildren(...events.map((event) => row(event, columns, onFilter)));
    if (!events.length) {
      const tr = document.createElement("tr");
      const empty = cell("No events match.");
      empty.colSpan = columns.length;
      tr.append(empty);
      tbody.append(tr);
    }
  }

  function row(event, columns, onFilter) {
    const tr = document.createElement("tr");
    tr.className = "event";
    tr.tabIndex = 0;
    tr.setAttribute("aria-expanded", "false");
    tr.dataset.lineNo = event.line_no;
    tr.dataset.eventId = event.event_id;
    for (const [, text, className] of columns) {
      const td = cell(text(event));
      if (className) td.className = typeof className === "function" ? className(event) : className;
      tr.append(td);
    }
    const toggle = () => toggleDetail(tr, event, columns.length, onFilter);
    tr.addEventListener("click", () => { if (!getSelection().toString()) toggle(); });
    tr.addEventListener("keydown", (e) => {
      if (e.target === tr && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); toggle(); }
    });
    return tr;
  }

  function toggleDetail(tr, event, span, onFilter) {
    const open = tr.getAttribute("aria-expanded") === "true";
    tr.setAttribute("aria-expanded", String(!open));
    if (open) { tr.nextElementSibling?.remove(); return; }
    const detail = document.createElement("tr");
    detail.className = "detail";
    const td = document.createElement("td");
    td.colSpan = span;
    const values = document.createElement("ul");
    values.className = "values";
    values.setAttribute("aria-label", "Filter by a value");
    values.append(...filterValues(event).map(([name, value]) => valueButton(name, value, onFilter)));
    const json = document.createElement("pre");
    json.className = "json";
    json.textContent = JSON.stringify(event, null, 2);
    td.append(values, json);
    detail.append(td);
    tr.after(detail);
  }

  // The event's values a filter can name: [[parameter, value], …].
  function filterValues(event) {
    const pairs = [["level", event.level], ["service", event.service],
                   ["event_type", event.event_type], ["environment", event.environment]]
      .filter(([, value]) => value);
    return pairs.concat(contextValues(event.context, "context", 0));
  }

  function contextValues(object, prefix, depth) {
    if (!object || typeof object !== "object" || Array.isArray(object) || depth >= MAX_DEPTH) return [];
    return Object.entries(object).flatMap(([key, value]) => {
      if (!KEY.test(key)) return [];
      const path = `${prefix}.${key}`;
      if (value !== null && typeof value === "object") return contextValues(value, path, depth + 1);
      if (value === null || String(value).length > 256) return [];
      return [[path, String(value)]];
    });
  }

  function valueButton(name, value, onFilter) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "value";
    button.dataset.name = name;
    button.dataset.value = value;
    button.title = `Filter by ${name} = ${value}`;
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = `${name} `;
    button.append(key, value);
    button.addEventListener("click", (e) => { e.stopPropagation(); onFilter(name, value); });
    li.append(button);
    return li;
  }

  return { render };
})();
