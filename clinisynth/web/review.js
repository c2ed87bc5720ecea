// Review page: runs (resumable ones can be resumed), a run's node timeline and attempts, and per-image
// approve / reject with a comment, kept in the dataset (reviews.jsonl and the metadata's review column).
"use strict";

function $(id) { return document.getElementById(id); }

async function loadRuns() {
  $("runs-error").textContent = "";
  let runs;
  try { runs = await api("GET", "/api/runs"); } catch (error) { $("runs-error").textContent = error.message; return; }
  const body = $("runs").querySelector("tbody");
  body.replaceChildren(...runs.slice().reverse().map((run) => el("tr", { "data-run": run.run_id },
    el("td", { class: "mono" }, el("a", { href: "/review?run=" + encodeURIComponent(run.run_id) }, run.run_id)),
    el("td", {}, badge(run.status || "?")),
    el("td", {}, run.n_stored === undefined ? "–" : run.n_stored),
    el("td", {}, run.request || run.error || ""),
    el("td", {}, run.resumable ? el("button", { class: "secondary resume", onclick: () => resume(run.run_id) }, "Resume") : ""))));
  if (!runs.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no runs in the output dir yet")));
}

async function resume(runId) {
  try {
    await api("POST", "/api/runs/" + encodeURIComponent(runId) + "/resume");
    await loadRuns();
  } catch (error) { $("runs-error").textContent = error.message; }
}

function timelineItem(event) {
  return el("li", { class: "node" },
    el("b", {}, event.node), " ", el("span", { class: "muted" }, "round " + event.round + " · " + fmt(event.elapsed_ms, 1) + " ms · " + event.started_at),
    el("details", {}, el("summary", {}, "input / output"),
      el("pre", { class: "mono" }, "input: " + JSON.stringify(event.input, null, 1)),
      el("pre", { class: "mono" }, "output: " + JSON.stringify(event.output, (key, value) =>
        key === "thumbnail" ? "(image)" : value, 1))));
}

function attemptRow(attempt) {
  return el("tr", { class: "attempt" },
    el("td", {}, attempt.thumbnail ? el("img", { src: attempt.thumbnail, alt: "candidate" }) : ""),
    el("td", { class: "mono" }, attempt.slot + "." + attempt.round + "." + attempt.candidate),
    el("td", { class: "mono" }, attempt.seed),
    el("td", {}, badge(attempt.verdict), attempt.failure ? " " + attempt.failure : ""),
    el("td", {}, (attempt.reasons || []).join("; ")),
    el("td", {}, attempt.action || "–"),
    el("td", { class: "mono" }, attempt.stored_as || ""));
}

async function decide(runId, fileName, decision, card) {
  const comment = card.querySelector("textarea").value;
  try {
    await api("POST", "/api/runs/" + encodeURIComponent(runId) + "/reviews", { file_name: fileName, decision, comment });
    card.querySelector(".decision").replaceChildren(badge(decision));
    card.dataset.review = decision;
  } catch (error) { $("run-error").textContent = error.message; }
}

async function storedCard(runId, row) {
  const img = el("img", { alt: row.file_name });
  const card = el("div", { class: "card", "data-file": row.file_name, "data-review": row.review || "" }, img,
    el("div", { class: "mono" }, row.file_name.split("/").pop()),
    el("div", { class: "scores" }, scoreLine(row.scores)),
    el("div", { class: "decision" }, row.review ? badge(row.review) : el("span", { class: "muted" }, "not reviewed")),
    el("textarea", { placeholder: "comment", "aria-label": "comment" }, row.review_comment || ""),
    el("div", { class: "row" },
      el("button", { class: "approve", onclick: () => decide(runId, row.file_name, "approved", card) }, "Approve"),
      el("button", { class: "danger reject", onclick: () => decide(runId, row.file_name, "rejected", card) }, "Reject")));
  imageSrc(row.url).then((url) => { img.src = url; }).catch(() => {});
  return card;
}

async function exportApproved(runId) {
  $("export-message").textContent = "";
  const response = await fetch("/api/export?run_id=" + encodeURIComponent(runId), { headers: authHeaders() });
  if (!response.ok) {
    const data = await response.json().catch(() => ({ error: response.statusText }));
    $("export-message").textContent = data.error;
    return;
  }
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: "approved-" + runId + ".zip" });
  document.body.append(link);
  link.click();
  link.remove();
  $("export-message").textContent = response.headers.get("X-Image-Count") + " approved image(s) exported";
}

async function showRun(runId) {
  $("run").hidden = false;
  $("run-id").textContent = runId;
  let trace, images;
  try {
    [trace, images] = await Promise.all([api("GET", "/api/runs/" + encodeURIComponent(runId) + "/trace"),
      api("GET", "/api/runs/" + encodeURIComponent(runId) + "/images")]);
  } catch (error) { $("run-error").textContent = error.message; return; }
  $("run-status").replaceChildren(badge(trace.status));
  $("run-request").textContent = trace.request;
  const summary = trace.summary || {};
  const parts = ["stored " + (summary.stored ?? (trace.stored || []).length) + " of " + (summary.requested ?? trace.parameters.n_images)];
  if (summary.attempts !== undefined) parts.push(summary.attempts + " attempt(s), " + summary.rejected + " rejected");
  if (trace.cancelled) parts.push("cancelled after " + trace.cancelled.after_node + " at " + trace.cancelled.at);
  if (trace.adapters) parts.push("adapters: " + trace.adapters.reason);
  if (trace.error) parts.push("error: " + trace.error);
  $("run-summary").textContent = parts.join(" · ");
  $("stored").replaceChildren(...await Promise.all(images.map((row) => storedCard(runId, row))));
  if (!images.length) $("stored").append(el("div", { class: "muted" }, "no stored images"));
  $("timeline").replaceChildren(...(trace.events || []).map(timelineItem));
  $("attempts").querySelector("tbody").replaceChildren(...(trace.attempts || []).map(attemptRow));
  $("export-button").onclick = () => exportApproved(runId);
  document.body.dataset.loaded = runId;  // for scripts and tests: the run is shown
}

document.addEventListener("DOMContentLoaded", async () => {
  await loadRuns();
  const runId = new URLSearchParams(location.search).get("run");
  if (runId) await showRun(runId);
});
