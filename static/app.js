// Event Horizon's page: ask for an API token, upload a file, then watch its job live over the
// WebSocket; a card's "Events" opens the explore view (explore.js), the top bar's "Search" the
// search view (search.js). Which view shows is the URL's hash (#/, #/jobs/<id>?…, #/search?…),
// so a reload or a link shows the same one. The token lives in this tab's sessionStorage only: never a cookie (another site
// could make the browser send one), never localStorage (it would outlive the tab), never a URL.
"use strict";

const TOKEN_KEY = "eventhorizon.token";
const WS_AUTH_PROTOCOL = "eventhorizon.bearer"; // a browser's WebSocket cannot send headers
// What an HTTP header and a WebSocket subprotocol both accept (RFC 9110 `token` characters).
const TOKEN_CHARACTERS = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token");
const tokenMessage = document.getElementById("token-message");
const forget = document.getElementById("forget");
const workspace = document.getElementById("workspace");
const form = document.getElementById("upload");
const input = document.getElementById("file");
const drop = document.getElementById("drop");
const send = document.getElementById("send");
const formatSelect = document.getElementById("format");
const autoOption = formatSelect.firstElementChild.cloneNode(true);
const transfer = document.getElementById("transfer");
const message = document.getElementById("message");
const jobsBox = document.getElementById("jobs");
const dropPrompt = document.getElementById("drop-text").textContent;
const noJobsNote = jobsBox.firstElementChild.cloneNode(true);
const cards = new Map(); // job_id -> {jobId, el, ws, samples, errorsShown, gone}
let currentUpload = null; // the XMLHttpRequest under way, if any

tokenForm.addEventListener("submit", (e) => { e.preventDefault(); useToken(tokenInput.value.trim()); });
forget.addEventListener("click", forgetToken);
input.addEventListener("change", () => pick(input.files[0]));
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; pick(input.files[0]); }
});
form.addEventListener("submit", (e) => { e.preventDefault(); upload(input.files[0]); });
addEventListener("hashchange", route);

// Once every script has run: the view the URL names may be the Search view (search.js).
addEventListener("DOMContentLoaded", () => { if (storedToken()) openWorkspace(); else askForToken(""); });

// --------------------------------------------------------------------------- the token

function storedToken() { return sessionStorage.getItem(TOKEN_KEY); }

function useToken(token) {
  if (!TOKEN_CHARACTERS.test(token)) {
    tokenMessage.textContent = "That is not a token: a token is one word, like eh_12_…";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  openWorkspace();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  askForToken("");
}

// A request answered 401: the token is unknown, malformed or was revoked.
function tokenRefused(detail) {
  sessionStorage.removeItem(TOKEN_KEY);
  askForToken(`The token did not work (${detail}). Enter another one.`);
}

function askForToken(problem) {
  closeWorkspace();
  tokenMessage.textContent = problem;
  tokenInput.value = "";
  tokenForm.hidden = false;
  tokenInput.focus();
}

function openWorkspace() {
  tokenForm.hidden = true;
  tokenMessage.textContent = "";
  workspace.hidden = false;
  forget.hidden = false;
  document.getElementById("nav").hidden = false;
  route();
  // The formats once the token has worked: a refused token makes one 401, not two.
  loadRecentJobs().then(loadFormats);
}

// Leaves nothing of the last token's jobs on the page, and nothing running for them.
function closeWorkspace() {
  workspace.hidden = true;
  forget.hidden = true;
  document.getElementById("nav").hidden = true;
  globalThis.Search?.hide();
  currentUpload?.abort();
  for (const card of cards.values()) stopFollowing(card);
  cards.clear();
  jobsBox.replaceChildren(noJobsNote.cloneNode(true));
  globalThis.Explore?.close();
  formatSelect.replaceChildren(autoOption.cloneNode(true));
  input.value = "";
  pick(undefined);
}

// --------------------------------------------------------------------------- views

// Shows the view the hash names: the Search view, a job's events over its card, or the jobs.
async function route() {
  if (workspace.hidden) return;
  const hash = location.hash.slice(1);
  const at = hash.indexOf("?");
  const [path, params] = at < 0 ? [hash, new URLSearchParams()]
    : [hash.slice(0, at), new URLSearchParams(hash.slice(at + 1))];
  const searching = path === "/search";
  for (const id of ["upload", "recent"]) document.getElementById(id).hidden = searching;
  document.getElementById("nav-search").toggleAttribute("aria-current", searching);
  document.getElementById("nav-jobs").toggleAttribute("aria-current", !searching);
  if (searching) { globalThis.Explore?.close(); Search.show(params); return; }
  Search.hide();
  const job = /^\/jobs\/([0-9a-f-]{36})$/.exec(path);
  if (!job) { globalThis.Explore?.close(); return; }
  const known = cards.get(job[1])?.job;
  const response = known ? null : await api(`/api/v1/jobs/${job[1]}`).catch(() => null);
  if (location.hash.slice(1) !== hash) return; // moved on meanwhile
  if (known || response?.ok) Explore.open(known || await response.json(), params);
  else if (response?.status !== 401) say("That job is not there (deleted, or not yours).", true);
}

// Goes to a view's hash; the same one again shows it again (a hash unchanged fires nothing).
function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

// fetch() with the token. A 401 for the token in use sends the page back to the token form;
// the caller gets the response either way and stops at `!response.ok`.
async function api(path, options = {}) {
  const token = storedToken();
  const headers = { ...options.headers, Authorization: `Bearer ${token}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && token === storedToken()) tokenRefused(await problemDetail(response));
  return response;
}

async function problemDetail(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || response.status;
  } catch (err) {
    return `${response.status} ${response.statusText}`.trim();
  }
}

// --------------------------------------------------------------------------- uploading

function pick(file) {
  document.getElementById("drop-text").textContent = file ? `${file.name} (${formatBytes(file.size)})` : dropPrompt;
  send.disabled = !file;
  say("");
}

// The formats an upload may name: `auto`, the built-in ones, then the token owner's own.
async function loadFormats() {
  const token = storedToken();
  if (!token) return;
  try {
    const response = await api("/api/v1/formats");
    if (!response.ok || storedToken() !== token) return; // the page still uploads with auto
    const { builtin, formats } = await response.json();
    if (storedToken() !== token) return;
    const groups = [["Built in", builtin.filter((name) => name !== "auto")],
                    ["Yours", formats.map((f) => f.name)]];
    const options = [autoOption.cloneNode(true)];
    for (const [label, names] of groups) {
      if (!names.length) continue;
      const group = document.createElement("optgroup");
      group.label = label;
      group.append(...names.map((name) => new Option(name, name)));
      options.push(group);
    }
    formatSelect.replaceChildren(...options);
  } catch (err) {
    // the page still uploads with auto
  }
}

function upload(file) {
  if (!file) return;
  const body = new FormData();
  body.append("format", formatSelect.value); // a field before the file: the API reads it first
  body.append("file", file, file.name);
  const token = storedToken();
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v1/files/upload");
  xhr.setRequestHeader("Authorization", `Bearer ${token}`);
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) setBar(transfer, e.loaded / e.total); };
  xhr.onload = () => {
    uploadEnded();
    const problem = xhr.response || {};
    if (xhr.status === 202) {
      say(`Uploaded ${file.name}.`); // its card below shows the job from here on
      showJob(xhr.response, true);
    } else if (xhr.status === 401 && token === storedToken()) {
      tokenRefused(problem.detail || problem.title || xhr.status);
    } else {
      say(`Upload refused: ${problem.detail || problem.title || xhr.status}`, true);
    }
  };
  xhr.onerror = () => { uploadEnded(); say("Upload failed: the server could not be reached.", true); };
  xhr.onabort = uploadEnded;
  currentUpload = xhr;
  transfer.hidden = false;
  setBar(transfer, 0);
  send.disabled = true;
  say(`Uploading ${file.name}…`);
  xhr.send(body);
}

function uploadEnded() {
  currentUpload = null;
  transfer.hidden = true;
  send.disabled = !input.files.length;
}

// --------------------------------------------------------------------------- job cards

async function loadRecentJobs() {
  const token = storedToken();
  try {
    const response = await api("/api/v1/jobs?limit=20");
    if (storedToken() !== token) return; // refused (the form is back), or forgotten meanwhile
    if (!response.ok) throw new Error(await problemDetail(response));
    const { jobs } = await response.json();
    if (storedToken() !== token) return;
    for (const job of jobs.reverse()) showJob(job, false);
  } catch (err) {
    say("Could not load recent jobs.", true);
  }
}

function showJob(job, isNew) {
  let card = cards.get(job.job_id);
  if (!card) {
    const el = document.getElementById("job-card").content.firstElementChild.cloneNode(true);
    el.dataset.jobId = job.job_id;
    jobsBox.querySelector(".muted")?.remove();
    jobsBox.prepend(el);
    card = { jobId: job.job_id, el, job, ws: null, samples: [], errorsShown: false, gone: false };
    cards.set(job.job_id, card);
    wireDelete(card);
    el.querySelector(".events").addEventListener("click", () => go(`#/jobs/${card.jobId}`));
  }
  render(card, job);
  if (!isFinal(job)) watch(card);
}

function watch(card, delay = 500) {
  if (card.ws || card.gone) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/jobs/${card.jobId}`,
    [WS_AUTH_PROTOCOL, storedToken()]);
  card.ws = ws;
  ws.onopen = () => { delay = 500; }; // back off anew after the next drop
  ws.onmessage = (e) => render(card, JSON.parse(e.data));
  ws.onclose = (e) => {
    card.ws = null;
    if (card.gone || e.code === 1000 || isFinalStatus(card.el.dataset.status)) return;
    if (e.code === 4404) { removeCard(card); return; } // deleted meanwhile
    setTimeout(() => rewatch(card, Math.min(delay * 2, 10000)), delay);
  };
}

// A dropped WebSocket (an API restart, say) and one refused for its token look the same to a
// page (1006), so ask for the job over HTTP first: that answers 401 when the token stopped
// working. The server sends the current state on reconnecting, so nothing is missed.
async function rewatch(card, delay) {
  if (card.gone) return;
  let response = null;
  try {
    response = await api(`/api/v1/jobs/${card.jobId}`);
  } catch (err) {
    // The API is out of reach for a moment: the WebSocket will find out when it is back.
  }
  if (card.gone || response?.status === 401) return;
  if (response?.status === 404) { removeCard(card); return; }
  if (response?.ok) render(card, await response.json());
  if (!isFinalStatus(card.el.dataset.status)) watch(card, delay);
}

function render(card, job) {
  const el = card.el;
  card.job = job;
  if (el.dataset.status !== job.status) showDeleteProblem(card, "");
  el.dataset.status = job.status;
  el.querySelector(".name").textContent = job.file_name;
  el.querySelector(".status").textContent = job.status;
  setBar(el.querySelector(".bar"), job.progress);
  el.querySelector(".lines").textContent = `${fmt(job.lines_processed)} / ${fmt(job.lines_total)}`;
  el.querySelector(".valid").textContent = fmt(job.lines_valid);
  el.querySelector(".invalid").textContent = fmt(job.lines_invalid);
  el.querySelector(".uploaded").textContent = job.created_at ? timeText(job.created_at) : "–";
  el.querySelector(".format").textContent = formatText(job);
  el.querySelector(".error").textContent = job.status === "failed" ? job.error || "failed" : "";
  // A worker holds a job while processing it, and the API refuses (409) to delete it then.
  el.querySelector(".deleting").hidden = job.status === "processing";
  if (job.status === "processing") askToDelete(card, false);
  updateSpeed(card, job);
  if (isFinal(job) && job.lines_invalid > 0 && !card.errorsShown) {
    card.errorsShown = true;
    showErrors(card);
  }
  globalThis.Explore?.jobUpdated(job); // the open view follows its job's events as they arrive
}

function updateSpeed(card, job) {
  const rate = card.el.querySelector(".rate");
  const eta = card.el.querySelector(".eta");
  if (job.status !== "processing") {
    if (isFinal(job)) eta.textContent = "–";
    if (isFinal(job) && job.started_at && job.completed_at) {
      const seconds = (Date.parse(job.completed_at) - Date.parse(job.started_at)) / 1000;
      if (seconds > 0) rate.textContent = `${fmt(Math.round(job.lines_processed / seconds))} lines/s`;
    }
    return;
  }
  const now = performance.now();
  card.samples.push([now, job.lines_processed]);
  while (card.samples.length > 2 && now - card.samples[0][0] > 10000) card.samples.shift();
  const [t0, n0] = card.samples[0];
  if (now - t0 < 300) return;
  const perSecond = (job.lines_processed - n0) / ((now - t0) / 1000);
  rate.textContent = `${fmt(Math.round(perSecond))} lines/s`;
  const left = job.lines_total - job.lines_processed;
  eta.textContent = perSecond > 0 ? formatDuration(left / perSecond) : "–";
}

async function showErrors(card, delay = 500) {
  let response;
  try {
    response = await api(`/api/v1/jobs/${card.jobId}/errors?limit=20`);
  } catch (err) {
    // The API is out of reach for a moment (a restart, say): ask again, less and less often.
    if (!card.gone) setTimeout(() => showErrors(card, Math.min(delay * 2, 10000)), delay);
    return;
  }
  if (!response.ok || card.gone) return;
  const { errors, next } = await response.json();
  const body = card.el.querySelector(".errors tbody");
  body.replaceChildren(...errors.map(({ line_no, reason }) => {
    const row = document.createElement("tr");
    row.append(cell(line_no), cell(reason));
    return row;
  }));
  if (next) {
    const row = document.createElement("tr");
    row.append(cell("…"), cell(`more in ${next}`));
    body.append(row);
  }
  card.el.querySelector(".errors").hidden = false;
}

function removeCard(card) {
  stopFollowing(card);
  globalThis.Explore?.jobGone(card.jobId);
  card.el.remove();
  cards.delete(card.jobId);
  if (!cards.size) jobsBox.replaceChildren(noJobsNote.cloneNode(true));
}

function stopFollowing(card) {
  card.gone = true;
  card.ws?.close();
}

// --------------------------------------------------------------------------- deleting

function wireDelete(card) {
  card.el.querySelector(".delete").addEventListener("click", () => askToDelete(card, true));
  card.el.querySelector(".no").addEventListener("click", () => askToDelete(card, false));
  card.el.querySelector(".yes").addEventListener("click", () => deleteJob(card));
}

function askToDelete(card, asking) {
  card.el.querySelector(".delete").hidden = asking;
  card.el.querySelector(".confirm").hidden = !asking;
  card.el.querySelector(".yes").disabled = false;
  if (asking) card.el.querySelector(".no").focus();
}

async function deleteJob(card) {
  card.el.querySelector(".yes").disabled = true;
  showDeleteProblem(card, "");
  let response;
  try {
    response = await api(`/api/v1/jobs/${card.jobId}`, { method: "DELETE" });
  } catch (err) {
    askToDelete(card, false);
    showDeleteProblem(card, "Not deleted: the server could not be reached.");
    return;
  }
  if (response.status === 401) return; // the token form is back
  if (response.status === 204 || response.status === 404) { removeCard(card); return; } // 404: gone already
  askToDelete(card, false);
  showDeleteProblem(card, `Not deleted: ${await problemDetail(response)}`);
}

function showDeleteProblem(card, text) { card.el.querySelector(".delete-problem").textContent = text; }

// --------------------------------------------------------------------------- helpers

function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
function isFinal(job) { return isFinalStatus(job.status); }
function isFinalStatus(status) { return status === "completed" || status === "failed"; }
function setBar(bar, fraction) { bar.firstElementChild.style.width = `${Math.round(Math.min(1, fraction) * 100)}%`; }
function say(text, isError = false) { message.textContent = text; message.classList.toggle("error", isError); }
// A job's file name, where its card is on the page (the recent 20), else its id's start.
function jobLabel(jobId) { return cards.get(jobId)?.job.file_name || `job ${jobId.slice(0, 8)}…`; }
function timeText(iso) { return new Date(iso).toISOString().slice(0, 19).replace("T", " "); }
// The format asked for, and the ones auto detected (with their lines) once the job has any.
function formatText(job) {
  const seen = Object.entries(job.formats || {});
  if (job.format !== "auto" || !seen.length) return job.format || "–";
  return `auto: ${seen.map(([name, lines]) => `${name} (${fmt(lines)})`).join(", ")}`;
}
function fmt(n) { return n == null ? "–" : Number(n).toLocaleString("en-US"); }
function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function formatDuration(seconds) {
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
}
