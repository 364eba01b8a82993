// Knowledge: vector stores, drag-and-drop upload with progress, per-file status, search.
import { get, post, listAll, uploadFile } from "./api.js";
import { $, el, statusBadge, fillSelect } from "./dom.js";
import { openSource } from "./source.js";

let polling = null;
const uploading = new Map(); // local row per file being uploaded: name -> row

const storeId = () => $("#store-select").value;

async function loadStores(select) {
  const stores = await listAll("/vector_stores");
  fillSelect($("#store-select"), stores.map((s) => [s.id, `${s.name} (${s.id})`]));
  if (select) $("#store-select").value = select;
  await loadFiles();
}

async function loadFiles() {
  const id = storeId();
  const tbody = $("#store-files");
  if (!id) {
    $("#store-info").textContent = "No vector store yet: create one.";
    tbody.replaceChildren(...uploading.values());
    return;
  }
  const [store, files, uploads] = await Promise.all([
    get(`/vector_stores/${id}`), listAll(`/vector_stores/${id}/files`), listAll("/files"),
  ]);
  const names = new Map(uploads.map((f) => [f.id, f.filename]));
  const c = store.file_counts;
  $("#store-info").textContent =
    `${store.status}: ${c.completed} ready, ${c.in_progress} processing, ${c.failed} failed; ` +
    `${store.usage_bytes} bytes`;
  const rows = files.map((f) => el("tr", { "data-file-id": f.id },
    el("td", { text: names.get(f.id) || f.id }),
    el("td", {}, statusBadge(f.status)),
    el("td", { text: f.last_error ? f.last_error.message : "" })));
  tbody.replaceChildren(...uploading.values(), ...rows);
  const busy = files.some((f) => f.status === "in_progress");
  clearTimeout(polling);
  if (busy) polling = setTimeout(() => loadFiles().catch(() => {}), 1000);
}

async function upload(fileList) {
  const id = storeId();
  if (!id) {
    $("#store-info").textContent = "Create or choose a vector store first.";
    return;
  }
  await Promise.all([...fileList].map(async (file) => {
    const bar = el("progress", { max: 1, value: 0, "aria-label": `Uploading ${file.name}` });
    const detail = el("td", {}, bar);
    const row = el("tr", {}, el("td", { text: file.name }), el("td", { text: "uploading" }), detail);
    uploading.set(file.name, row);
    $("#store-files").prepend(row);
    try {
      const f = await uploadFile(file, "assistants", (p) => { bar.value = p; });
      await post(`/vector_stores/${id}/files`, { file_id: f.id });
      uploading.delete(file.name);
    } catch (e) {
      row.children[1].replaceChildren(statusBadge("failed"));
      detail.textContent = e.message;
    }
  }));
  await loadFiles();
}

async function search(e) {
  e.preventDefault();
  const out = $("#search-results");
  const note = $("#search-note");
  out.replaceChildren();
  note.textContent = "";
  const w = Number($("#search-weight").value);
  const body = {
    query: $("#search-q").value,
    max_num_results: Number($("#search-k").value) || 5,
    ranking_options: { hybrid_search: { text_weight: w, embedding_weight: 1 - w } },
  };
  const filter = $("#search-filter").value.trim();
  if (filter) {
    try { body.filters = JSON.parse(filter); } catch {
      note.textContent = "The filter is not valid JSON.";
      return;
    }
  }
  try {
    const page = await post(`/vector_stores/${storeId()}/search`, body);
    note.textContent = `${page.data.length} result(s)`;
    out.replaceChildren(...page.data.map((hit) => {
      const passage = hit.content.map((c) => c.text).join("\n");
      return el("li", { class: "hit", "data-file-id": hit.file_id },
        el("strong", { text: hit.filename }), ` score ${hit.score.toFixed(3)} `,
        el("button", { type: "button", class: "linkish",
          onclick: () => openSource(hit.file_id, hit.filename, passage),
          text: "Open in source" }),
        el("blockquote", { text: passage }));
    }));
  } catch (err) {
    note.textContent = err.message;
  }
}

export function init() {
  $("#store-create").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const s = await post("/vector_stores", { name: $("#store-name").value });
      $("#store-name").value = "";
      await loadStores(s.id);
    } catch (err) { $("#store-info").textContent = err.message; }
  });
  $("#store-select").addEventListener("change", () => loadFiles());
  const drop = $("#drop");
  const input = $("#file-input");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  input.addEventListener("change", () => { upload(input.files); input.value = ""; });
  $("#search-weight").addEventListener("input", (e) => {
    $("#search-weight-out").textContent = e.target.value;
  });
  $("#search-form").addEventListener("submit", search);
}

export async function enter() {
  $("#search-results").replaceChildren();
  await loadStores();
}

export function leave() { clearTimeout(polling); }
