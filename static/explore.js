// The explore view: one job's events read back from ClickHouse, as a histogram over time by
// level (an inline SVG, one stack of bars per bucket) above a filtered, keyset-paged table.
// The same filters go to both routes; clicking a bar narrows the time range to its bucket.
// The filters live in the URL's hash (#/jobs/<id>?level=error&…), so a reload or a link shows
// the same view. A row opens to its JSON (events.js); its level, service or type filters this
// view, any other value (a context one) opens the Search view on this job with it.
// While the job is being delivered (its card's WebSocket reports each batch) the view refreshes,
// at most once a second; after the job ends it goes on refreshing until ClickHouse holds every
// valid line's event, or their count stops changing. Uses app.js's api(), problemDetail(),
// cell(), fmt(), go() and isFinal(); app.js calls Explore.open/jobUpdated/jobGone/close, and
// search.js uses Explore.histogram/wireChart/read.
"use strict";

(() => {
  const LEVELS = ["debug", "info", "warning", "error", "critical"];
  const PAGE_SIZE = 50;
  const REFRESH_MS = 1000; // at most one refresh a second while following
  const STABLE_READS = 5; // after the job ends: the count unchanged this many reads in a row
  const MAX_SETTLE_READS = 60; // and never more than this many reads after it ends
  const SVG_NS = "http://www.w3.org/2000/svg";
  const BOX = { width: 720, height: 170, left: 40, right: 6, top: 8, bottom: 22 };

  const view = document.getElementById("explore");
  const title = document.getElementById("explore-title");
  const live = document.getElementById("explore-live");
  const filters = document.getElementById("explore-filters");
  const note = document.getElementById("explore-message");
  const chart = document.getElementById("chart");
  const rows = document.querySelector("#events tbody");
  const prev = document.getElementById("events-prev");
  const next = document.getElementById("events-next");
  const pageLabel = document.getElementById("events-page");
  // {job, query, pages: [url, …], next, seq, loading, again, timer, lastRefresh,
  //  settled, reads, stable, lastEvents}: `settled` once ClickHouse has all it will get
  let state = null;

  filters.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  document.getElementById("explore-reset").addEventListener("click", () => { filters.reset(); apply(); });
  document.getElementById("explore-close").addEventListener("click", () => go("#/"));
  prev.addEventListener("click", () => { state.pages.pop(); load(); });
  next.addEventListener("click", () => { state.pages.push(state.next); load(); });
  wireChart(chart, narrowTo);

  globalThis.Explore = { open, close, jobUpdated, jobGone, histogram: drawHistogram, wireChart, read,
                         timeText, utcText };

  // ------------------------------------------------------------------------- opening, closing

  // params: the filters to open with (URLSearchParams, from the URL's hash).
  function open(job, params = new URLSearchParams()) {
    close();
    state = { job, query: "", pages: [], next: null, seq: 0, loading: 0, again: false,
              timer: null, lastRefresh: 0, settled: false, reads: 0, stable: 0, lastEvents: undefined };
    title.textContent = `Events of ${job.file_name}`;
    view.dataset.jobId = job.job_id;
    view.hidden = false;
    setFilters(params);
    // A phone shows the events first, the filters a tap away.
    document.getElementById("explore-filter-box").open = !matchMedia("(max-width: 700px)").matches;
    view.scrollIntoView({ block: "start" });
    apply();
  }

  function close() {
    if (state) clearTimeout(state.timer);
    state = null;
    view.hidden = true;
    view.classList.remove("failed");
    for (const key of ["jobId", "query", "page", "live"]) delete view.dataset[key];
    filters.reset();
    clear("");
  }

  function jobGone(jobId) {
    if (state?.job.job_id !== jobId) return;
    close();
    history.replaceState(null, "", "#/");
  }

  // The card's job changed (a batch committed, or the job ended): refresh, throttled.
  function jobUpdated(job) {
    if (!state || state.job.job_id !== job.job_id || isFinal(state.job)) return;
    state.job = job;
    setLive(true);
    schedule();
  }

  // ------------------------------------------------------------------------- reading

  function apply() {
    state.query = filterQuery();
    history.replaceState(null, "", `#/jobs/${state.job.job_id}${state.query ? `?${state.query}` : ""}`);
    state.pages = [`/api/v1/jobs/${state.job.job_id}/events?${joinQuery(`limit=${PAGE_SIZE}`, state.query)}`];
    load();
  }

  function schedule() {
    if (state.timer) return;
    const wait = Math.max(0, state.lastRefresh + REFRESH_MS - performance.now());
    state.timer = setTimeout(refresh, wait);
  }

  // A refresh while following; one at a time, so a slow ClickHouse is not asked twice over.
  function refresh() {
    if (!state) return;
    state.timer = null;
    if (state.loading) state.again = true; else load();
  }

  // Reads the histogram and the table's current page; a newer load makes this one's answer moot.
  async function load() {
    const s = state;
    const seq = ++s.seq;
    s.loading = seq;
    s.lastRefresh = performance.now();
    const histogramUrl = `/api/v1/jobs/${s.job.job_id}/histogram${s.query ? `?${s.query}` : ""}`;
    // Both answers, whatever the first: the view changes once, when both are in.
    const results = await Promise.allSettled([read(histogramUrl), read(s.pages.at(-1))]);
    const problem = results.find((r) => r.status === "rejected")?.reason;
    const [histogram, page] = results.map((r) => r.value);
    if (state !== s || seq !== s.seq) return; // closed, or a newer read is under way
    s.loading = 0;
    if (problem?.tokenRefused) return; // the token form is back (and this view closed)
    view.classList.toggle("failed", Boolean(problem));
    if (problem) clear(`${problem.refused ? "Events not read" : "Events cannot be read now"}: ${problem.message}`);
    else draw(s, histogram, page);
    follow(s, problem ? undefined : histogram.events);
  }

  async function read(url) {
    let response;
    try {
      response = await api(url);
    } catch (err) {
      throw new Error("the server could not be reached");
    }
    if (response.status === 401) throw Object.assign(new Error("token refused"), { tokenRefused: true });
    // A 4xx but 401 is the request's own fault (a filter the API refuses, say): no use retrying.
    const refused = response.status >= 400 && response.status < 500;
    if (!response.ok) throw Object.assign(new Error(await problemDetail(response)), { refused });
    return response.json();
  }

  // After a read: while the job runs, its WebSocket drives the refreshes; once it has ended,
  // read again each second until every valid line's event is in, or the count holds still.
  function follow(s, events) {
    if (s.again) { s.again = false; schedule(); return; }
    if (!isFinal(s.job) || s.settled) { setLive(!s.settled); return; }
    s.reads += 1;
    // None yet of a job with valid lines is the relay still to come, not a count holding still.
    const none = !s.query && events === 0 && s.job.lines_valid > 0;
    s.stable = events !== undefined && events === s.lastEvents && !none ? s.stable + 1 : 0;
    s.lastEvents = events;
    s.settled = events === s.job.lines_valid || s.stable >= STABLE_READS - 1
      || s.reads >= MAX_SETTLE_READS;
    setLive(!s.settled);
    if (!s.settled) schedule();
  }

  function setLive(following) {
    view.dataset.live = String(following);
    live.hidden = !following;
  }

  // ------------------------------------------------------------------------- the filters

  // The form as a query string: repeated `level`s, the texts, and from/to as RFC 3339 UTC.
  function filterQuery() {
    const data = new FormData(filters);
    const params = new URLSearchParams();
    for (const level of data.getAll("level")) params.append("level", level);
    for (const name of ["service", "event_type"]) { // several, comma-separated: any of them
      for (const value of listed(data.get(name))) params.append(name, value);
    }
    if (data.get("q")) params.append("q", data.get("q"));
    for (const name of ["from", "to"]) {
      const input = filters.elements[name];
      if (input.value) params.append(name, utcText(input.valueAsNumber)); // the inputs are UTC
    }
    return params.toString();
  }

  // The form from a query string (the URL's hash), as filterQuery() writes it.
  function setFilters(params) {
    for (const box of filters.elements.level) box.checked = params.getAll("level").includes(box.value);
    for (const name of ["service", "event_type"]) filters.elements[name].value = params.getAll(name).join(", ");
    filters.elements.q.value = params.get("q") || "";
    for (const name of ["from", "to"]) {
      const ms = Date.parse(params.get(name) || "");
      filters.elements[name].value = "";
      if (!Number.isNaN(ms)) filters.elements[name].valueAsNumber = ms;
    }
  }

  // A value clicked in an opened row: this view's own filters take level, service and type;
  // any other (a context value) is a search of this job's events.
  function filterBy(name, value) {
    if (name === "level") {
      for (const box of filters.elements.level) box.checked = box.checked || box.value === value;
    } else if (name === "service" || name === "event_type") {
      const input = filters.elements[name];
      input.value = [...new Set([...listed(input.value), value])].join(", ");
    } else {
      const params = new URLSearchParams([["range", "all"], ["job_id", state.job.job_id], [name, value]]);
      go(`#/search?${params}`);
      return;
    }
    apply();
  }

  // A bar's bucket becomes the time range: from its start to the next bucket's.
  function narrowTo(bar) {
    if (!bar || !state) return;
    const start = Date.parse(bar.dataset.start);
    filters.elements.from.valueAsNumber = start;
    filters.elements.to.valueAsNumber = start + Number(bar.dataset.interval) * 1000;
    apply();
  }

  // ------------------------------------------------------------------------- drawing

  function draw(s, histogram, page) {
    note.textContent = "";
    const focused = [...chart.querySelectorAll(".bucket")].indexOf(document.activeElement);
    chart.replaceChildren(histogram.buckets.length ? drawHistogram(histogram) : emptyNote(s));
    if (focused >= 0) focusBar(view.dataset.query === s.query ? focused : 0); // keyboard users stay
    drawTable(page);
    s.next = page.next;
    prev.disabled = s.pages.length < 2;
    next.disabled = !page.next;
    const first = (s.pages.length - 1) * PAGE_SIZE;
    pageLabel.textContent = page.events.length
      ? `${fmt(first + 1)}–${fmt(first + page.events.length)} of ${fmt(histogram.events)}` : "";
    view.dataset.query = s.query;
    view.dataset.page = String(s.pages.length);
  }

  function emptyNote(s) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = isFinal(s.job) || s.query ? "No events match." : "No events yet.";
    return p;
  }

  function clear(problem) {
    note.textContent = problem;
    chart.replaceChildren();
    rows.replaceChildren();
    prev.disabled = next.disabled = true;
    pageLabel.textContent = "";
  }

  function drawHistogram({ buckets, interval_s: interval, events }) {
    const max = Math.max(1, ...buckets.map(total));
    const plotWidth = BOX.width - BOX.left - BOX.right;
    const slot = plotWidth / buckets.length;
    const svg = svgElement("svg", { class: "histogram", viewBox: `0 0 ${BOX.width} ${BOX.height}`,
      role: "group", "aria-labelledby": "chart-title", "data-events": events,
      "data-interval": interval, "data-buckets": buckets.length });
    svg.append(svgElement("title", { id: "chart-title" },
      `${fmt(events)} events by level over time, in buckets of ${duration(interval)}; `
      + "a bar narrows the time range to its bucket"));
    svg.append(...axis(buckets, interval, max));
    buckets.forEach((bucket, i) => svg.append(bar(bucket, BOX.left + i * slot, slot, max, interval)));
    svg.querySelector(".bucket").setAttribute("tabindex", "0"); // one tab stop; arrows move along
    return svg;
  }

  function bar(bucket, x, width, max, interval) {
    const label = `${timeText(bucket.start)} (${duration(interval)}): ${countsText(bucket)}`;
    const g = svgElement("g", { class: "bucket", role: "button", tabindex: "-1", "aria-label": label,
      "data-start": bucket.start, "data-interval": interval });
    for (const level of LEVELS) g.dataset[level] = String(bucket.counts[level] || 0);
    const height = BOX.height - BOX.top - BOX.bottom;
    g.append(svgElement("title", {}, label),
      svgElement("rect", { class: "hit", x, y: BOX.top, width, height }));
    const gap = width > 4 ? 1 : 0;
    let y = BOX.top + height;
    for (const level of LEVELS) {
      const h = ((bucket.counts[level] || 0) / max) * height;
      if (!h) continue;
      y -= h;
      g.append(svgElement("rect", { class: `lvl-${level}`, x: x + gap / 2, y, width: width - gap, height: h }));
    }
    return g;
  }

  // The axes' labels: the highest count, and the first bucket's start and the last one's end.
  function axis(buckets, interval, max) {
    const bottom = BOX.height - BOX.bottom;
    const end = new Date(Date.parse(buckets.at(-1).start) + interval * 1000).toISOString();
    return [
      svgElement("line", { class: "axis", x1: BOX.left, y1: bottom, x2: BOX.width - BOX.right, y2: bottom }),
      svgElement("text", { class: "max", x: BOX.left - 4, y: BOX.top + 9, "text-anchor": "end" }, fmt(max)),
      svgElement("text", { class: "zero", x: BOX.left - 4, y: bottom, "text-anchor": "end" }, "0"),
      svgElement("text", { class: "first", x: BOX.left, y: BOX.height - 6 }, timeText(buckets[0].start)),
      svgElement("text", { class: "last", x: BOX.width - BOX.right, y: BOX.height - 6, "text-anchor": "end" }, timeText(end)),
    ];
  }

  // A click on a bar picks it; the arrow keys move along the bars (one tab stop for the
  // chart), Enter or Space picks one.
  function wireChart(box, pick) {
    box.addEventListener("click", (e) => pick(e.target.closest(".bucket")));
    box.addEventListener("keydown", (e) => {
      const current = e.target.closest(".bucket");
      if (!current) return;
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(current); return; }
      const bars = [...box.querySelectorAll(".bucket")];
      const moves = { ArrowLeft: -1, ArrowRight: 1, Home: -bars.length, End: bars.length };
      if (!(e.key in moves)) return;
      e.preventDefault();
      focusBar(bars.indexOf(current) + moves[e.key], box);
    });
  }

  function focusBar(index, box = chart) {
    const bars = [...box.querySelectorAll(".bucket")];
    if (!bars.length) return;
    const bar = bars[Math.max(0, Math.min(bars.length - 1, index))];
    for (const other of bars) other.setAttribute("tabindex", other === bar ? "0" : "-1");
    bar.focus();
  }

  const COLUMNS = [
    ["Time (UTC)", (e) => timeText(e.timestamp), "time"],
    ["Level", (e) => e.level, (e) => `level level-${e.level}`],
    ["Service", (e) => e.service, "service"],
    ["Message", (e) => e.message, "message"],
    ["Event type", (e) => e.event_type, "type"],
    ["Line", (e) => e.line_no, "line"],
  ];

  function drawTable(page) { EventTable.render(rows, page.events, COLUMNS, filterBy); }

  // ------------------------------------------------------------------------- helpers

  function svgElement(name, attributes, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function total(bucket) { return Object.values(bucket.counts).reduce((a, b) => a + b, 0); }
  function countsText(bucket) {
    const parts = LEVELS.filter((l) => bucket.counts[l]).map((l) => `${l} ${fmt(bucket.counts[l])}`);
    return `${fmt(total(bucket))} events${parts.length ? ` (${parts.join(", ")})` : ""}`;
  }
  function listed(text) { return (text || "").split(",").map((v) => v.trim()).filter(Boolean); }
  function joinQuery(...parts) { return parts.filter(Boolean).join("&"); }
  function utcText(ms) { return new Date(ms).toISOString().replace(/\.\d+Z$/, "Z"); }
  function timeText(iso) { return iso.replace("T", " ").replace(/(\.000)?Z$/, ""); }
  function duration(seconds) {
    const units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
    const [size, unit] = units.find(([size]) => seconds % size === 0 && seconds >= size);
    return `${seconds / size} ${unit}`;
  }
})();
