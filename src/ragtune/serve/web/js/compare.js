// Compare: start a comparison (POST /v1/comparisons, ragtune's extension), follow its
// progress, open its report inside the app; the list of past comparisons.
import { get, post, text, listAll, uploadFile } from "./api.js";
import { $, el, statusBadge, when, fillSelect } from "./dom.js";

const DONE = new Set(["succeeded", "failed", "cancelled"]);
let watching = null; // comparison shown in the detail card
let timer = null;
let shownReport = null; // comparison whose report is in the frame
const blobs = []; // object URLs of the report on the page, revoked when replaced

const radio = (name) => document.querySelector(`input[name=${name}]:checked`).value;

async function loadInputs() {
  const [stores, files, jobs] = await Promise.all([
    listAll("/vector_stores"), listAll("/files"), listAll("/fine_tuning/jobs"),
  ]);
  fillSelect($("#cmp-store"), stores.map((s) => [s.id, `${s.name} (${s.file_counts.completed} files)`]));
  const questions = files.filter((f) => f.purpose === "assistants" && /\.jsonl?$/i.test(f.filename));
  fillSelect($("#cmp-questions"), questions.map((f) => [f.id, `${f.filename} (${f.id})`]));
  fillSelect($("#cmp-training-file"), files.filter((f) => f.purpose === "fine-tune")
    .map((f) => [f.id, `${f.filename} (${f.id})`]));
  fillSelect($("#cmp-training-job"), jobs.filter((j) => j.status === "succeeded")
    .map((j) => [j.id, `${j.fine_tuned_model || j.id}`]));
}

function arms(c) {
  return ((c.request && c.request.settings && c.request.settings.arms) || []).join(", ");
}

async function loadList() {
  const all = await listAll("/comparisons");
  $("#comparisons").replaceChildren(...all.map((c) => el("tr", { "data-comparison-id": c.id },
    el("td", { text: `${c.id} · ${when(c.created_at)}` }), el("td", {}, statusBadge(c.status)),
    el("td", { text: arms(c) }),
    el("td", {}, el("button", { type: "button", onclick: () => watch(c.id),
      "aria-label": `View comparison ${c.id}`, text: "View" })))));
  return all;
}

function showToggles() {
  $("#cmp-docs-store").hidden = radio("cmp_docs") !== "store";
  $("#cmp-docs-files").hidden = radio("cmp_docs") !== "files";
  $("#cmp-training-file-row").hidden = radio("cmp_training") !== "file";
  $("#cmp-training-job-row").hidden = radio("cmp_training") !== "fine_tuning_job";
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

async function body(state) {
  const b = {
    questions: { file_id: $("#cmp-questions").value },
    arms: [...document.querySelectorAll("input[name=cmp_arm]:checked")].map((x) => x.value),
    freshness: number("#cmp-freshness") ?? 0,
  };
  if (number("#cmp-max-questions") !== null) b.max_questions = number("#cmp-max-questions");
  if (number("#cmp-max-tokens") !== null) b.max_new_tokens = number("#cmp-max-tokens");
  if ($("#cmp-format").value.trim()) b.format_check = $("#cmp-format").value.trim();
  if (radio("cmp_docs") === "store") {
    if ($("#cmp-store").value) b.documents = { vector_store_id: $("#cmp-store").value };
  } else {
    const ids = [];
    for (const file of $("#cmp-doc-files").files) {
      state.textContent = `Uploading ${file.name}…`;
      ids.push((await uploadFile(file, "assistants", () => {})).id);
    }
    if (ids.length) b.documents = { file_ids: ids };
  }
  const training = radio("cmp_training");
  b.training = { type: training };
  if (training === "file") b.training.file_id = $("#cmp-training-file").value;
  if (training === "fine_tuning_job") b.training.fine_tuning_job_id = $("#cmp-training-job").value;
  return b;
}

function showFrame(html) {
  // The report is self-contained with inline CSS; this page's policy allows only its own
  // stylesheets, so the same CSS is linked from this server instead.
  const page = html.replace(/<style>[\s\S]*?<\/style>/,
    `<link rel="stylesheet" href="${location.origin}/static/report.css">`);
  while (blobs.length) URL.revokeObjectURL(blobs.pop());
  const url = URL.createObjectURL(new Blob([page], { type: "text/html" }));
  blobs.push(url);
  const frame = $("#cd-report");
  frame.src = url;
  frame.hidden = false;
  return url;
}

async function showReport(c) {
  shownReport = c.id;
  const html = await text(`/comparisons/${c.id}/report`);
  if (c.id !== watching) return;
  const url = showFrame(html);
  const results = await text(`/comparisons/${c.id}/results`);
  const json = URL.createObjectURL(new Blob([results], { type: "application/json" }));
  blobs.push(json);
  $("#cd-links").replaceChildren(
    el("a", { href: url, download: `${c.id}.html`, text: "Download the report (HTML)" }),
    el("a", { href: json, download: `${c.id}.results.json`, text: "Download results.json" }));
}

async function refresh() {
  const id = watching;
  if (!id) return;
  const c = await get(`/comparisons/${id}`);
  if (id !== watching) return;
  $("#cd-id").textContent = c.id;
  $("#cd-status").replaceChildren(statusBadge(c.status));
  const p = c.progress;
  $("#cd-stage").textContent = p ? `${p.stage}${p.message ? ` — ${p.message}` : ""}`
    : c.status === "succeeded" ? "done" : c.status;
  const fraction = c.status === "succeeded" ? 1 : p ? p.fraction : 0;
  $("#cd-progress").value = fraction;
  $("#cd-progress").textContent = `${Math.round(100 * fraction)}%`;
  $("#cd-created").textContent = when(c.created_at);
  $("#cd-finished").textContent = c.finished_at ? when(c.finished_at) : "—";
  $("#cd-error").textContent = c.error && c.error.message ? c.error.message : "—";
  $("#cd-cancel").disabled = DONE.has(c.status);
  $("#cd-verdict").textContent = c.summary && c.summary.verdict ? c.summary.verdict : "";
  if (c.status === "succeeded" && shownReport !== c.id) await showReport(c);
  clearTimeout(timer);
  if (!DONE.has(c.status)) timer = setTimeout(() => refresh().catch(() => {}), 1000);
  else await loadList();
}

async function watch(id) {
  watching = id;
  shownReport = null;
  $("#cd-report").hidden = true;
  $("#cd-links").replaceChildren();
  $("#cmp-detail").hidden = false;
  await refresh();
  $("#cmp-detail").scrollIntoView({ block: "start" });
}

export function init() {
  for (const r of document.querySelectorAll("input[name=cmp_docs], input[name=cmp_training]")) {
    r.addEventListener("change", showToggles);
  }
  $("#cmp-questions-upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const state = $("#cmp-state");
    try {
      const f = await uploadFile(file, "assistants", () => {});
      await loadInputs();
      $("#cmp-questions").value = f.id;
      state.textContent = `${f.filename} uploaded as ${f.id}.`;
    } catch (err) { state.textContent = err.message; }
    e.target.value = "";
  });
  $("#cmp-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const state = $("#cmp-state");
    try {
      const c = await post("/comparisons", await body(state));
      state.textContent = `Started ${c.id}`;
      await loadList();
      await watch(c.id);
    } catch (err) {
      state.textContent = err.param ? `${err.param}: ${err.message}` : err.message;
    }
  });
  $("#cd-cancel").addEventListener("click", async () => {
    if (!watching) return;
    await post(`/comparisons/${watching}/cancel`);
    await refresh();
  });
  showToggles();
}

export async function enter() {
  await Promise.all([loadInputs(), loadList()]);
  if (watching) await refresh().catch(() => { watching = null; $("#cmp-detail").hidden = true; });
}

export function leave() { clearTimeout(timer); }
