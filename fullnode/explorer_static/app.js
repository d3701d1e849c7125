// The pouw explorer page: reads the node's /api/ endpoints, never writes.
// Every value from the chain is put on the page as text (textContent), never
// as HTML: task titles and names are chosen by whoever submits a task.
"use strict";

const POLL_MS = 2000;
const COIN = 100000000;

const state = {
  summary: null,
  clockOffset: 0, // server time minus this browser's time, in seconds
  route: null,
  tip: null,
  renderToken: 0,
  seenHeights: new Set(),
};

// --- small helpers ------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function coins(units) {
  if (units === null || units === undefined) return "–";
  const whole = Math.floor(units / COIN);
  const frac = String(units % COIN).padStart(8, "0").replace(/0+$/, "");
  return whole.toLocaleString("en-US") + (frac ? "." + frac : "");
}

function dice(ppm) {
  return (ppm / 1e6).toFixed(4);
}

function short(hex, n) {
  return hex ? hex.slice(0, n || 12) + "…" : "–";
}

function ago(ts) {
  const s = Math.max(0, Math.round(Date.now() / 1000 + state.clockOffset - ts));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

function duration(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const m = Math.floor(s / 60);
  return m > 0 ? m + ":" + String(s % 60).padStart(2, "0") : s + " s";
}

function hashLink(kind, hex, n) {
  return el("a", { href: "#/" + kind + "/" + hex, class: "mono", title: hex }, short(hex, n));
}

function setText(selector, text, value) {
  const node = document.querySelector(selector);
  if (!node) return;
  node.textContent = text;
  if (value !== undefined) node.setAttribute("data-value", value);
}

async function api(path) {
  const response = await fetch("/api/" + path, { cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = { error: "the node sent no JSON" };
  }
  if (!response.ok) throw new Error(body && body.error ? body.error : "HTTP " + response.status);
  return body;
}

function modeTag(row) {
  return el("span", { class: "tag " + (row.mode === 0 ? "normal" : "fallback"), title: row.mode_name }, row.mode === 0 ? "normal" : "mode " + row.mode);
}

function statusTag(status) {
  return el("span", { class: "tag " + status, "data-field": "status", "data-value": status }, status);
}

function panel(title, note, ...children) {
  return el("section", { class: "panel" }, el("h2", {}, title, note ? el("small", {}, note) : null), ...children);
}

function fields(pairs) {
  const dl = el("dl", { class: "fields" });
  for (const [label, value, field, raw] of pairs) {
    dl.append(el("dt", {}, label), el("dd", { "data-field": field || null, "data-value": raw === undefined ? null : String(raw) }, value));
  }
  return dl;
}

// --- the status bar, refreshed by polling ---------------------------------------
function renderSummary(s) {
  setText("[data-test=network]", s.network + " · " + short(s.chain_id, 8));
  setText("[data-test=tip-height]", String(s.height), s.height);
  const tip = document.querySelector("[data-test=tip-hash]");
  tip.textContent = short(s.tip, 16);
  tip.setAttribute("href", "#/block/" + s.tip);
  tip.setAttribute("title", s.tip);
  tip.setAttribute("data-value", s.tip);
  setText("[data-test=slot]", s.before_genesis ? "before genesis" : String(s.slot), s.slot);
  const phase = s.before_genesis ? "waiting for genesis" : "Phase " + s.phase + " · " + s.phase_name;
  setText("[data-test=phase]", phase, s.phase);
  setText("[data-test=supply]", coins(s.supply) + " coins", s.supply);
  setText("[data-test=waiting]", String(s.waiting_tasks), s.waiting_tasks);
  const next = document.querySelector("[data-test=next]");
  next.replaceChildren();
  s.next.forEach((n, i) => {
    if (i > 0) next.append(" · ");
    next.append(n.height + ": ", n.standing ? "standing task" : el("a", { href: "#/task/" + n.task_id, title: n.task_id }, n.title || short(n.task_id)));
  });
  tickCountdown();
}

function tickCountdown() {
  const s = state.summary;
  if (!s) return;
  const now = Date.now() / 1000 + state.clockOffset;
  setText("[data-test=countdown]", duration(s.phase_end - now), Math.max(0, Math.round(s.phase_end - now)));
}

async function poll() {
  try {
    const s = await api("summary");
    state.clockOffset = s.now - Date.now() / 1000;
    state.summary = s;
    renderSummary(s);
    const live = document.querySelector("[data-test=live]");
    live.textContent = "live";
    live.className = "live ok";
    if (state.tip !== s.tip) {
      const first = state.tip === null;
      state.tip = s.tip;
      if (!first) refreshView();
    }
  } catch (e) {
    const live = document.querySelector("[data-test=live]");
    live.textContent = "node unreachable: " + e.message;
    live.className = "live down";
  }
}

// --- views --------------------------------------------------------------------------
function blockRow(b) {
  const fresh = state.seenHeights.size > 0 && !state.seenHeights.has(b.height);
  state.seenHeights.add(b.height);
  const task = b.standing ? el("span", { class: "note", title: b.task_id }, "standing task")
    : el("a", { href: "#/task/" + b.task_id, title: b.task_id }, b.title || short(b.task_id));
  return el("tr", { "data-test": "block-row", "data-height": b.height, "data-hash": b.hash, class: fresh ? "fresh" : null },
    el("td", { class: "num", "data-field": "height", "data-value": b.height }, el("a", { href: "#/block/" + b.height }, String(b.height))),
    el("td", { "data-field": "hash", "data-value": b.hash }, hashLink("block", b.hash, 10)),
    el("td", { "data-field": "task", "data-value": b.task_id }, task),
    el("td", { "data-field": "mode", "data-value": b.mode }, modeTag(b)),
    el("td", { "data-field": "winner", "data-value": b.winner, class: "mono", title: b.winner }, short(b.winner, 10)),
    el("td", { class: "num", "data-field": "dice", "data-value": b.dice_ppm }, dice(b.dice_ppm)),
    el("td", { class: "num", "data-field": "reward", "data-value": b.paid === null ? "" : b.paid, title: "block reward + task reward + fees paid to the winner" }, coins(b.paid)),
    el("td", { class: "note", title: new Date(b.timestamp * 1000).toISOString() }, ago(b.timestamp)));
}

async function renderHome(token) {
  const [blocks, tasks, board] = await Promise.all([api("blocks?limit=20"), api("tasks?limit=15"), api("leaderboard?limit=15")]);
  if (token !== state.renderToken) return;
  const blockTable = el("table", { "data-test": "blocks" },
    el("thead", {}, el("tr", {}, ...["height", "hash", "task", "mode", "winner", "Dice", "reward", "time"].map((h, i) => el("th", { class: [0, 5, 6].includes(i) ? "num" : null }, h)))),
    el("tbody", {}, ...blocks.blocks.map(blockRow)));
  const taskTable = tasks.tasks.length === 0 ? el("p", { class: "note" }, "No task submitted yet: the standing task is mined.")
    : el("table", { "data-test": "tasks" },
      el("thead", {}, el("tr", {}, el("th", {}, "task"), el("th", {}, "status"), el("th", { class: "num" }, "reward"), el("th", { class: "num" }, "Dice"))),
      el("tbody", {}, ...tasks.tasks.map((t) => el("tr", { "data-test": "task-row", "data-task": t.task_id },
        el("td", {}, el("a", { href: "#/task/" + t.task_id, title: t.task_id }, t.title || short(t.task_id))),
        el("td", {}, statusTag(t.status), t.height ? " " + t.height : ""),
        el("td", { class: "num" }, coins(t.reward)),
        el("td", { class: "num" }, t.dice === null ? "–" : t.dice.toFixed(4))))));
  const boardTable = board.miners.length === 0 ? el("p", { class: "note" }, "No block mined yet.")
    : el("table", { "data-test": "leaderboard" },
      el("thead", {}, el("tr", {}, el("th", {}, "miner"), el("th", { class: "num" }, "blocks"), el("th", { class: "num" }, "earned"), el("th", { class: "num" }, "best Dice"))),
      el("tbody", {}, ...board.miners.map((m) => el("tr", { "data-test": "miner-row", "data-miner": m.miner },
        el("td", { class: "mono", title: m.miner }, short(m.miner, 14)),
        el("td", { class: "num", "data-field": "blocks", "data-value": m.blocks }, String(m.blocks)),
        el("td", { class: "num", "data-field": "earned", "data-value": m.earned }, coins(m.earned)),
        el("td", { class: "num", "data-field": "best-dice", "data-value": m.best_dice_ppm }, dice(m.best_dice_ppm))))));
  const view = document.getElementById("view");
  view.replaceChildren(
    panel("Latest blocks", "newest first; new rows light up", blockTable),
    el("div", { class: "side" },
      panel("Tasks", tasks.waiting + " waiting", taskTable),
      panel("Miners", "since height " + board.from_height, boardTable)));
}

async function renderBlock(token, ref) {
  const b = await api("block/" + encodeURIComponent(ref));
  if (token !== state.renderToken) return;
  const task = b.standing ? "standing task" : el("a", { href: "#/task/" + b.task_id }, b.title || b.task_id);
  const work = b.work ? [
    ["model", el("span", { class: "mono" }, b.work.model_digest), "model", b.work.model_digest],
    ["model size", b.work.model_size.toLocaleString("en-US") + " bytes", "model-size", b.work.model_size],
    ["checkpoints", String(b.work.checkpoints), "checkpoints", b.work.checkpoints],
    ["claimed Dice", dice(b.work.claimed_dice_ppm), "claimed-dice", b.work.claimed_dice_ppm],
  ] : [];
  const txs = b.tx_page.length === 0 ? el("p", { class: "note" }, "No transactions.")
    : el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "txid"), el("th", {}, "type"), el("th", {}, "from"), el("th", { class: "num" }, "amount"), el("th", { class: "num" }, "fee"))),
      el("tbody", {}, ...b.tx_page.map((t) => el("tr", {},
        el("td", { class: "mono", title: t.txid }, short(t.txid)),
        el("td", {}, t.type === "task" ? el("a", { href: "#/task/" + t.task_id }, "task: " + (t.title || short(t.task_id))) : "transfer to " + short(t.to, 10)),
        el("td", { class: "mono", title: t.from }, short(t.from, 10)),
        el("td", { class: "num" }, coins(t.amount)),
        el("td", { class: "num" }, coins(t.fee))))));
  const nav = el("p", {},
    b.height > 0 ? el("a", { href: "#/block/" + b.prev_hash }, "← parent") : null, " ",
    b.next_hash ? el("a", { href: "#/block/" + b.next_hash }, "child →") : null);
  document.getElementById("view").replaceChildren(
    el("section", { class: "panel full", "data-test": "block-view", "data-hash": b.hash },
      el("h2", {}, "Block " + b.height, el("small", { class: "mono" }, b.hash)),
      nav,
      fields([
        ["height", String(b.height), "height", b.height],
        ["hash", el("span", { class: "mono" }, b.hash), "hash", b.hash],
        ["best chain", b.best_chain ? "yes, " + b.depth + " deep, " + b.confirmations + (b.confirmations >= b.confirmations_capped ? "+" : "") + " confirmations" : "no (a side branch)", "best-chain", b.best_chain],
        ["slot", String(b.slot), "slot", b.slot],
        ["time", new Date(b.timestamp * 1000).toISOString() + " (" + ago(b.timestamp) + ")", "timestamp", b.timestamp],
        ["task", task, "task", b.task_id],
        ["mode", b.mode_name, "mode", b.mode],
        ["winner", el("span", { class: "mono" }, b.winner), "winner", b.winner],
        ["Dice", dice(b.dice_ppm) + (b.high_accuracy ? " (high accuracy)" : ""), "dice", b.dice_ppm],
        ["task reward", coins(b.task_reward) + " coins", "task-reward", b.task_reward],
        ["paid to the winner", b.paid === null ? "–" : coins(b.paid) + " coins", "reward", b.paid === null ? "" : b.paid],
        ["keys revealed", b.key_reveals.length ? b.key_reveals.join(", ") : "none", "key-reveals", b.key_reveals.join(",")],
        ["size", b.size.toLocaleString("en-US") + " bytes", "size", b.size],
        ["parent", b.height > 0 ? hashLink("block", b.prev_hash, 64) : "–", "prev-hash", b.prev_hash],
        ...work,
      ])),
    panel("Transactions", b.transactions + " in this block" + (b.transactions > b.tx_page.length ? ", first " + b.tx_page.length + " shown" : ""), txs));
  document.querySelector("main > section:last-child").classList.add("full");
}

async function renderTask(token, id) {
  const t = await api("task/" + encodeURIComponent(id));
  if (token !== state.renderToken) return;
  if (t.standing) {
    document.getElementById("view").replaceChildren(
      el("section", { class: "panel full", "data-test": "task-view" }, el("h2", {}, "The standing task"), el("p", {}, t.note)));
    return;
  }
  const r = t.result;
  const result = r ? fields([
    ["block", hashLink("block", r.block_hash, 64), "block", r.block_hash],
    ["height", String(r.height), "result-height", r.height],
    ["winner", el("span", { class: "mono" }, r.winner), "winner", r.winner],
    ["Dice", dice(r.dice_ppm), "dice", r.dice_ppm],
    ["mode", r.mode_name, "mode", r.mode],
    ["paid to the winner", coins(r.paid) + " coins", "paid", r.paid],
    ["epochs trained", r.epochs === null ? "–" : String(r.epochs), "epochs", r.epochs],
    ["model", el("span", { class: "mono" }, r.model_digest), "model", r.model_digest],
  ]) : el("p", { class: "note" }, t.status === "scheduled" ? "Scheduled for height " + t.height + "." : "Not mined yet.");
  const spec = t.spec;
  const figures = el("div", { "data-test": "figures" }, el("p", { class: "note", "data-test": "figures-state" }, "…"));
  document.getElementById("view").replaceChildren(
    el("section", { class: "panel full", "data-test": "task-view", "data-task": t.task_id },
      el("h2", {}, t.title || "task", el("small", { class: "mono" }, t.task_id)),
      fields([
        ["status", statusTag(t.status), "status", t.status],
        ["reward", coins(t.reward) + " coins", "reward", t.reward],
        ["escrow held", coins(t.escrow) + " coins", "escrow", t.escrow],
        ["publisher", el("span", { class: "mono" }, t.publisher), "publisher", t.publisher],
        ["submitted at height", String(t.submitted_height), "submitted-height", t.submitted_height],
        ["model", spec.architecture + ", " + spec.base_filters + " base filters, patch " + spec.patch_size.join("×") + ", " + spec.num_classes + " classes", "model", spec.architecture],
        ["training", spec.optimizer + " lr " + spec.learning_rate + ", batch " + spec.batch_size + ", " + spec.loss + " loss, at most " + spec.max_epochs + " epochs", "training", spec.max_epochs],
        ["datasets", "training " + t.train_blob.size.toLocaleString("en-US") + " bytes, test " + t.test_blob.size.toLocaleString("en-US") + " bytes (encrypted)", "datasets", t.train_blob.size + t.test_blob.size],
      ])),
    panel("Result", null, result),
    el("section", { class: "panel full" }, el("h2", {}, "The winning model", el("small", {}, "Dice per epoch and predictions on the task's own test images")), figures));
  document.querySelector("main > section:nth-child(2)").classList.add("full");
  pollFigures(token, t.task_id, figures);
}

async function pollFigures(token, id, box) {
  if (token !== state.renderToken) return;
  let f;
  try {
    f = await api("task/" + id + "/figures");
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", "data-test": "figures-state", "data-value": "error" }, e.message));
    return;
  }
  if (token !== state.renderToken) return;
  if (f.state === "ready") {
    box.replaceChildren(el("p", { class: "note", "data-test": "figures-state", "data-value": "ready" },
      "Scored on the task's " + f.split + " split (" + f.cases + " cases), drawn by this node from the blobs it holds."),
    el("div", { class: "figures" }, ...f.figures.map((fig) => el("figure", {},
      el("img", { src: "/api/task/" + id + "/figure/" + encodeURIComponent(fig.file), alt: fig.caption, "data-test": "figure", "data-kind": fig.kind }),
      el("figcaption", {}, fig.caption)))));
    return;
  }
  const text = {
    queued: "Drawing the figures from the blobs this node holds (waiting for the figure worker)…",
    drawing: "Drawing the figures from the blobs this node holds…",
  }[f.state] || f.reason || f.state;
  box.replaceChildren(el("p", { class: f.state === "failed" ? "error" : "note", "data-test": "figures-state", "data-value": f.state }, text));
  if (["queued", "drawing", "busy"].includes(f.state)) setTimeout(() => pollFigures(token, id, box), 2500);
}

// --- routing ------------------------------------------------------------------------------
function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "block" && parts[1]) return { kind: "block", ref: parts[1] };
  if (parts[0] === "task" && parts[1]) return { kind: "task", ref: parts[1] };
  return { kind: "home" };
}

async function refreshView() {
  const token = ++state.renderToken;
  const route = parseRoute();
  const changed = !state.route || state.route.kind !== route.kind || state.route.ref !== route.ref;
  state.route = route;
  if (changed) document.getElementById("view").replaceChildren(el("p", { class: "note" }, "loading…"));
  try {
    if (route.kind === "block") await renderBlock(token, route.ref);
    else if (route.kind === "task") await renderTask(token, route.ref);
    else await renderHome(token);
  } catch (e) {
    if (token !== state.renderToken) return;
    document.getElementById("view").replaceChildren(
      el("section", { class: "panel full" }, el("p", { class: "error", "data-test": "error" }, e.message), el("p", {}, el("a", { href: "#/" }, "back to the latest blocks"))));
  }
}

window.addEventListener("hashchange", refreshView);
document.addEventListener("DOMContentLoaded", () => {
  refreshView();
  poll();
  setInterval(poll, POLL_MS);
  setInterval(tickCountdown, 250);
});
