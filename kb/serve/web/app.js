// kb's web page. Everything that comes from the index or a model is untrusted text: it is put on the page
// with text nodes only (never innerHTML), no image is ever loaded from it, and no link in it is made
// clickable. The Content-Security-Policy of kb serve forbids inline script and remote loads besides.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("kb-token") || "", citations: new Map(), opener: null };
window.kbTimings = { submittedAt: null, firstCitedAt: null, answeredAt: null, drafts: 0 };

// el("li", {class: "x"}, "text", child): an element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function when(ts) {
  if (!ts) return "never";
  return new Date(ts * 1000).toLocaleString();
}

// --- talking to kb serve -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || "KbError";
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...(extra || {}) };
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  return h;
}

async function askToken() {
  const dialog = $("token-dialog");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      state.token = $("token").value.trim();
      sessionStorage.setItem("kb-token", state.token);
      resolve(Boolean(state.token));
    }, { once: true });
    dialog.showModal();
  });
}

async function api(method, path, body, extraHeaders) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const init = { method, headers: headers(extraHeaders), credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && attempt < 2 && (await askToken())) continue;
    if (!response.ok) {
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      throw new ApiError(response.status, data);
    }
    return response;
  }
  throw new ApiError(401, null);
}

async function getJson(path) {
  return (await api("GET", path)).json();
}

function sourceUrl(path, start, end) {
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  return `/v1/sources/${encoded}?start=${start}&end=${end}`;
}

// --- views -------------------------------------------------------------------------------------------------
function show(view) {
  for (const tab of document.querySelectorAll(".tab")) {
    const on = tab.dataset.view === view;
    if (on) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
    $(`view-${tab.dataset.view}`).hidden = !on;
  }
  $("source-view").hidden = true;
  if (view === "status") loadStatus();
}

// --- ask ---------------------------------------------------------------------------------------------------
async function loadPersonas() {
  try {
    const data = await getJson("/v1/personas");
    const select = $("persona");
    for (const p of data.personas) select.append(el("option", { value: p.name }, `${p.title} (${p.name})`));
  } catch (e) {
    $("ask-state").textContent = `Could not list the personas: ${e.message}`;
  }
}

// A line of the answer text with its [n] markers turned into citation buttons (text stays text).
function withCitations(text) {
  const li = el("li", { class: "sentence" });
  let rest = text;
  const pattern = /\[(\d+)\]/g;
  let last = 0;
  let match;
  while ((match = pattern.exec(rest)) !== null) {
    const id = Number(match[1]);
    if (!state.citations.has(id)) continue;
    li.append(document.createTextNode(rest.slice(last, match.index)));
    li.append(citeButton(id));
    last = match.index + match[0].length;
  }
  li.append(document.createTextNode(rest.slice(last)));
  if (li.querySelector(".cite")) li.classList.add("cited-sentence");
  return li;
}

function citeButton(id) {
  const c = state.citations.get(id);
  return el("button", {
    type: "button", class: "cite", "data-id": id,
    "aria-label": `Source ${id}: ${c.path} lines ${c.start_line} to ${c.end_line}`,
    onclick: (event) => openCitation(id, event.currentTarget),
  }, `[${id}]`);
}

function renderAnswer(answer) {
  state.citations = new Map(answer.citations.map((c) => [c.id, c]));
  $("answer").hidden = false;
  $("draft").hidden = true;
  const persona = answer.persona_title || answer.persona;
  $("answer-persona").textContent = persona
    ? `${persona}${answer.persona_picked ? " (picked by kb)" : ""} · ${answer.backend}` : answer.backend;
  const body = $("answer-body");
  clear(body);
  let list = null;
  if (answer.abstained) body.append(el("p", {}, answer.answer));
  for (const raw of answer.abstained ? [] : answer.answer.split("\n")) {
    const line = raw.trim();
    if (!line) { list = null; continue; }
    const heading = /^\*\*(.+?)\*\*(.*)$/.exec(line);
    if (heading && !heading[2].trim()) {
      body.append(el("h3", { class: "section" }, heading[1]));
      list = null;
      continue;
    }
    if (heading && !list && !body.firstChild) {  // the answer's header: "**Title** · N sources ..."
      body.append(el("p", { class: "meta" }, el("strong", {}, heading[1]), heading[2]));
      continue;
    }
    if (!list) { list = el("ul", { class: "sentences" }); body.append(list); }
    list.append(withCitations(line.replace(/^[-*]\s+/, "")));
  }
  const cites = $("citations");
  clear(cites);
  for (const c of answer.citations) {
    const where = `${c.path}:${c.start_line}-${c.end_line}${c.heading ? " › " + c.heading : ""}`;
    cites.append(el("li", { value: c.id },
      el("button", { type: "button", class: "link", "data-id": c.id,
        onclick: (event) => openCitation(c.id, event.currentTarget) }, where),
      c.url ? el("span", { class: "url" }, ` ${c.url}`) : null,
      el("q", {}, c.quote)));
  }
  $("citations-heading").hidden = answer.citations.length === 0;
  const nearest = $("nearest");
  clear(nearest);
  for (const h of answer.nearest || []) {
    nearest.append(el("li", {},
      el("button", { type: "button", class: "link",
        onclick: (event) => openSource(h.path, h.start_line, h.end_line, "", null, event.currentTarget) },
        `${h.path}:${h.start_line}-${h.end_line}`),
      ` › ${h.heading} (${Number(h.score).toFixed(2)})`));
  }
  $("nearest-heading").hidden = !(answer.abstained && (answer.nearest || []).length);
  if (body.querySelector(".cited-sentence") && window.kbTimings.firstCitedAt === null) {
    window.kbTimings.firstCitedAt = performance.now();
  }
  window.kbTimings.answeredAt = performance.now();
}

function parseEvents(buffer, onEvent) {
  let cut;
  while ((cut = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, cut);
    buffer = buffer.slice(cut + 2);
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (data.length) onEvent(event, JSON.parse(data.join("\n")));
  }
  return buffer;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const persona = $("persona").value;
  window.kbTimings = { submittedAt: performance.now(), firstCitedAt: null, answeredAt: null, drafts: 0 };
  $("ask-submit").disabled = true;
  $("ask-state").textContent = "Looking in the sources…";
  $("answer").hidden = true;
  $("source-view").hidden = true;
  $("draft-text").textContent = "";
  try {
    const response = await api("POST", "/v1/ask", { question, persona, stream: true }, { Accept: "text/event-stream" });
    let final = null;
    let failure = null;
    const onEvent = (kind, data) => {
      if (kind === "draft") {
        window.kbTimings.drafts += 1;
        $("answer").hidden = false;
        $("draft").hidden = false;
        $("draft-text").append(document.createTextNode(data.text));
      } else if (kind === "answer") {
        final = data;
        renderAnswer(data);
      } else if (kind === "error") {
        failure = new ApiError(500, data);
      }
    };
    if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), onEvent);
      }
    } else {
      onEvent("answer", await response.json());
    }
    if (failure) throw failure;
    if (!final) throw new Error("the answer stream ended early");
    $("ask-state").textContent = final.abstained
      ? "No answer in the sources." : `Answered with ${final.citations.length} source(s).`;
  } catch (e) {
    $("ask-state").textContent = `Error: ${e.message}`;
  } finally {
    $("ask-submit").disabled = false;
  }
}

// --- the source viewer -------------------------------------------------------------------------------------
function openCitation(id, opener) {
  const c = state.citations.get(id);
  if (c) openSource(c.path, c.start_line, c.end_line, c.quote, c.url || null, opener);
}

// Normalised text (runs of whitespace -> one space) and, per character, where it came from.
function normalised(lines) {
  const chars = [];
  const where = [];
  let space = true;
  lines.forEach((line, row) => {
    for (let col = 0; col <= line.length; col++) {
      const ch = col < line.length ? line[col] : " ";
      if (/\s/.test(ch)) {
        if (!space) { chars.push(" "); where.push([row, col]); }
        space = true;
      } else {
        chars.push(ch); where.push([row, col]); space = false;
      }
    }
  });
  return { text: chars.join(""), where };
}

// Per cited line: [start, end) of the quote in it, or null (found by whitespace-normalised matching).
function quoteRanges(lines, quote) {
  const ranges = lines.map(() => null);
  const needle = quote.replace(/\s+/g, " ").trim();
  if (!needle) return ranges;
  const hay = normalised(lines);
  const at = hay.text.indexOf(needle);
  if (at < 0) return ranges;
  for (let i = at; i < at + needle.length; i++) {
    const [row, col] = hay.where[i];
    if (col >= lines[row].length) continue;
    const r = ranges[row] || [col, col + 1];
    ranges[row] = [Math.min(r[0], col), Math.max(r[1], col + 1)];
  }
  return ranges;
}

async function openSource(path, start, end, quote, url, opener) {
  state.opener = opener || null;
  const view = $("source-view");
  const before = Math.max(1, start - 3);
  $("source-title").textContent = `${path}:${start}-${end}`;
  $("source-quote").textContent = quote ? `Quoted: “${quote}”` : "";
  const lines = $("source-lines");
  clear(lines);
  view.hidden = false;
  try {
    const data = await getJson(sourceUrl(path, before, end + 3));
    const all = data.text.split("\n");
    const citedRows = [];
    all.forEach((text, i) => { if (data.start_line + i >= start && data.start_line + i <= end) citedRows.push(i); });
    const ranges = quote ? quoteRanges(citedRows.map((i) => all[i]), quote) : [];
    lines.setAttribute("start", String(data.start_line));
    all.forEach((text, i) => {
      const number = data.start_line + i;
      const cited = number >= start && number <= end;
      const li = el("li", { class: cited ? "cited" : null, "data-line": number });
      const range = cited ? ranges[citedRows.indexOf(i)] : null;
      if (range) {
        li.append(document.createTextNode(text.slice(0, range[0])), el("mark", {}, text.slice(range[0], range[1])),
          document.createTextNode(text.slice(range[1])));
      } else {
        li.append(document.createTextNode(text));
      }
      lines.append(li);
    });
    const link = data.url || url;
    $("source-url").hidden = !link;
    $("source-url").textContent = link ? `Resource: ${link}` : "";
    const first = lines.querySelector(".cited");
    if (first) first.scrollIntoView({ block: "center" });
  } catch (e) {
    lines.append(el("li", { class: "error" }, `Could not open the source: ${e.message}`));
  }
  $("source-title").focus();
}

function closeSource() {
  $("source-view").hidden = true;
  if (state.opener) state.opener.focus();
}

// --- search ------------------------------------------------------------------------------------------------
async function search(event) {
  event.preventDefault();
  const query = $("search-query").value.trim();
  if (!query) return;
  const body = { query, k: Number($("search-k").value) || 10 };
  if ($("search-type").value) body.type = [$("search-type").value];
  if ($("search-path").value.trim()) body.path = [$("search-path").value.trim()];
  $("search-state").textContent = "Searching…";
  const hits = $("hits");
  clear(hits);
  try {
    const data = await (await api("POST", "/v1/search", body)).json();
    for (const h of data.hits) {
      hits.append(el("li", {},
        el("button", { type: "button", class: "link",
          onclick: (e) => openSource(h.path, h.start_line, h.end_line, "", h.url || null, e.currentTarget) },
          `${h.path}:${h.start_line}-${h.end_line}`),
        el("span", { class: "meta" }, ` › ${h.heading} · ${h.source_type} · ${Number(h.score).toFixed(3)}`),
        h.url ? el("span", { class: "url" }, h.url) : null,
        el("p", { class: "snippet" }, h.text.length > 400 ? h.text.slice(0, 400) + "…" : h.text)));
    }
    $("search-state").textContent = `${data.hits.length} hit(s).`;
  } catch (e) {
    $("search-state").textContent = `Error: ${e.message}`;
  }
}

// --- status ------------------------------------------------------------------------------------------------
function facts(node, pairs) {
  clear(node);
  for (const [term, value] of pairs) node.append(el("dt", {}, term), el("dd", {}, String(value)));
}

async function loadStatus() {
  $("status-state").textContent = "Loading…";
  try {
    const st = await getJson("/v1/status");
    facts($("status-summary"), [
      ["Workspace", st.workspace], ["Sources", st.sources_count], ["Chunks", st.chunks_count],
      ["Last indexed", when(st.last_indexed_at)], ["Model", st.model],
    ]);
    const w = st.watcher;
    facts($("status-watcher"), w ? [
      ["Running", w.running ? `yes (pid ${w.pid}, ${w.mode})` : "no"], ["Pending changes", w.pending],
      ["Last event", `${w.last_event || "none"} (${when(w.last_event_at)})`],
      ["Last re-index", when(w.last_reindex_at)], ["Last error", w.last_error || "none"],
    ] : [["Running", "no watcher"]]);
    const body = $("sources").tBodies[0];
    clear(body);
    for (const s of st.sources) {
      body.append(el("tr", {}, el("td", {}, s.path), el("td", {}, s.source_type), el("td", {}, s.chunks),
        el("td", {}, when(s.indexed_at))));
    }
    const rbody = $("resources").tBodies[0];
    clear(rbody);
    try {
      const res = await getJson("/v1/resources");
      for (const r of res.resources) {
        rbody.append(el("tr", { class: `status-${r.status}` }, el("td", {}, r.title, el("span", { class: "url" }, r.url)),
          el("td", {}, r.status), el("td", {}, r.fetched_at || "never"), el("td", {}, r.pages),
          el("td", {}, r.reason || "")));
      }
    } catch (e) {
      rbody.append(el("tr", {}, el("td", { colspan: 5 }, `Resources unavailable: ${e.message}`)));
    }
    $("status-state").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  } catch (e) {
    $("status-state").textContent = `Error: ${e.message}`;
  }
}

// --- start -------------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("ask-form").addEventListener("submit", ask);
  $("search-form").addEventListener("submit", search);
  $("status-refresh").addEventListener("click", loadStatus);
  $("source-close").addEventListener("click", closeSource);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("source-view").hidden) closeSource(); });
  loadPersonas();
  $("question").focus();
});
