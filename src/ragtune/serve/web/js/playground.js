// Playground: one question, up to four columns (base, RAG, fine-tuned, fine-tuned + RAG, any
// model in each), streamed side by side with citations, latency and token counts.
import { post, listAll, stream, ApiError } from "./api.js";
import { $, el, fillSelect } from "./dom.js";
import { openSource } from "./source.js";

const COLUMNS = [
  { id: "base", title: "Base", rag: false, ft: false },
  { id: "rag", title: "RAG", rag: true, ft: false },
  { id: "ft", title: "Fine-tuned", rag: false, ft: true },
  { id: "ftrag", title: "Fine-tuned + RAG", rag: true, ft: true },
];
const RESULTS = 3; // passages retrieved for a RAG column
let responsesApi = true; // false once /v1/responses answered 404 (not served yet)

function buildConfig() {
  $("#play-config").replaceChildren(...COLUMNS.map((c) => el("div", { class: "colcfg" },
    el("label", {}, el("input", { type: "checkbox", name: "col", value: c.id, checked: true }),
      ` ${c.title}`),
    el("label", { for: `play-model-${c.id}`, class: "muted", text: "model" }),
    el("select", { id: `play-model-${c.id}`, "data-ft": c.ft }),
    el("label", {}, el("input", { type: "checkbox", id: `play-rag-${c.id}`, checked: c.rag }),
      " with RAG"))));
}

async function loadOptions() {
  const [models, stores] = await Promise.all([listAll("/models"), listAll("/vector_stores")]);
  const lms = models.filter((m) => !/embed|minilm/i.test(m.id));
  const ft = lms.filter((m) => m.id.startsWith("ft:")).reverse(); // newest first
  const base = lms.filter((m) => !m.id.startsWith("ft:"));
  for (const c of COLUMNS) {
    const ordered = c.ft ? [...ft, ...base] : [...base, ...ft];
    fillSelect($(`#play-model-${c.id}`), ordered.map((m) => [m.id, m.id]));
  }
  fillSelect($("#play-store"), stores.map((s) => [s.id, `${s.name} (${s.id})`]));
}

function column(title, model) {
  const answer = el("div", { class: "answer", "aria-live": "polite" });
  const cites = el("div", { class: "cites" });
  const meta = el("p", { class: "meta" });
  const node = el("article", { class: "card col", "aria-label": title },
    el("h3", { text: title }), el("p", { class: "muted", text: model }), answer, cites, meta);
  return { node, answer, cites, meta };
}

function sourceButtons(cites) {
  return cites.map((c, i) =>
    el("button", { type: "button", class: "linkish cite", "data-file-id": c.file_id,
      onclick: () => openSource(c.file_id, c.filename, c.text), text: `[${i + 1}] ${c.filename}` }));
}

function citeButtons(col, cites, note, retrieved = []) {
  const parts = [el("span", { class: "muted", text: note }), ...sourceButtons(cites)];
  if (retrieved.length) {
    // What the search handed the model, kept apart from what the answer was verified to use.
    parts.push(el("br"), el("span", { class: "muted", text: "Retrieved: " }),
      ...sourceButtons(retrieved));
  }
  col.cites.replaceChildren(...parts);
}

// OpenAI Responses API with the file_search tool; citations are the answer's file_citation
// annotations, opened at the passage the search returned for that file.
async function viaResponses(col, model, question, store, maxTokens) {
  const results = new Map();
  const cited = [];
  let usage = null;
  const body = {
    model, input: question, max_output_tokens: maxTokens,
    tools: [{ type: "file_search", vector_store_ids: [store], max_num_results: RESULTS }],
    include: ["file_search_call.results"],
  };
  const keep = (item) => {
    if (item && item.type === "file_search_call") {
      for (const r of item.results || []) if (!results.has(r.file_id)) results.set(r.file_id, r);
    }
  };
  await stream("/responses", body, (ev) => {
    if (ev.type === "response.output_text.delta") col.answer.textContent += ev.delta;
    else if (ev.type === "response.output_item.done") keep(ev.item);
    else if (ev.type === "response.output_text.annotation.added") {
      const a = ev.annotation;
      if (a.type === "file_citation" && !cited.some((c) => c.file_id === a.file_id)) cited.push(a);
    } else if (ev.type === "response.completed") {
      usage = ev.response.usage;
      (ev.response.output || []).forEach(keep);
    } else if (ev.type === "error" || ev.type === "response.failed") {
      throw new Error((ev.error || ev.response?.error || {}).message || "response failed");
    }
  });
  const cites = cited.map((a) => ({ ...a, text: (results.get(a.file_id) || {}).text || "" }));
  citeButtons(col, cites, cites.length ? "Cited: " : "No file cited. ", [...results.values()]);
  return usage ? [usage.input_tokens, usage.output_tokens] : null;
}

// Fallback while /v1/responses is not served: search the store, then chat with the
// retrieved passages in the system message; every retrieved passage is listed as a source.
async function viaSearch(col, model, question, store, maxTokens) {
  const page = await post(`/vector_stores/${store}/search`,
    { query: question, max_num_results: RESULTS });
  const hits = page.data.map((h) => ({ file_id: h.file_id, filename: h.filename,
    text: h.content.map((c) => c.text).join("\n") }));
  const context = hits.map((h, i) => `[${i + 1}] (${h.filename}) ${h.text}`).join("\n\n");
  const messages = [
    { role: "system", content: `Answer from these passages and cite them as [n].\n\n${context}` },
    { role: "user", content: question },
  ];
  const usage = await viaChat(col, model, messages, maxTokens);
  citeButtons(col, hits, "Retrieved: ");
  return usage;
}

async function viaChat(col, model, messages, maxTokens) {
  let usage = null;
  await stream("/chat/completions",
    { model, messages, max_completion_tokens: maxTokens, stream_options: { include_usage: true } },
    (chunk) => {
      for (const ch of chunk.choices || []) col.answer.textContent += ch.delta?.content || "";
      if (chunk.usage) usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens];
    });
  return usage;
}

async function runColumn(col, model, question, store, rag, maxTokens) {
  const t0 = performance.now();
  let first = null;
  const observer = new MutationObserver(() => { first ??= performance.now(); });
  observer.observe(col.answer, { childList: true, characterData: true, subtree: true });
  try {
    let usage;
    if (!rag) usage = await viaChat(col, model, [{ role: "user", content: question }], maxTokens);
    else if (!store) throw new Error("Choose a vector store for the RAG columns.");
    else if (responsesApi) {
      try {
        usage = await viaResponses(col, model, question, store, maxTokens);
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404 && e.code === null)) throw e;
        responsesApi = false; // the route does not exist on this server
        col.answer.textContent = "";
        usage = await viaSearch(col, model, question, store, maxTokens);
      }
    } else usage = await viaSearch(col, model, question, store, maxTokens);
    const total = (performance.now() - t0) / 1000;
    const ttft = first ? ` (first token ${((first - t0) / 1000).toFixed(2)} s)` : "";
    col.meta.textContent = `${total.toFixed(2)} s${ttft}` +
      (usage ? `; ${usage[0]} prompt + ${usage[1]} completion tokens` : "");
    col.node.dataset.done = "true";
  } catch (e) {
    col.meta.textContent = `Error: ${e.message}`;
    col.node.dataset.done = "error";
  } finally {
    observer.disconnect();
  }
}

export function init() {
  buildConfig();
  $("#play-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const question = $("#play-q").value.trim();
    const store = $("#play-store").value;
    const maxTokens = Number($("#play-max").value) || 64;
    const chosen = COLUMNS.filter((c) => $(`#play-config input[value=${c.id}]`).checked);
    const cols = chosen.map((c) => {
      const model = $(`#play-model-${c.id}`).value;
      const rag = $(`#play-rag-${c.id}`).checked;
      return { c, model, rag, col: column(c.title, model) };
    });
    $("#play-cols").replaceChildren(...cols.map((x) => x.col.node));
    await Promise.all(cols.map((x) => runColumn(x.col, x.model, question, store, x.rag, maxTokens)));
  });
}

export async function enter() {
  $("#play-cols").replaceChildren();
  await loadOptions();
}
