// Training: upload and validate training data, start fine-tuning jobs, watch them live.
import { get, post, listAll, uploadFile } from "./api.js";
import { $, el, statusBadge, when, fillSelect } from "./dom.js";
import { drawCurve } from "./chart.js";

const DONE = new Set(["succeeded", "failed", "cancelled"]);
let watching = null; // job id shown in the detail card
let timer = null;
let diffShown = null; // job id whose diff is on the page

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
  $("#jd-cancel").addEventListener("click", async () => {
    if (!watching) return;
    await post(`/fine_tuning/jobs/${watching}/cancel`);
    await refresh();
  });
}

export async function enter() {
  await Promise.all([loadFiles(), loadModels(), loadJobs()]);
  if (watching) await refresh().catch(() => { watching = null; $("#job-detail").hidden = true; });
}

export function leave() { clearTimeout(timer); }
