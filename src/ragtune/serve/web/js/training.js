// Training: upload and validate training data, start fine-tuning jobs, watch them live.
import { get, post, listAll, uploadFile } from "./api.js";
import { $, el, statusBadge, when, fillSelect } from "./dom.js";
import { drawCurve } from "./chart.js";

const DONE = new Set(["succeeded", "failed", "cancelled"]);
let watching = null; // job id shown in the detail card
let timer = null;
let diffShown = null; // job id whose diff is on the page
let generating = null; // make-qa generation followed on the page
let genTimer = null;

// The API reports validation problems as one message: "...: line 3: [...] ...; line 7: ...".
export function problems(message) {
  const cut = message.indexOf("problem(s): ");
  if (cut < 0) return [message];
  return message.slice(cut + "problem(s): ".length).replace(/ \(run `ragtune validate.*$/, "")
    .split("; ");
}

async function loadFiles(select) {
  const files = (await listAll("/files")).filter((f) => f.purpose === "fine-tune");
  fillSelect($("#job-training-file"), files.map((f) => [f.id, `${f.filename} (${f.id})`]));
  if (select) $("#job-training-file").value = select;
}

async function loadStores() {
  const stores = await listAll("/vector_stores");
  fillSelect($("#gen-store"), stores.map((s) => [s.id, `${s.name} (${s.file_counts.completed} files)`]));
}

// make-qa's coverage: what was kept, what was dropped and why, what the pairs cover.
function showCoverage(c) {
  const rows = c ? [
    ["Pairs kept", `${c.pairs_kept} of ${c.pairs_generated} generated`],
    ["Dropped", Object.entries(c.dropped_by_reason).filter(([, n]) => n)
      .map(([why, n]) => `${why.replace("_", " ")}: ${n}`).join(", ") || "none"],
    ["Examples", `${c.examples} (with ${c.paraphrases} paraphrases)`],
    ["Documents covered", `${c.documents_covered} of ${c.documents}`],
    ["Passages covered", `${c.passages_covered} of ${c.passages}`],
  ] : [];
  $("#gen-coverage").replaceChildren(...rows.flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", { text: v })]));
}

async function followGeneration() {
  const id = generating;
  if (!id) return;
  const g = await get(`/qa_generations/${id}`);
  if (id !== generating) return;
  const state = $("#gen-state");
  const bar = $("#gen-progress");
  bar.hidden = DONE.has(g.status);
  if (g.progress) bar.value = g.progress.fraction;
  state.replaceChildren(statusBadge(g.status),
    ` ${g.progress ? `${g.progress.stage} ${g.progress.message || ""}` : ""}`);
  state.dataset.status = g.status;
  showCoverage(g.coverage);
  clearTimeout(genTimer);
  if (!DONE.has(g.status)) {
    genTimer = setTimeout(() => followGeneration().catch(() => {}), 1000);
  } else if (g.status === "succeeded") {
    state.append(` Training file ${g.training_file} is ready and selected below.`);
    await loadFiles(g.training_file);
  } else if (g.error) {
    state.append(` ${g.error.message}`);
  }
}

async function loadModels() {
  const models = (await listAll("/models")).filter((m) => !m.id.startsWith("ft:"));
  fillSelect($("#job-model"), models.map((m) => [m.id, m.id]));
}

async function loadJobs() {
  const jobs = await listAll("/fine_tuning/jobs");
  $("#jobs").replaceChildren(...jobs.map((j) => el("tr", { "data-job-id": j.id },
    el("td", { text: j.id }), el("td", {}, statusBadge(j.status)),
    el("td", { text: j.fine_tuned_model || j.model }),
    el("td", {}, el("button", { type: "button", onclick: () => watch(j.id),
      "aria-label": `View job ${j.id}`, text: "View" })))));
  return jobs;
}

function hp(job) {
  const h = job.hyperparameters || {};
  return `epochs ${h.n_epochs}, batch size ${h.batch_size}, ` +
    `learning rate multiplier ${h.learning_rate_multiplier}`;
}

async function refresh() {
  const id = watching;
  if (!id) return;
  const [job, events] = await Promise.all([
    get(`/fine_tuning/jobs/${id}`), get(`/fine_tuning/jobs/${id}/events?limit=1000`),
  ]);
  if (id !== watching) return;
  $("#jd-id").textContent = job.id;
  $("#jd-status").replaceChildren(statusBadge(job.status));
  $("#jd-model").textContent = job.fine_tuned_model || "—";
  $("#jd-hp").textContent = hp(job);
  $("#jd-tokens").textContent = job.trained_tokens ?? "—";
  $("#jd-eta").textContent = DONE.has(job.status) ? `finished ${when(job.finished_at)}`
    : job.estimated_finish ? when(job.estimated_finish) : "—";
  $("#jd-error").textContent = job.error && job.error.message ? job.error.message : "—";
  $("#jd-cancel").disabled = DONE.has(job.status);
  const oldest = [...events.data].reverse();
  const points = oldest.filter((e) => e.type === "metrics" && e.data && e.data.train_loss != null)
    .map((e) => [e.data.step, e.data.train_loss]);
  drawCurve($("#loss-chart"), points);
  $("#jd-events").replaceChildren(...oldest.filter((e) => e.type !== "metrics" || e === oldest.at(-1))
    .map((e) => el("li", { class: `level-${e.level}`, text: `${when(e.created_at)} ${e.message}` })));
  if (job.status === "succeeded" && diffShown !== job.id) await showDiff(job.id);
  clearTimeout(timer);
  if (!DONE.has(job.status)) timer = setTimeout(() => refresh().catch(() => {}), 1000);
  else await loadJobs();
}

async function showDiff(id) {
  const d = await get(`/fine_tuning/jobs/${id}/diff?top=12`);
  if (id !== watching) return;
  diffShown = id;
  const pct = (x) => `${(100 * x).toPrecision(3)}%`;
  $("#jd-diff-total").textContent = `${d.changed_modules} module(s) changed; ` +
    `${d.total.changed_params} of ${d.total.params} weights; overall ${pct(d.total.relative_change)}` +
    ` (largest changes first)`;
  $("#jd-diff").replaceChildren(...d.modules.map((m) => el("tr", {},
    el("td", { text: m.module }), el("td", { text: m.params }),
    el("td", { text: pct(m.relative_change) }))));
}

async function watch(id) {
  watching = id;
  diffShown = null;
  $("#jd-diff").replaceChildren();
  $("#job-detail").hidden = false;
  await refresh();
  $("#job-detail").scrollIntoView({ block: "start" });
}

function value(id, parse) {
  const v = $(id).value.trim();
  return v === "" || v === "auto" ? "auto" : parse(v);
}

export function init() {
  $("#train-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const state = $("#train-upload");
    const errors = $("#train-errors");
    errors.replaceChildren();
    state.textContent = `Uploading ${file.name}…`;
    try {
      const f = await uploadFile(file, "fine-tune", () => {});
      state.textContent = `${f.filename} is valid and uploaded as ${f.id}.`;
      await loadFiles(f.id);
    } catch (err) {
      state.textContent = `${file.name} was rejected:`;
      errors.replaceChildren(...problems(err.message).map((p) => el("li", { text: p })));
    }
    e.target.value = "";
  });
  $("#job-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const state = $("#job-create-state");
    const hyperparameters = {
      n_epochs: value("#hp-epochs", parseInt),
      batch_size: value("#hp-batch", parseInt),
      learning_rate_multiplier: value("#hp-lr", parseFloat),
    };
    const body = {
      model: $("#job-model").value,
      training_file: $("#job-training-file").value,
      method: { type: "supervised", supervised: { hyperparameters } },
      training_type: document.querySelector("input[name=training_type]:checked").value,
    };
    if ($("#job-suffix").value.trim()) body.suffix = $("#job-suffix").value.trim();
    try {
      const job = await post("/fine_tuning/jobs", body);
      state.textContent = `Started ${job.id}`;
      await loadJobs();
      await watch(job.id);
    } catch (err) { state.textContent = err.message; }
  });
  $("#gen-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const state = $("#gen-state");
    showCoverage(null);
    try {
      const g = await post("/qa_generations", {
        documents: { vector_store_id: $("#gen-store").value },
        max_pairs: parseInt($("#gen-max").value, 10),
        paraphrases: parseInt($("#gen-para").value, 10),
      });
      generating = g.id;
      await followGeneration();
    } catch (err) { state.textContent = err.param ? `${err.param}: ${err.message}` : err.message; }
  });
  $("#jd-cancel").addEventListener("click", async () => {
    if (!watching) return;
    await post(`/fine_tuning/jobs/${watching}/cancel`);
    await refresh();
  });
}

export async function enter() {
  await Promise.all([loadFiles(), loadModels(), loadJobs(), loadStores()]);
  if (generating) await followGeneration().catch(() => { generating = null; });
  if (watching) await refresh().catch(() => { watching = null; $("#job-detail").hidden = true; });
}

export function leave() { clearTimeout(timer); clearTimeout(genTimer); }
