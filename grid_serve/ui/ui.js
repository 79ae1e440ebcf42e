// grid-serve's page: polls the app's own /v1 routes and draws what they say.
//
// No framework and no build step: the file is served as it is written. Rows are kept per key
// and only their changed text is rewritten, so a refresh every second neither flickers nor
// loses a hover, a focus or a half-armed button. Strings from the API (task names, labels,
// reasons) only ever reach the page as text nodes, never as HTML.

const BASE = location.pathname.replace(/\/ui\/?$/, "/");
const TICK_MS = 1000;
const SHARING_EVERY = 2; // ticks
const PLACEMENTS_EVERY = 5; // ticks
const IDLE_EVERY = 5; // ticks between looks at jobs and decisions while nothing runs or waits
const CANCEL_ARM_MS = 4000;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#3b82f6", "#10b981", "#f59e0b", "#8b5cf6", "#ef4444", "#14b8a6", "#ec4899", "#84cc16"];
const OTHER_COLOUR = "#94a3b8";
const PRIORITIES = ["critical", "high", "normal", "low"];

const state = {
  nodes: [],
  jobs: [],
  sort: { key: "name", descending: false },
  filter: "",
  activeOnly: false,
  selectedJob: null,
  selectedJobSettled: false, // its final state and decisions are shown: no need to ask again
  selectedPending: null, // its forecast, as GET /v1/jobs/{id} last gave it (the list's jobs carry none)
  mergedAt: new Map(), // job id -> when a newer answer for it (a cancel's) was shown: older lists must not undo it
  decisions: null, // the last answers, drawn again every tick so ages and lease ends keep counting
  sharing: null,
  serverSkew: 0, // server clock minus ours, seconds (lease ends and ages are server times)
  tick: 0,
};

// ------------------------------------------------------------------ the API, with a token if asked

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

const auth = {
  token: sessionStorage.getItem("grid-token"),
  asking: null, // one prompt, however many requests got 401 at once
};

/** Owner keys of the jobs this tab submitted: without a token, only their holder may cancel them. */
const ownerKeys = {
  all() { return JSON.parse(sessionStorage.getItem("grid-owner-keys") || "{}"); },
  remember(jobId, key) {
    if (!key) return;
    sessionStorage.setItem("grid-owner-keys", JSON.stringify({ ...this.all(), [jobId]: key }));
  },
  headers(jobId) {
    const key = this.all()[jobId];
    return key ? { "X-Grid-Owner-Key": key } : {};
  },
};

/** Ask for the token once; a second ask says the first one was refused. */
function askForToken(refused) {
  if (!auth.asking) {
    auth.asking = new Promise((resolve) => {
      const dialog = document.getElementById("token-dialog");
      const input = document.getElementById("token-input");
      document.getElementById("token-why").textContent = refused
        ? "The API refused that token (401). Enter another; it is kept for this tab only."
        : "The API answered 401 Unauthorized. The token is sent as a Bearer header and kept for this tab only.";
      input.value = "";
      dialog.addEventListener("close", () => {
        auth.token = input.value.trim() || null;
        if (auth.token) sessionStorage.setItem("grid-token", auth.token);
        auth.asking = null;
        resolve(auth.token);
      }, { once: true });
      dialog.showModal();
    });
  }
  return auth.asking;
}

/** fetch() against the app, with the Bearer token once one is known; a 401 asks for it. */
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(BASE + path, { ...options, headers });
    if (response.status !== 401 || attempt >= 3) return response;
    await askForToken(Boolean(auth.token));
  }
}

/** The JSON of a 2xx answer; otherwise an ApiError carrying the API's own message. */
async function json(response) {
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return body;
}

const get = async (path) => json(await api(path));

// ------------------------------------------------------------------ small DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Write only what changed: unchanged text is not touched, so nothing reflows for it. */
function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

function setAttr(node, name, value) {
  if (value === null || value === undefined) node.removeAttribute(name);
  else if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
}

const byId = (id) => document.getElementById(id);

/** Make `tbody` show one row per item, in order, reusing the rows of keys it already shows. */
function syncRows(tbody, items, keyOf, create, update) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  let previous = null;
  for (const item of items) {
    const key = keyOf(item);
    let row = existing.get(key);
    if (row) existing.delete(key);
    else {
      row = create(item);
      row.dataset.key = key;
    }
    update(row, item);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== wanted) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
}

// ------------------------------------------------------------------ formatting

const serverNow = () => Date.now() / 1000 + state.serverSkew;

function amount(value) {
  if (value === null || value === undefined) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

// an amount of one resource as grid-serve's text says it (`queues.amount_text`): memory in MB
function resourceAmount(name, value) {
  if (name !== "memory" || value === null || value === undefined) return amount(value);
  const megabytes = value / 2 ** 20;
  return `${megabytes >= 10 || megabytes === 0 ? Math.round(megabytes) : megabytes.toPrecision(2)} MB`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

const percent = (value) => (value === null || value === undefined ? "–" : `${Math.round(value)}%`);

function nodeState(node) {
  if (!node.alive) return "dead";
  return node.stale ? "stale" : "alive";
}

function gpuUse(node) {
  const figures = (node.gpus || []).map((gpu) => gpu.utilization_pct).filter((v) => v !== null && v !== undefined);
  return figures.length ? figures.reduce((a, b) => a + b, 0) / figures.length : null;
}

const reservedShare = (node, resource) => {
  const total = (node.resources_total || {})[resource] || 0;
  return total ? ((node.reserved || {})[resource] || 0) / total : null;
};

function colourOf(names) {
  const sorted = [...names].sort();
  return (name) => {
    const index = sorted.indexOf(name);
    return index >= 0 && index < PALETTE.length ? PALETTE[index] : OTHER_COLOUR;
  };
}

// ------------------------------------------------------------------ nodes

const NODE_SORTS = {
  name: (n) => n.name,
  state: (n) => ({ dead: 0, stale: 1, alive: 2 })[nodeState(n)],
  cpu: (n) => n.cpu_percent ?? -1,
  memory: (n) => n.memory_percent ?? -1,
  gpu: (n) => gpuUse(n) ?? -1,
  reserved: (n) => reservedShare(n, "CPU") ?? -1,
  in_flight: (n) => n.in_flight,
};

function meterCell(kind) {
  const fill = el("div", { class: "fill" });
  return el("td", {}, el("div", { class: `meter ${kind}` }, el("div", { class: "track" }, fill), el("span", { class: "val" })));
}

function updateMeter(td, value, title) {
  const meter = td.firstChild;
  const fill = meter.firstChild.firstChild;
  const width = value === null || value === undefined ? "0%" : `${Math.min(100, Math.max(0, value)).toFixed(1)}%`;
  if (fill.style.width !== width) fill.style.width = width;
  meter.classList.toggle("hot", value !== null && value !== undefined && value >= 90);
  setText(meter.lastChild, percent(value));
  setAttr(td, "title", title);
}

function createNodeRow() {
  return el("tr", {},
    el("td", {}, el("span", { class: "state" })),
    el("td", {}, el("span", { class: "mono name" }), el("span", { class: "chip head", hidden: "" }, "head")),
    el("td", { class: "mono" }),
    meterCell("cpu"), meterCell("mem"), meterCell("gpu"),
    el("td", { class: "num" }), el("td", { class: "num" }), el("td", { class: "num" }),
    el("td", {}, el("div", { class: "labels" })));
}

function updateNodeRow(row, node) {
  const cells = row.cells;
  const status = nodeState(node);
  const badge = cells[0].firstChild;
  badge.className = `state ${status}`;
  setText(badge, status);
  setText(cells[1].firstChild, node.name);
  cells[1].lastChild.hidden = !node.is_head;
  setAttr(cells[1], "title", node.node_id);
  setText(cells[2], node.address);
  const cores = node.cpu_count ? `${node.cpu_count} cores` : "";
  updateMeter(cells[3], node.cpu_percent, `CPU ${percent(node.cpu_percent)} ${cores}`.trim());
  const memory = node.memory_total_mb ? `${Math.round(node.memory_used_mb)} / ${Math.round(node.memory_total_mb)} MB` : "";
  updateMeter(cells[4], node.memory_percent, memory);
  const gpus = node.gpus || [];
  updateMeter(cells[5], gpuUse(node), gpus.length ? gpus.map((g) => `${g.index}: ${g.name} ${percent(g.utilization_pct)}`).join("\n")
    : node.gpu_note || "no GPU figures");
  for (const [index, resource] of [[6, "CPU"], [7, "GPU"]]) {
    const total = (node.resources_total || {})[resource] || 0;
    const reserved = (node.reserved || {})[resource] || 0;
    setText(cells[index], total ? `${amount(reserved)} / ${amount(total)}` : "–");
  }
  setText(cells[8], node.in_flight);
  const labels = Object.entries(node.labels || {}).filter(([key]) => key !== "ray.io/node-id"); // the id is the name's tooltip
  const text = labels.map(([k, v]) => `${k}=${v}`);
  const holder = cells[9].firstChild;
  if (holder.dataset.labels !== text.join("\n")) {
    holder.dataset.labels = text.join("\n");
    holder.replaceChildren(...text.map((label) => el("span", { class: "chip" }, label)));
    setAttr(cells[9], "title", text.join("\n") || null);
  }
}

function nodeMatches(node, filter) {
  if (!filter) return true;
  const haystack = [node.name, node.address, node.node_id, nodeState(node),
    ...Object.entries(node.labels || {}).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
  return filter.split(/\s+/).every((word) => haystack.includes(word));
}

function renderNodes() {
  const { key, descending } = state.sort;
  const measure = NODE_SORTS[key];
  const shown = state.nodes.filter((node) => nodeMatches(node, state.filter)).sort((a, b) => {
    const [x, y] = [measure(a), measure(b)];
    const order = x < y ? -1 : x > y ? 1 : 0;
    return (descending ? -order : order) || a.name.localeCompare(b.name);
  });
  syncRows(byId("nodes-body"), shown, (node) => node.node_id, createNodeRow, updateNodeRow);
  byId("nodes-empty").hidden = shown.length > 0 || state.nodes.length === 0;
  setText(byId("nodes-count"), shown.length === state.nodes.length ? state.nodes.length : `${shown.length} of ${state.nodes.length}`);
  for (const th of document.querySelectorAll("#nodes-table th")) {
    const button = th.querySelector("button[data-sort]");
    setAttr(th, "aria-sort", button && button.dataset.sort === key ? (descending ? "descending" : "ascending") : null);
  }
}

function setSort(key) {
  const descending = key === state.sort.key ? !state.sort.descending : !["name", "state"].includes(key);
  state.sort = { key, descending };
  byId("node-sort").value = key;
  renderNodes();
}

function renderSummary(cluster) {
  const alive = cluster.nodes.filter((n) => n.alive && !n.stale).length;
  setText(byId("sum-nodes"), `${alive} / ${cluster.nodes.length}`);
  setText(byId("sum-queued"), cluster.queued);
  setText(byId("sum-jobs"), cluster.jobs_running);
  for (const [id, resource] of [["sum-cpu", "CPU"], ["sum-gpu", "GPU"]]) {
    const total = cluster.nodes.reduce((sum, n) => sum + ((n.resources_total || {})[resource] || 0), 0);
    const reserved = cluster.nodes.reduce((sum, n) => sum + ((n.reserved || {})[resource] || 0), 0);
    setText(byId(id), total ? `${amount(reserved)} / ${amount(total)}` : "–");
  }
  const names = byId("node-names");
  const wanted = cluster.nodes.map((n) => n.name).sort().join("\n");
  if (names.dataset.names !== wanted) {
    names.dataset.names = wanted;
    names.replaceChildren(...cluster.nodes.map((n) => el("option", { value: n.name })));
  }
}

// ------------------------------------------------------------------ queue

function renderQueue(cluster) {
  const levels = Object.fromEntries((cluster.queue || []).map((level) => [level.priority.toLowerCase(), level]));
  const rows = PRIORITIES.map((priority) => ({ ...(levels[priority] || { tasks: 0, oldest_wait_s: null }), priority }));
  syncRows(byId("queue-body"), rows, (row) => row.priority,
    (row) => el("tr", {}, el("td", {}, el("span", { class: `prio ${row.priority}` }, row.priority)), el("td", { class: "num" }), el("td", { class: "num" })),
    (tr, row) => {
      setText(tr.cells[1], row.tasks);
      setText(tr.cells[2], row.tasks ? duration(row.oldest_wait_s) : "–");
    });
}

// Each queue's work and where it stands in fair share (GET /v1/cluster's `queues`).
function renderQueues(cluster) {
  const queues = cluster.queues || [];
  byId("queues-empty").hidden = queues.length > 0;
  syncRows(byId("queues-body"), queues, (queue) => queue.name,
    (queue) => el("tr", {}, el("td", {}, queue.name), ...[1, 2, 3, 4, 5, 6].map(() => el("td", { class: "num" }))),
    (tr, queue) => {
      const waiting = Object.values(queue.waiting).reduce((sum, count) => sum + count, 0);
      setText(tr.cells[1], waiting);
      setText(tr.cells[2], queue.running);
      setText(tr.cells[3], queue.dominant ? `${Math.round(queue.share * 100)}% ${queue.dominant}` : "0%");
      setAttr(tr.cells[3], "title", Object.entries(queue.holds).map(([name, held]) => `${name} ${amount(held)}`).join(", ") || "holds nothing");
      setText(tr.cells[4], `${Math.round(queue.fair_share * 100)}%`);
      setAttr(tr.cells[4], "title", `weight ${queue.weight}`);
      setText(tr.cells[5], waiting ? duration(queue.oldest_wait_s) : "–");
      const quota = Object.entries(queue.quota || {});
      setText(tr.cells[6], quota.length ? quota.map(([name, owed]) => `${resourceAmount(name, owed)} ${name}`).join(", ") : "–");
      const borrowed = Object.entries(queue.borrowed || {});
      setAttr(tr.cells[6], "title", borrowed.length ? `borrows ${borrowed.map(([name, held]) => `${resourceAmount(name, held)} ${name}`).join(", ")}` : "borrows nothing");
    });
}

// ------------------------------------------------------------------ jobs

const isActive = (job) => job.state === "running" || job.state === "queued";

function progressCell() {
  const track = el("div", { class: "track" },
    el("div", { class: "done" }), el("div", { class: "failed" }), el("div", { class: "cancelled" }), el("div", { class: "running" }));
  return el("td", {}, el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0" }, track, el("span", { class: "val" })));
}

function updateProgress(td, job) {
  const [track, label] = td.firstChild.children;
  const parts = [job.succeeded, job.failed, job.cancelled, job.running];
  parts.forEach((count, index) => {
    const width = `${((100 * count) / Math.max(1, job.total)).toFixed(2)}%`;
    if (track.children[index].style.width !== width) track.children[index].style.width = width;
  });
  const finished = job.succeeded + job.failed + job.cancelled;
  setText(label, `${finished}/${job.total}`);
  setAttr(td.firstChild, "aria-valuemax", job.total);
  setAttr(td.firstChild, "aria-valuenow", finished);
  setAttr(td.firstChild, "aria-label", `job ${job.job_id}: ${finished} of ${job.total} tasks finished`);
  setAttr(td, "title", `${job.succeeded} succeeded, ${job.failed} failed, ${job.cancelled} cancelled, ${job.running} running, ${job.queued} queued`);
}

const NOT_PLACED = "(not placed)"; // the API's name for tasks that ended without a node (cancelled while waiting)

/** Where a job's tasks ran, node by node; tasks that never got a node come last, apart. */
function perNodeCell(td, perNode) {
  const entries = Object.entries(perNode).filter(([node]) => node !== NOT_PLACED);
  const text = Object.entries(perNode).map(([node, count]) => `${node}=${count}`).join(" ");
  if (td.dataset.text === text) return;
  td.dataset.text = text;
  const parts = [];
  for (const [node, count] of entries) {
    if (parts.length) parts.push(" · ");
    parts.push(el("span", { "data-node": node }, `${node} `, el("b", {}, String(count))));
  }
  if (perNode[NOT_PLACED]) parts.push(el("span", { class: "muted" }, `${parts.length ? " · " : ""}never placed ${perNode[NOT_PLACED]}`));
  td.replaceChildren(...parts);
  setAttr(td, "title", text || null);
}

function cancelButton(jobId) {
  const button = el("button", { type: "button", class: "danger", "aria-label": `Cancel job ${jobId}` }, "Cancel");
  button.addEventListener("click", () => armedCancel(button, jobId));
  return button;
}

/** Two clicks cancel: the first arms the button for a few seconds, so a stray click costs nothing. */
async function armedCancel(button, jobId) {
  if (!button.dataset.armed) {
    button.dataset.armed = "1";
    setText(button, "Confirm");
    setAttr(button, "aria-label", `Confirm cancelling job ${jobId}`);
    setTimeout(() => {
      delete button.dataset.armed;
      setText(button, "Cancel");
      setAttr(button, "aria-label", `Cancel job ${jobId}`);
    }, CANCEL_ARM_MS);
    return;
  }
  button.disabled = true;
  try {
    const job = await json(await api(`v1/jobs/${encodeURIComponent(jobId)}`,
                                     { method: "DELETE", headers: ownerKeys.headers(jobId) }));
    mergeJob(job);
    showFormMessage(`job ${jobId}: ${job.state}`);
  } catch (error) {
    showFormError(`cancel ${jobId}: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function createJobRow(job) {
  const open = el("button", { type: "button", class: "link", "aria-label": `Show job ${job.job_id}` }, job.job_id);
  open.addEventListener("click", () => selectJob(job.job_id));
  return el("tr", { "data-job-id": job.job_id },
    el("td", {}, open), el("td", { class: "mono" }), el("td", {}), el("td", {}, el("span", { class: "prio" })),
    el("td", {}, el("span", { class: "state" })), progressCell(), el("td", { class: "pernode" }), el("td", {}, cancelButton(job.job_id)));
}

function updateJobRow(row, job) {
  const cells = row.cells;
  setText(cells[1], job.task);
  setText(cells[2], job.strategy.toLowerCase());
  const priority = job.priority.toLowerCase();
  cells[3].firstChild.className = `prio ${priority}`;
  setText(cells[3].firstChild, priority);
  cells[4].firstChild.className = `state ${job.state}`;
  setText(cells[4].firstChild, job.state);
  setAttr(cells[4], "title", job.error || null);
  updateProgress(cells[5], job);
  perNodeCell(cells[6], job.per_node || {});
  cells[7].firstChild.hidden = !isActive(job);
}

function mergeJob(job) {
  state.mergedAt.set(job.job_id, performance.now());
  const index = state.jobs.findIndex((j) => j.job_id === job.job_id);
  if (index >= 0) state.jobs[index] = job;
  else state.jobs.push(job);
  renderJobs();
  if (state.selectedJob === job.job_id) renderJobFacts(job);
}

function renderJobs() {
  const shown = state.jobs.filter((job) => !state.activeOnly || isActive(job))
    .sort((a, b) => b.submitted_at - a.submitted_at).slice(0, 100);
  syncRows(byId("jobs-body"), shown, (job) => job.job_id, createJobRow, updateJobRow);
  byId("jobs-empty").hidden = shown.length > 0;
  const active = state.jobs.filter(isActive).length;
  setText(byId("jobs-count"), `${active} active, ${state.jobs.length} in all`);
}

// ------------------------------------------------------------------ one job

function selectJob(jobId) {
  if (location.hash !== `#job=${jobId}`) history.replaceState(null, "", `#job=${encodeURIComponent(jobId)}`);
  state.selectedJob = jobId;
  state.selectedJobSettled = false;
  state.selectedPending = null;
  byId("job-detail").hidden = false;
  setText(byId("job-title"), jobId);
  byId("job-decisions-body").replaceChildren();
  byId("job-facts").replaceChildren();
  byId("job-chart").replaceChildren();
  refreshJob().catch(showPollError);
  byId("job-detail").scrollIntoView({ block: "nearest" });
}

function closeJob() {
  state.selectedJob = null;
  byId("job-detail").hidden = true;
  history.replaceState(null, "", location.pathname + location.search);
}

async function refreshJob() {
  const jobId = state.selectedJob;
  if (!jobId) return;
  let job;
  let decisions;
  try {
    [job, decisions] = await Promise.all([
      get(`v1/jobs/${encodeURIComponent(jobId)}`),
      get(`v1/decisions?limit=100&job_id=${encodeURIComponent(jobId)}`),
    ]);
  } catch (error) {
    if (error.status === 404 && state.selectedJob === jobId) {
      byId("job-facts").replaceChildren(el("dt", {}, "gone"), el("dd", {}, error.message));
      state.selectedJob = null; // stop asking for it
      return;
    }
    throw error;
  }
  if (state.selectedJob !== jobId) return;
  state.selectedPending = job.pending || null;
  renderJobFacts(job);
  renderJobDecisions(decisions);
  state.selectedJobSettled = !isActive(job);
}

function renderJobFacts(job) {
  const finished = job.finished_at ? job.finished_at - job.submitted_at : serverNow() - job.submitted_at;
  const facts = [
    ["state", job.state], ["task", job.task], ["strategy", job.strategy.toLowerCase()], ["priority", job.priority.toLowerCase()],
    ["queue", job.queue || "default"],
    ["tasks", `${job.total}: ${job.succeeded} ok, ${job.failed} failed, ${job.cancelled} cancelled, ${job.running} running, ${job.queued} queued`],
    [job.finished_at ? "took" : "running for", duration(finished)],
  ];
  if (job.error) facts.push(["error", job.error]);
  const pending = job.queued > 0 ? (job.pending || state.selectedPending) : null;
  if (pending) facts.push(...pendingFacts(pending));
  const list = byId("job-facts");
  const text = JSON.stringify(facts);
  if (list.dataset.text !== text) {
    list.dataset.text = text;
    list.replaceChildren(...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  }
  byId("job-cancel").hidden = !isActive(job);
  drawNodeBars(byId("job-chart"), job.per_node || {});
}

// Why a job's queued tasks wait and when they should run (GET /v1/jobs/{id}'s `pending`).
function pendingFacts(pending) {
  const ahead = Object.entries(pending.ahead || {}).map(([priority, count]) => `${count} ${priority}`).join(", ");
  const when = (seconds) => (seconds === undefined || seconds === null ? "unknown" : `in ${duration(seconds)}`);
  const facts = [
    ["in the queue", `next task is number ${pending.position + 1} (ahead: ${ahead || "nothing"}); ${pending.waiting} waiting, ${pending.held_back} held back`],
    ["why not yet", pending.reason || "placed at the next drain"],
    ...(pending.fair_share ? [["fair share", pending.fair_share]] : []),
    ["expected", `start ${when(pending.expected_start_s)}, end ${when(pending.expected_end_s)}`],
  ];
  if (pending.note) facts.push(["forecast", pending.note]);
  return facts;
}

function renderJobDecisions(answer) {
  state.serverSkew = answer.now - Date.now() / 1000;
  const shown = answer.decisions.length;
  setText(byId("job-decisions-count"), answer.job_placed > shown ? `latest ${shown} of ${answer.job_placed}` : shown);
  syncRows(byId("job-decisions-body"), answer.decisions, (d) => d.task_id,
    () => el("tr", {}, el("td", { class: "mono" }), el("td", {}), el("td", { class: "num" }), el("td", { class: "why" })),
    (row, d) => {
      setText(row.cells[0], d.task_id);
      setText(row.cells[1], d.node + (d.borrowed ? " (borrowed)" : ""));
      setText(row.cells[2], duration(d.waited_s));
      whyCell(row.cells[3], d.reasons, true);
    });
}

function whyCell(td, reasons, all) {
  const text = reasons.join("\n");
  if (td.dataset.text === text) return;
  td.dataset.text = text;
  const [first, ...rest] = reasons;
  td.replaceChildren(el("span", {}, first || ""), ...(all ? rest.map((r) => el("span", { class: "more" }, r)) : []));
  setAttr(td, "title", text);
}

/** Horizontal bars, one per node: where a job's tasks ran. */
function drawNodeBars(target, perNode) {
  const entries = Object.entries(perNode).filter(([node]) => node !== NOT_PLACED).sort((a, b) => a[0].localeCompare(b[0]));
  const text = JSON.stringify(entries);
  if (target.dataset.text === text) return;
  target.dataset.text = text;
  const rowHeight = 22;
  const width = target.clientWidth || 360;
  const labelWidth = 96;
  const countWidth = 44;
  const height = Math.max(1, entries.length) * rowHeight + 4;
  const most = Math.max(1, ...entries.map(([, n]) => n));
  const colour = colourOf(entries.map(([node]) => node));
  target.setAttribute("viewBox", `0 0 ${width} ${height}`);
  target.setAttribute("height", height);
  const parts = entries.length ? [] : [svg("text", { x: 0, y: 15 }, "no task has finished yet")];
  entries.forEach(([node, count], index) => {
    const y = index * rowHeight + 4;
    const barWidth = ((width - labelWidth - countWidth) * count) / most;
    parts.push(svg("text", { x: 0, y: y + 12, class: "barlabel" }, node));
    parts.push(svg("rect", { x: labelWidth, y: y + 2, width: Math.max(1, barWidth), height: rowHeight - 8, rx: 2, fill: colour(node) }));
    parts.push(svg("text", { x: labelWidth + barWidth + 6, y: y + 12 }, String(count)));
  });
  target.replaceChildren(...parts);
}

// ------------------------------------------------------------------ recent decisions

function renderDecisions(answer) {
  const now = serverNow();
  syncRows(byId("decisions-body"), answer.decisions, (d) => d.task_id,
    () => el("tr", {}, el("td", { class: "num" }), el("td", { class: "mono" }), el("td", {}), el("td", {}),
      el("td", {}, el("span", { class: "prio" })), el("td", { class: "why" })),
    (row, d) => {
      setText(row.cells[0], duration(now - d.at));
      setText(row.cells[1], d.task_id);
      setText(row.cells[2], d.node + (d.borrowed ? " (borrowed)" : ""));
      setText(row.cells[3], d.strategy.toLowerCase());
      const priority = d.priority.toLowerCase();
      row.cells[4].firstChild.className = `prio ${priority}`;
      setText(row.cells[4].firstChild, priority);
      whyCell(row.cells[5], d.reasons, false);
    });
  byId("decisions-empty").hidden = answer.decisions.length > 0;
}

// ------------------------------------------------------------------ placements chart

/** Stacked columns: tasks placed per node in each bucket; the busiest nodes get colours. */
function drawPlacements(history) {
  const target = byId("placements-chart");
  const width = target.clientWidth || 600;
  const height = 180;
  const left = 34;
  const bottom = 18;
  const totals = Object.entries(history.per_node).map(([node, counts]) => [node, counts.reduce((a, b) => a + b, 0)]);
  const named = totals.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, PALETTE.length).map(([n]) => n);
  const colour = colourOf(named);
  const buckets = Object.values(history.per_node)[0]?.length || Math.round(600 / history.bucket_s);
  const stacks = Array.from({ length: buckets }, () => []);
  for (const [node, counts] of Object.entries(history.per_node)) {
    counts.forEach((count, i) => { if (count) stacks[i].push([named.includes(node) ? node : "other", count]); });
  }
  const most = Math.max(1, ...stacks.map((stack) => stack.reduce((sum, [, n]) => sum + n, 0)));
  const top = niceCeiling(most);
  const slot = (width - left) / buckets;
  const scale = (height - bottom - 6) / top;
  const parts = [
    svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }),
    svg("line", { x1: left, y1: 6, x2: left, y2: height - bottom, class: "axis" }),
    svg("text", { x: left - 4, y: 14, "text-anchor": "end" }, String(top)),
    svg("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, "0"),
  ];
  const minutes = Math.round((buckets * history.bucket_s) / 60);
  for (const [fraction, label] of [[0, `-${minutes}m`], [0.5, `-${minutes / 2}m`], [1, "now"]]) {
    parts.push(svg("text", { x: left + fraction * (width - left), y: height - 4, "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle" }, label));
  }
  stacks.forEach((stack, i) => {
    let y = height - bottom;
    for (const [node, count] of stack.sort((a, b) => a[0].localeCompare(b[0]))) {
      const h = count * scale;
      y -= h;
      const rect = svg("rect", { x: left + i * slot + 1, y, width: Math.max(1, slot - 2), height: h, fill: node === "other" ? OTHER_COLOUR : colour(node) });
      rect.append(svg("title", {}, `${node}: ${count}`));
      parts.push(rect);
    }
  });
  target.setAttribute("viewBox", `0 0 ${width} ${height}`);
  target.replaceChildren(...parts);
  const legend = [...named.sort().map((node) => [node, colour(node)])];
  if (Object.keys(history.per_node).length > named.length) legend.push(["other", OTHER_COLOUR]);
  const counts = Object.fromEntries(totals);
  byId("placements-legend").replaceChildren(...legend.map(([node, fill]) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = fill; // through the CSSOM: the page's CSP allows no inline style attribute
    return el("li", {}, swatch, `${node} ${node === "other" ? "" : counts[node] ?? 0}`);
  }));
}

function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// ------------------------------------------------------------------ resource sharing

const unit = (resource) => ({ cpu: "CPU", gpu: "GPU", memory: "GB" })[resource.toLowerCase()] || resource;

function renderSharing(sharing) {
  setText(byId("sharing-policy"), sharing.enabled ? `policy ${sharing.policy}` : "off (no sharing in the cluster config)");
  const now = serverNow();
  syncRows(byId("alloc-body"), sharing.allocations, (a) => a.id,
    () => el("tr", {}, el("td", {}), el("td", {}), el("td", { class: "num" }), el("td", {}, el("span", { class: "prio" })), el("td", {}), el("td", { class: "num" })),
    (row, a) => {
      setText(row.cells[0], a.borrower);
      setText(row.cells[1], a.donor || "–");
      setText(row.cells[2], `${amount(a.amount)} ${unit(a.resource)}`);
      row.cells[3].firstChild.className = `prio ${a.priority.toLowerCase()}`;
      setText(row.cells[3].firstChild, a.priority.toLowerCase());
      setText(row.cells[4], a.state + (a.in_flight ? ` (${a.in_flight} running)` : ""));
      setText(row.cells[5], a.expires_at ? duration(a.expires_at - now) : "–");
      setAttr(row, "title", a.reason || null);
    });
  byId("alloc-empty").hidden = sharing.allocations.length > 0;
  syncRows(byId("pending-body"), sharing.pending, (a) => a.id,
    () => el("tr", {}, el("td", {}), el("td", { class: "num" }), el("td", {}, el("span", { class: "prio" })), el("td", { class: "num" }), el("td", { class: "num" })),
    (row, a) => {
      setText(row.cells[0], a.borrower);
      setText(row.cells[1], `${amount(a.amount)} ${unit(a.resource)}`);
      row.cells[2].firstChild.className = `prio ${a.priority.toLowerCase()}`;
      setText(row.cells[2].firstChild, a.priority.toLowerCase());
      setText(row.cells[3], duration(now - a.requested_at));
      setText(row.cells[4], duration(a.timeout_at - now));
      setAttr(row, "title", a.reason || null);
    });
  byId("pending-empty").hidden = sharing.pending.length > 0;
}

// ------------------------------------------------------------------ the form

function showFormError(message) {
  const box = byId("f-error");
  box.hidden = false;
  setText(box, message);
}

function showFormMessage(message) {
  byId("f-error").hidden = true;
  setText(byId("f-result"), message);
}

/** The job as the form describes it. Values go to the API as typed (a count that is not a
 *  number stays a string), so the answer is the API's own validation message. */
function formJob() {
  const form = byId("submit-form");
  const data = new FormData(form);
  const countText = String(data.get("count") || "").trim();
  const job = {
    task: data.get("task"),
    strategy: data.get("strategy"),
    count: /^-?\d+$/.test(countText) ? Number(countText) : countText,
    priority: data.get("priority"),
  };
  if (job.strategy === "node_specific") job.node = String(data.get("node") || "").trim() || null;
  return job;
}

async function submitJob(event) {
  event.preventDefault();
  const button = byId("f-submit");
  button.disabled = true;
  setText(byId("f-result"), "submitting…");
  try {
    const job = await json(await api("v1/jobs", { method: "POST", body: JSON.stringify(formJob()) }));
    ownerKeys.remember(job.job_id, job.owner_key);
    byId("f-result").dataset.jobId = job.job_id;
    showFormMessage(`submitted job ${job.job_id}`);
    mergeJob(job);
  } catch (error) {
    setText(byId("f-result"), "");
    showFormError(error.message);
  } finally {
    button.disabled = false;
  }
}

async function loadTasks() {
  const tasks = await get("v1/tasks");
  const select = byId("f-task");
  const current = select.value;
  select.replaceChildren(...tasks.map((task) => el("option", { value: task.name, title: task.description || "" }, task.name)));
  select.value = tasks.some((t) => t.name === current) ? current : "compute_task";
}

/** The strategies the app has (each strategy module declares itself), what each chooses as the tooltip. */
async function loadStrategies() {
  const strategies = await get("v1/strategies");
  const select = byId("f-strategy");
  const current = select.value;
  const names = strategies.map((strategy) => strategy.name.toLowerCase());
  select.replaceChildren(...strategies.map((strategy, i) => el("option", { value: names[i], title: strategy.summary }, names[i])));
  select.value = names.includes(current) ? current : "spread";
}

// ------------------------------------------------------------------ polling

function showPollError(error) {
  const live = byId("live");
  live.className = "live bad";
  setText(byId("live-text"), `no answer: ${error.message}`.slice(0, 60));
  setAttr(live, "title", error.message);
}

function showLive() {
  const live = byId("live");
  live.className = "live ok";
  setText(byId("live-text"), `live · ${new Date().toLocaleTimeString([], { hour12: false })}`);
  setAttr(live, "title", null);
}

/** Jobs and recent decisions, fetched together. */
async function refreshActivity() {
  const asked = performance.now();
  const [jobs, decisions] = await Promise.all([get("v1/jobs?limit=1000"), get("v1/decisions?limit=25")]);
  // a job answered for after this list was asked (a cancel's reply) keeps that newer answer:
  // the list, read before the cancel landed, showed it running again, its Cancel button back
  const newer = new Map(state.jobs.filter((job) => (state.mergedAt.get(job.job_id) || 0) > asked)
    .map((job) => [job.job_id, job]));
  state.jobs = jobs.map((job) => newer.get(job.job_id) || job);
  const listed = new Set(jobs.map((job) => job.job_id));
  for (const [jobId, job] of newer) if (!listed.has(jobId)) state.jobs.push(job); // submitted meanwhile
  state.serverSkew = decisions.now - Date.now() / 1000;
  state.decisions = decisions;
  renderJobs();
}

/** One refresh. The cluster every tick. Jobs and decisions every tick while any job runs or
 *  work waits (the cluster status says so within a tick, wherever the job came from) or the
 *  page still shows a job as active, else every IDLE_EVERY ticks: the page costs an idle app
 *  little. Sharing and the history chart less often; a settled job's view not again. */
async function refresh() {
  const tick = state.tick;
  state.tick += 1;
  const calls = [
    get("v1/cluster").then((cluster) => {
      state.nodes = cluster.nodes;
      renderSummary(cluster);
      renderNodes();
      renderQueue(cluster);
      renderQueues(cluster);
      const busy = cluster.jobs_running > 0 || cluster.queued > 0 || state.jobs.some(isActive);
      return busy || tick % IDLE_EVERY === 0 ? refreshActivity() : null;
    }),
  ];
  if (tick % SHARING_EVERY === 0) calls.push(get("v1/sharing").then((sharing) => { state.sharing = sharing; }));
  if (tick % PLACEMENTS_EVERY === 0) calls.push(get("v1/placements?window_s=600").then(drawPlacements));
  if (state.selectedJob && !state.selectedJobSettled) calls.push(refreshJob());
  const results = await Promise.allSettled(calls);
  if (state.decisions) renderDecisions(state.decisions);
  if (state.sharing) renderSharing(state.sharing);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showPollError(failed.reason);
  else showLive();
}

/** Poll about once a second, never two at once, and not at all while the tab is hidden. */
async function pollForever() {
  for (;;) {
    const began = performance.now();
    if (!document.hidden) {
      try {
        await refresh();
      } catch (error) {
        showPollError(error);
      }
    } else {
      setText(byId("live-text"), "paused (tab hidden)");
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(200, TICK_MS - (performance.now() - began))));
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  byId("node-filter").addEventListener("input", (event) => { state.filter = event.target.value.trim().toLowerCase(); renderNodes(); });
  byId("node-sort").addEventListener("change", (event) => {
    state.sort = { key: event.target.value, descending: !["name", "state"].includes(event.target.value) };
    renderNodes();
  });
  for (const button of document.querySelectorAll("#nodes-table th button[data-sort]")) {
    button.addEventListener("click", () => setSort(button.dataset.sort));
  }
  byId("jobs-active-only").addEventListener("change", (event) => { state.activeOnly = event.target.checked; renderJobs(); });
  byId("f-strategy").addEventListener("change", (event) => { byId("f-node").disabled = event.target.value !== "node_specific"; });
  byId("submit-form").addEventListener("submit", submitJob);
  byId("job-close").addEventListener("click", closeJob);
  byId("job-cancel").addEventListener("click", (event) => { if (state.selectedJob) armedCancel(event.currentTarget, state.selectedJob); });
  const fromHash = /^#job=(.+)$/.exec(location.hash);
  if (fromHash) selectJob(decodeURIComponent(fromHash[1]));
}

wire();
loadTasks().catch(showPollError);
loadStrategies().catch(showPollError);
pollForever();
