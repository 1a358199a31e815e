// The Search view: every job's events of the token's owner (GET /api/v1/events and its
// histogram, facets and export). The whole view is its URL's hash, #/search?range=1h&level=error
// &service=a&service=b&context.request_id=r-7&q=…, so a reload or a link shows the same view:
// `range` is 15m, 1h, 24h, 7d, all or custom (then `from` and `to`, RFC 3339); the rest are the
// API's own filters. Facets count each field under the other fields' filters, so several values
// of one field can be picked: a click includes a value (level=error), an alt-click excludes it
// (not.level=debug), as in Kibana; a second click takes either back.
// Uses app.js's api(), cell(), fmt(), jobLabel() and problemDetail(), explore.js's Explore.histogram/
// wireChart/read/timeText, events.js's EventTable; app.js calls Search.show/hide.
"use strict";

const Search = (() => {
  const PAGE_SIZE = 50;
  const RANGES = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
  const FACETS = [["level", "Level"], ["service", "Service"], ["event_type", "Event type"]];
  const VIEW_ONLY = ["range", "from", "to"]; // the view's time, made into the API's from/to
  const COLUMNS = [
    ["Time (UTC)", (e) => Explore.timeText(e.timestamp), "time"],
    ["Level", (e) => e.level, (e) => `level level-${e.level}`],
    ["Service", (e) => e.service, "service"],
    ["Message", (e) => e.message, "message"],
    ["Event type", (e) => e.event_type, "type"],
    ["File", (e) => jobLabel(e.job_id), "file"],
  ];

  const view = document.getElementById("search");
  const form = document.getElementById("search-form");
  const note = document.getElementById("search-message");
  const chips = document.getElementById("search-chips");
  const facetBox = document.getElementById("search-facets");
  const facetLists = document.getElementById("facet-lists");
  const chart = document.getElementById("search-chart");
  const rows = document.querySelector("#search-events tbody");
  const prev = document.getElementById("search-prev");
  const next = document.getElementById("search-next");
  const pageLabel = document.getElementById("search-page");
  const exportButton = document.getElementById("search-export");
  // {params (the view's, as in the URL), query (the API's), pages: [url, …], next, total, seq}
  let state = null;
  let dragStart = null;

  form.addEventListener("submit", (e) => { e.preventDefault(); change(fromForm()); });
  form.elements.range.addEventListener("change", () => {
    showCustom();
    if (form.elements.range.value !== "custom") change(fromForm());
  });
  prev.addEventListener("click", () => { state.pages.pop(); loadPage(state); });
  next.addEventListener("click", () => { state.pages.push(state.next); loadPage(state); });
  exportButton.addEventListener("click", exportEvents);
  Explore.wireChart(chart, (bar) => bar && narrow(bar, bar));
  chart.addEventListener("pointerdown", (e) => { dragStart = e.target.closest(".bucket"); });
  chart.addEventListener("pointerup", (e) => { // a drag across bars selects their span
    const end = e.target.closest(".bucket");
    if (dragStart && end && end !== dragStart) narrow(dragStart, end);
    dragStart = null;
  });

  // ------------------------------------------------------------------------- showing

  function show(params) {
    if (!params.get("range")) params.set("range", params.get("from") || params.get("to") ? "custom" : "all");
    view.hidden = false;
    facetBox.open = !matchMedia("(max-width: 700px)").matches; // a phone shows the events first
    change(params);
  }

  function hide() {
    if (state) state.seq += 1; // answers still coming are moot
    state = null;
    view.hidden = true;
  }

  // The view's new params: into the URL, the form and the chips, then read.
  function change(params) {
    params.sort();
    history.replaceState(null, "", `#/search?${params}`);
    state = { params, query: apiQuery(params), pages: [], next: null, total: 0, seq: 0 };
    state.pages.push(`/api/v1/events?${joined(`limit=${PAGE_SIZE}`, state.query)}`);
    toForm(params);
    drawChips(params);
    view.dataset.query = params.toString();
    load(state);
  }

  // The API's query: the view's filters, with the time range made absolute now.
  function apiQuery(params) {
    const query = new URLSearchParams([...params].filter(([name]) => !VIEW_ONLY.includes(name)));
    const range = params.get("range");
    if (range in RANGES) query.set("from", new Date(Date.now() - RANGES[range]).toISOString());
    if (range === "custom") {
      for (const name of ["from", "to"]) if (params.get(name)) query.set(name, params.get(name));
    }
    return query.toString();
  }

  function withValue(params, name, value, on) {
    const copy = new URLSearchParams([...params].filter(([n, v]) => !(n === name && v === value)));
    if (on) copy.append(name, value);
    return copy;
  }

  // ------------------------------------------------------------------------- reading

  async function load(s) {
    const seq = ++s.seq;
    view.dataset.loading = "true";
    const reads = [Explore.read(`/api/v1/events/histogram?${s.query}`), Explore.read(s.pages[0]),
                   ...FACETS.map(([field]) => Explore.read(facetUrl(s, field)))];
    const results = await Promise.allSettled(reads);
    if (state !== s || seq !== s.seq) return;
    delete view.dataset.loading;
    const problem = results.find((r) => r.status === "rejected")?.reason;
    if (problem?.tokenRefused) return;
    view.classList.toggle("failed", Boolean(problem));
    if (problem) { fail(problem); return; }
    const [histogram, page, ...facets] = results.map((r) => r.value);
    note.textContent = "";
    s.total = histogram.events;
    chart.replaceChildren(histogram.buckets.length ? Explore.histogram(histogram) : "");
    view.classList.toggle("empty", !histogram.buckets.length);
    drawFacets(s, facets);
    drawPage(s, page);
    view.dataset.shown = s.params.toString(); // what the view shows now (for tests, and a glance)
  }

  async function loadPage(s) {
    const seq = ++s.seq;
    try {
      const page = await Explore.read(s.pages.at(-1));
      if (state === s && seq === s.seq) drawPage(s, page);
    } catch (problem) {
      if (state === s && seq === s.seq && !problem.tokenRefused) fail(problem);
    }
  }

  // A facet's counts under every filter but its own field's: its other values stay to pick.
  function facetUrl(s, field) {
    const query = new URLSearchParams(s.query);
    query.delete(field);
    query.delete(`not.${field}`);
    query.set("field", field);
    query.set("limit", "10");
    return `/api/v1/events/facets?${query}`;
  }

  function fail(problem) {
    note.textContent = `${problem.refused ? "Events not read" : "Events cannot be read now"}: ${problem.message}`;
    chart.replaceChildren();
    rows.replaceChildren();
    facetLists.replaceChildren();
    prev.disabled = next.disabled = true;
    pageLabel.textContent = "";
  }

  // Saves the filter's events as a file. A link cannot send the token, so the page fetches
  // the export and hands the browser its bytes (held in this tab: curl suits a big one).
  async function exportEvents() {
    if (!state) return;
    const s = state;
    exportButton.disabled = true;
    note.textContent = "";
    try {
      const response = await api(`/api/v1/events/export?${s.query}`);
      if (response.status === 401) return;
      if (!response.ok) throw new Error(await problemDetail(response));
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = "events.ndjson";
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    } catch (err) {
      note.textContent = `Not exported: ${err.message}`;
    } finally {
      exportButton.disabled = false;
    }
  }

  // ------------------------------------------------------------------------- drawing

  function drawPage(s, page) {
    EventTable.render(rows, page.events, COLUMNS, (name, value) => change(withValue(s.params, name, value, true)));
    s.next = page.next;
    prev.disabled = s.pages.length < 2;
    next.disabled = !page.next;
    const first = (s.pages.length - 1) * PAGE_SIZE;
    pageLabel.textContent = page.events.length
      ? `${fmt(first + 1)}–${fmt(first + page.events.length)} of ${fmt(s.total)}` : "";
    view.dataset.page = String(s.pages.length);
    view.dataset.total = String(s.total);
  }

  function drawFacets(s, facets) {
    facetLists.replaceChildren(...facets.map((facet, i) => {
      const [field, heading] = FACETS[i];
      const box = document.createElement("section");
      box.className = "facet";
      box.dataset.field = field;
      const h3 = document.createElement("h3");
      h3.textContent = heading;
      const list = document.createElement("ul");
      const picked = s.params.getAll(field);
      const excluded = s.params.getAll(`not.${field}`);
      const values = facet.values.map((v) => [v.value, v.count]);
      for (const value of [...picked, ...excluded]) if (!values.some(([v]) => v === value)) values.push([value, null]);
      list.append(...values.map(([value, count]) => facetValue(s, field, value, count,
        picked.includes(value) ? "picked" : excluded.includes(value) ? "excluded" : "")));
      if (facet.other) list.append(Object.assign(document.createElement("li"),
        { className: "muted other", textContent: `other values: ${fmt(facet.other)}` }));
      box.append(h3, list);
      return box;
    }));
  }

  // A facet's value: `chosen` is "picked" (a filter includes it), "excluded" or "".
  function facetValue(s, field, value, count, chosen) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "facet-value";
    button.dataset.value = value;
    button.setAttribute("aria-pressed", String(chosen === "picked"));
    if (chosen === "excluded") button.classList.add("excluded");
    button.title = chosen ? "Click: take this filter away" : "Click: only this value; Alt-click: leave it out";
    const name = document.createElement("span");
    name.textContent = value === "" ? "(none)" : value;
    const number = document.createElement("span");
    number.className = "count";
    number.textContent = fmt(count);
    button.append(name, number);
    button.addEventListener("click", (e) => {
      let params = withValue(withValue(s.params, field, value, false), `not.${field}`, value, false);
      if (!chosen) params = withValue(params, e.altKey ? `not.${field}` : field, value, true);
      change(params);
    });
    li.append(button);
    return li;
  }

  // The filters in use, each a button that takes it away.
  function drawChips(params) {
    chips.replaceChildren(...[...params].filter(([name]) => !VIEW_ONLY.includes(name)).map(([name, value]) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "chip";
      button.dataset.name = name;
      button.dataset.value = value;
      button.title = "Remove this filter";
      const field = name.replace(/^not\./, "");
      const shown = field === "job_id" ? jobLabel(value) : value;
      const label = name === "q" ? "message contains" : field === "job_id" ? "file" : field;
      button.textContent = `${label} ${name.startsWith("not.") ? "≠" : "="} ${shown} ×`;
      button.addEventListener("click", () => change(withValue(params, name, value, false)));
      li.append(button);
      return li;
    }));
  }

  // ------------------------------------------------------------------------- the form, time

  function fromForm() {
    const params = new URLSearchParams([...state.params].filter(([name]) => ![...VIEW_ONLY, "q"].includes(name)));
    const range = form.elements.range.value;
    params.set("range", range);
    if (range === "custom") {
      for (const name of ["from", "to"]) {
        const input = form.elements[name];
        if (input.value) params.set(name, new Date(input.valueAsNumber).toISOString());
      }
    }
    const q = form.elements.q.value;
    if (q) params.set("q", q);
    return params;
  }

  function toForm(params) {
    form.elements.range.value = params.get("range");
    form.elements.q.value = params.get("q") || "";
    for (const name of ["from", "to"]) {
      const ms = Date.parse(params.get(name) || "");
      form.elements[name].value = "";
      if (!Number.isNaN(ms)) form.elements[name].valueAsNumber = ms;
    }
    showCustom();
  }

  function showCustom() {
    for (const label of form.querySelectorAll(".custom")) label.hidden = form.elements.range.value !== "custom";
  }

  // One bar or a dragged span of them becomes a custom time range.
  function narrow(a, b) {
    if (!state) return;
    const starts = [a, b].map((bar) => Date.parse(bar.dataset.start));
    const interval = Number(a.dataset.interval) * 1000;
    const params = new URLSearchParams(state.params);
    params.set("range", "custom");
    params.set("from", new Date(Math.min(...starts)).toISOString());
    params.set("to", new Date(Math.max(...starts) + interval).toISOString());
    change(params);
  }

  function joined(...parts) { return parts.filter(Boolean).join("&"); }

  return { show, hide };
})();
