// The search page: text query -> /v1/search; dropped or chosen image -> /v1/search (multipart);
// click a result -> images similar to it. No framework, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const thumbnailUrls = [];

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function callApi(path, options) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
  if (!response.ok) throw new Error((body && body.error) || ("HTTP " + response.status));
  return body;
}

function k() {
  const value = parseInt($("k").value, 10);
  return Number.isFinite(value) && value > 0 ? Math.min(value, 100) : 12;
}

async function loadThumbnail(img, path) {
  // fetch() rather than <img src>, so that the bearer token is sent when the server wants one.
  try {
    const response = await fetch(path, { headers: authHeaders() });
    if (!response.ok) return;
    const url = URL.createObjectURL(await response.blob());
    thumbnailUrls.push(url);
    img.src = url;
  } catch (e) { /* the card keeps its placeholder */ }
}

function showResults(data, label) {
  thumbnailUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of data.results) {
    const card = document.createElement("figure");
    card.className = "hit";
    card.dataset.row = hit.row;
    card.title = "find images similar to " + hit.id;
    const img = document.createElement("img");
    img.alt = hit.id;
    if (hit.thumbnail) loadThumbnail(img, hit.thumbnail);
    const meta = document.createElement("figcaption");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = hit.id;
    meta.append(score, id);
    card.append(img, meta);
    card.addEventListener("click", () => search({ row: hit.row, k: k() }, "similar to " + hit.id));
    grid.append(card);
  }
  setStatus(`${data.results.length} results ${label} (${data.took_ms} ms)`);
}

async function search(query, label) {
  setStatus("searching…");
  try {
    const data = await callApi("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(query),
    });
    showResults(data, label);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function searchByImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("drop an image file (PNG, JPEG, WebP, GIF, BMP, TIFF)", true);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name || "image");
  form.append("k", String(k()));
  setStatus("searching…");
  try {
    showResults(await callApi("/v1/search", { method: "POST", body: form }), "similar to " + (file.name || "the image"));
  } catch (e) {
    setStatus(e.message, true);
  }
}

function setupDrop() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    searchByImage(event.dataTransfer && event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (event) => searchByImage(event.target.files[0]));
}

async function init() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) search({ text, k: k() }, "for “" + text + "”");
  });
  setupDrop();
  try {
    const health = await callApi("/v1/health", {});
    $("token-row").hidden = !health.auth;
    $("info").textContent = `model ${health.model} · ${health.index_size ?? 0} images indexed`;
    if (health.index_size == null) setStatus("this server has no index: start it with --index", true);
  } catch (e) {
    setStatus("cannot reach the service: " + e.message, true);
  }
  document.body.dataset.ready = "1";
}

init();
