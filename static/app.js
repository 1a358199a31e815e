// Event Horizon's page: upload a file, then watch its job live over the WebSocket.
"use strict";

const form = document.getElementById("upload");
const input = document.getElementById("file");
const drop = document.getElementById("drop");
const send = document.getElementById("send");
const transfer = document.getElementById("transfer");
const message = document.getElementById("message");
const jobsBox = document.getElementById("jobs");
const dropPrompt = document.getElementById("drop-text").textContent;
const cards = new Map(); // job_id -> {el, ws, samples}

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

loadRecentJobs();

function pick(file) {
  document.getElementById("drop-text").textContent = file ? `${file.name} (${formatBytes(file.size)})` : dropPrompt;
  send.disabled = !file;
  say("");
}

function upload(file) {
  if (!file) return;
  const body = new FormData();
  body.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v1/files/upload");
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) setBar(transfer, e.loaded / e.total); };
  xhr.onload = () => {
    transfer.hidden = true;
    send.disabled = false;
    if (xhr.status === 202) {
      say(`Uploaded ${file.name}.`); // its card below shows the job from here on
      showJob(xhr.response, true);
    } else {
      const problem = xhr.response || {};
      say(`Upload refused: ${problem.detail || problem.title || xhr.status}`, true);
    }
  };
  xhr.onerror = () => { transfer.hidden = true; send.disabled = false; say("Upload failed: the server could not be reached.", true); };
  transfer.hidden = false;
  setBar(transfer, 0);
  send.disabled = true;
  say(`Uploading ${file.name}…`);
  xhr.send(body);
}

async function loadRecentJobs() {
  try {
    const response = await fetch("/api/v1/jobs?limit=20");
    const { jobs } = await response.json();
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
    card = { el, ws: null, samples: [], errorsShown: false };
    cards.set(job.job_id, card);
  }
  render(card, job);
  if (!isFinal(job)) watch(job.job_id, card);
}

function watch(jobId, card, delay = 500) {
  if (card.ws) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/jobs/${jobId}`);
  card.ws = ws;
  ws.onopen = () => { delay = 500; }; // back off anew after the next drop
  ws.onmessage = (e) => render(card, JSON.parse(e.data));
  ws.onclose = (e) => {
    card.ws = null;
    // A dropped connection (not the server's normal close after the final state): reconnect;
    // the server sends the current state first, so nothing is missed.
    if (e.code !== 1000 && e.code !== 4404 && card.el.dataset.status !== "completed" && card.el.dataset.status !== "failed") {
      setTimeout(() => watch(jobId, card, Math.min(delay * 2, 10000)), delay);
    }
  };
}

function render(card, job) {
  const el = card.el;
  el.dataset.status = job.status;
  el.querySelector(".name").textContent = job.file_name;
  el.querySelector(".status").textContent = job.status;
  setBar(el.querySelector(".bar"), job.progress);
  el.querySelector(".lines").textContent = `${fmt(job.lines_processed)} / ${fmt(job.lines_total)}`;
  el.querySelector(".valid").textContent = fmt(job.lines_valid);
  el.querySelector(".invalid").textContent = fmt(job.lines_invalid);
  el.querySelector(".error").textContent = job.status === "failed" ? job.error || "failed" : "";
  updateSpeed(card, job);
  if (isFinal(job) && job.lines_invalid > 0 && !card.errorsShown) {
    card.errorsShown = true;
    showErrors(el, job.job_id);
  }
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

async function showErrors(el, jobId, delay = 500) {
  let response;
  try {
    response = await fetch(`/api/v1/jobs/${jobId}/errors?limit=20`);
  } catch (err) {
    // The API is out of reach for a moment (a restart, say): ask again, less and less often.
    setTimeout(() => showErrors(el, jobId, Math.min(delay * 2, 10000)), delay);
    return;
  }
  if (!response.ok) return;
  const { errors, next } = await response.json();
  const body = el.querySelector(".errors tbody");
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
  el.querySelector(".errors").hidden = false;
}

function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
function isFinal(job) { return job.status === "completed" || job.status === "failed"; }
function setBar(bar, fraction) { bar.firstElementChild.style.width = `${Math.round(Math.min(1, fraction) * 100)}%`; }
function say(text, isError = false) { message.textContent = text; message.classList.toggle("error", isError); }
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
