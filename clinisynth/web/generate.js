// Generate page: plan -> options -> job -> live events -> gallery with per-image scores.
"use strict";

let currentJob = null;
let streamAbort = null;
const shown = new Set();

function $(id) { return document.getElementById(id); }

function numberOption(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function adapterOption() {
  return $("opt-adapters").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function showPlan(plan) {
  $("plan").hidden = false;
  $("options").hidden = false;
  $("plan-modality").textContent = plan.modality ? plan.modality.term : "–";
  $("plan-label").textContent = plan.label;
  const chosen = plan.adapter.chosen.map((a) => a.name + ":" + a.weight).join(", ");
  $("plan-adapter").textContent = chosen || "none (base model)";
  $("plan-adapter-reason").textContent = plan.adapter.reason;
  const body = $("plan-findings").querySelector("tbody");
  body.replaceChildren(...plan.findings.map((f) => el("tr", { class: "finding" },
    el("td", {}, f.term), el("td", {}, badge(f.status)), el("td", {}, f.laterality || "–"),
    el("td", {}, f.severity || f.grade || "–"), el("td", {}, f.location.map((l) => l.term).join(", ") || "–"),
    el("td", { class: "mono" }, f.evidence))));
  if (!plan.findings.length) body.append(el("tr", {}, el("td", { colspan: 6 }, plan.normal_study ? "normal study" : "no findings")));
  const report = $("plan-report");
  report.replaceChildren(...["history", "technique", "findings", "impression"].flatMap((key) =>
    [el("dt", {}, key[0].toUpperCase() + key.slice(1)), el("dd", {}, plan.report[key] || "–")]));
  $("plan-prompt").textContent = plan.prompt;
  $("plan-negative").textContent = plan.negative_prompt;
  $("plan-notes").textContent = [...plan.conflicts, ...plan.notes].join(" ");
}

async function makePlan() {
  $("plan-error").textContent = "";
  $("plan-button").disabled = true;
  try {
    const adapters = adapterOption();
    showPlan(await api("POST", "/api/plan", { text: $("description").value, adapters }));
  } catch (error) {
    $("plan").hidden = true;
    $("options").hidden = true;
    $("plan-error").textContent = error.message;
  } finally {
    $("plan-button").disabled = false;
  }
}

function setProgress(job) {
  $("job-status").replaceChildren(badge(job.status));
  const progress = job.progress || {};
  const total = job.requested || 1;
  $("progress").max = total;
  $("progress").value = (job.stored || []).length;
  let text = (job.stored || []).length + " of " + total + " image(s) stored";
  if (progress.total) text += " · round " + progress.round + ": drawn " + progress.done + " of " + progress.total;
  if (job.error) text += " · " + job.error;
  $("progress-text").textContent = text;
  if (progress.node) $("progress-node").textContent = "last step: " + progress.node;
}

async function addToGallery(runId) {
  const rows = await api("GET", "/api/runs/" + encodeURIComponent(runId) + "/images");
  for (const row of rows) {
    if (shown.has(row.file_name)) continue;
    shown.add(row.file_name);
    const img = el("img", { alt: row.file_name });
    $("gallery").append(el("div", { class: "card", "data-file": row.file_name }, img,
      el("div", { class: "mono" }, row.file_name.split("/").pop()),
      el("div", { class: "scores" }, "slot " + row.slot + " · seed " + row.seed + " · round " + row.round),
      el("div", { class: "scores" }, scoreLine(row.scores))));
    img.src = await imageSrc(row.url);
  }
}

async function refresh(jobId) {
  const job = await api("GET", "/api/jobs/" + jobId);
  setProgress(job);
  if (job.stored.length) await addToGallery(job.run_id);
  return job;
}

async function generate() {
  $("job-error").textContent = "";
  const body = { text: $("description").value, n: numberOption("opt-n"), seed: numberOption("opt-seed"),
    steps: numberOption("opt-steps"), guidance: numberOption("opt-guidance"), best_of: numberOption("opt-best-of"),
    max_rounds: numberOption("opt-max-rounds"), adapters: adapterOption() };
  for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
  let submitted;
  try {
    submitted = await api("POST", "/api/jobs", body);
  } catch (error) {
    $("job-error").textContent = error.message;
    return;
  }
  currentJob = submitted.id;
  shown.clear();
  $("gallery").replaceChildren();
  $("progress-section").hidden = false;
  $("gallery-section").hidden = false;
  $("gallery-review").href = "/review?run=" + encodeURIComponent(submitted.run_id);
  $("generate-button").disabled = true;
  $("cancel-button").disabled = false;
  streamAbort = new AbortController();
  let job = null;
  try {
    await followEvents("/api/jobs/" + submitted.id + "/events", (name) => {
      if (["status", "image", "stored", "end", "cancel_requested"].includes(name)) refresh(submitted.id).catch(() => {});
    }, streamAbort.signal);
  } catch (error) {
    if (error.name !== "AbortError") $("job-error").textContent = error.message;
  }
  job = await refresh(submitted.id);
  $("generate-button").disabled = false;
  $("cancel-button").disabled = true;
  document.body.dataset.jobStatus = job.status;  // for scripts and tests: the job has ended
}

async function cancel() {
  if (!currentJob) return;
  $("cancel-button").disabled = true;
  try {
    setProgress(await api("POST", "/api/jobs/" + currentJob + "/cancel"));
  } catch (error) {
    $("job-error").textContent = error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("plan-button").addEventListener("click", makePlan);
  $("generate-button").addEventListener("click", generate);
  $("cancel-button").addEventListener("click", cancel);
  $("description").addEventListener("input", () => { $("plan").hidden = true; $("options").hidden = true; });
});
