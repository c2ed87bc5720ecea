// Shared by the pages: the API token, JSON calls with JSON errors, images fetched with the token, SSE over fetch.
"use strict";

const TOKEN_KEY = "clinisynth-token";

function token() {
  // A token in the address's fragment (#token=...) never reaches the server's logs; keep it for this browser.
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const value = token();
  if (value) headers["Authorization"] = "Bearer " + value;
  return headers;
}

class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field; }
}

async function api(method, path, body) {
  const options = { method, headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (error) { data = { error: text }; }
  if (!response.ok) {
    if (response.status === 401) showTokenNeeded();
    throw new ApiError(response.status, (data && data.error) || response.statusText, data && data.field);
  }
  return data;
}

const imageUrls = new Map();

async function imageSrc(path) {
  // <img src> cannot send the bearer token: fetch the PNG and show it from a blob.
  if (imageUrls.has(path)) return imageUrls.get(path);
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new ApiError(response.status, "image " + path + " could not be loaded");
  const url = URL.createObjectURL(await response.blob());
  imageUrls.set(path, url);
  return url;
}

async function followEvents(path, onEvent, signal) {
  // EventSource cannot send headers either: read the text/event-stream body with fetch.
  const response = await fetch(path, { headers: authHeaders({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw new ApiError(response.status, "event stream refused (" + response.status + ")");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text) { return el("span", { class: "status " + text }, text); }

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toFixed(digits === undefined ? 3 : digits) : String(value);
}

function showTokenNeeded() {
  const box = document.getElementById("token-input");
  if (box) { box.classList.add("needed"); box.placeholder = "token required"; box.focus(); }
  const message = document.getElementById("token-message");
  if (message) message.textContent = "This server needs its API token.";
}

function setupTokenBox() {
  const box = document.getElementById("token-input");
  if (!box) return;
  box.value = token();
  box.addEventListener("change", () => {
    if (box.value) localStorage.setItem(TOKEN_KEY, box.value.trim()); else localStorage.removeItem(TOKEN_KEY);
    imageUrls.clear();
    location.reload();
  });
}

function scoreLine(scores) {
  if (!scores) return "";
  const parts = [];
  if (scores.classifier_label_probability !== null && scores.classifier_label_probability !== undefined)
    parts.push("p(label) " + fmt(scores.classifier_label_probability, 2));
  if (scores.clip_score !== null && scores.clip_score !== undefined) parts.push("CLIP " + fmt(scores.clip_score, 2));
  if (scores.duplicate_similarity !== null && scores.duplicate_similarity !== undefined)
    parts.push("dup " + fmt(scores.duplicate_similarity, 2));
  if (scores.memorisation_similarity !== null && scores.memorisation_similarity !== undefined)
    parts.push("mem " + fmt(scores.memorisation_similarity, 2));
  if (scores.unavailable && scores.unavailable.length) parts.push("not scored: " + scores.unavailable.join(", "));
  return parts.join(" · ");
}

document.addEventListener("DOMContentLoaded", setupTokenBox);
