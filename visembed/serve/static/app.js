// The page talks to the JSON API only; likes and dislikes, and the dialogue about an uploaded
// picture, live in this page session.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  liked: new Map(), disliked: new Map(), // id -> caption
  example: null, // the uploaded File
  exampleSerial: 0, // answers about an earlier upload arrive late: they are dropped
  dialogue: [], // [{role, content}] about the example, sent whole with each question
};

function setStatus(text) { $("status").textContent = text; }

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function card(result, { showBecause = false } = {}) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = result.id;
  const img = node.querySelector("img");
  img.src = result.thumbnail_url;
  img.alt = result.caption || result.id;
  node.querySelector(".caption").textContent = result.caption || result.id;
  node.querySelector(".score").textContent = `score ${result.score.toFixed(3)}`;
  if (showBecause && result.because) {
    const liked = state.liked.get(result.because) || result.because;
    node.querySelector(".because").textContent = `because you liked “${liked}”`;
  }
  const like = node.querySelector(".like");
  const dislike = node.querySelector(".dislike");
  const caption = result.caption || result.id;
  like.setAttribute("aria-label", `Like “${caption}”`);
  dislike.setAttribute("aria-label", `Dislike “${caption}”`);
  like.setAttribute("aria-pressed", String(state.liked.has(result.id)));
  dislike.setAttribute("aria-pressed", String(state.disliked.has(result.id)));
  like.addEventListener("click", () => toggle(result, "liked"));
  dislike.addEventListener("click", () => toggle(result, "disliked"));
  const more = node.querySelector(".more");
  more.setAttribute("aria-label", `More like “${caption}”`);
  more.addEventListener("click", () => run(`More like “${caption}”`,
    () => call(`/items/${encodeURIComponent(result.id)}/similar?k=12`)));
  return node;
}

function show(listId, results, options) {
  const list = $(listId);
  list.replaceChildren(...results.map((r) => card(r, options)));
}

async function run(label, request) {
  setStatus(`${label}: searching…`);
  try {
    const body = await request();
    show("results", body.results);
    setStatus(`${label}: ${body.results.length} results`);
  } catch (error) {
    setStatus(`${label}: ${error.message}`);
  }
}

function search() {
  const q = $("q").value.trim();
  if (state.example) {
    const form = new FormData();
    form.append("file", state.example);
    if (q) form.append("q", q);
    form.append("k", "12");
    return run(q ? `Like the example, but “${q}”` : "Like the example",
      () => call("/search/image", { method: "POST", body: form }));
  }
  if (!q) { setStatus("Type something to search for, or drop an image."); return; }
  return run(`“${q}”`, () => call(`/search?q=${encodeURIComponent(q)}&k=12`));
}

function refreshButtons() {
  for (const node of document.querySelectorAll(".card")) {
    node.querySelector(".like").setAttribute("aria-pressed", String(state.liked.has(node.dataset.id)));
    node.querySelector(".dislike").setAttribute("aria-pressed", String(state.disliked.has(node.dataset.id)));
  }
  $("clear-prefs").hidden = state.liked.size + state.disliked.size === 0;
}

function toggle(result, which) {
  const other = which === "liked" ? "disliked" : "liked";
  if (state[which].has(result.id)) state[which].delete(result.id);
  else { state[which].set(result.id, result.caption || result.id); state[other].delete(result.id); }
  refreshButtons();
  recommend();
}

async function recommend() {
  if (state.liked.size === 0) {
    show("recommendations", []);
    $("recs-help").firstChild.textContent = state.disliked.size
      ? "Like at least one picture to get recommendations. "
      : "Like (👍) or dislike (👎) results to get recommendations. ";
    return;
  }
  try {
    const body = await call("/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ liked: [...state.liked.keys()], disliked: [...state.disliked.keys()], k: 12 }),
    });
    show("recommendations", body.results, { showBecause: true });
    $("recs-help").firstChild.textContent =
      `Based on ${state.liked.size} liked and ${state.disliked.size} disliked. `;
  } catch (error) {
    $("recs-help").firstChild.textContent = `Recommendations failed: ${error.message} `;
  }
}

// Captions and chat: shown only when the server has a captioner. A captioner still training for
// this server (GET /capabilities: captions.state "training") is announced with its ETA, asked
// about again, and switched on when it arrives, without reloading the page.
const CAPTIONS_POLL_MS = { min: 5000, max: 60000 };
const capabilities = { captioner: false, classifier: false, loaded: false };

function captionsNotice(captions) {
  if (captions.state === "training") {
    const when = captions.eta_s == null ? "soon (no estimate yet)"
      : captions.eta_s < 90 ? "in about a minute" : `in about ${Math.round(captions.eta_s / 60)} min`;
    const progress = captions.step ? ` (step ${captions.step} of ${captions.total})` : "";
    return `The captioner is still training${progress}: captions arrive ${when}. Search works now.`;
  }
  if (captions.state === "failed") return `No captions on this server: ${captions.detail}`;
  return "";
}

function applyCapabilities(body) {
  const captions = body.captions || { state: body.captioner ? "ready" : "none" };
  const was = capabilities.captioner;
  capabilities.captioner = Boolean(body.captioner);
  capabilities.classifier = Boolean(body.classifier);
  $("caption-tagline").hidden = !capabilities.captioner;
  const notice = captionsNotice(captions);
  $("captions-status").textContent = notice;
  $("captions-status").hidden = !notice;
  document.body.dataset.captioner = capabilities.captioner ? "on" : captions.state === "training" ? "training" : "off";
  // arrived while a picture is shown (a later answer than the first): describe it now
  if (capabilities.captioner && !was && capabilities.loaded && state.example) {
    resetChat(true);
    describe(state.example, state.exampleSerial);
  }
  capabilities.loaded = true;
  if (captions.state === "training") {
    const wait = captions.eta_s == null ? CAPTIONS_POLL_MS.min : Math.min(1000 * captions.eta_s / 4, CAPTIONS_POLL_MS.max);
    setTimeout(loadCapabilities, Math.max(wait, CAPTIONS_POLL_MS.min));
  }
}

function loadCapabilities() {
  return call("/capabilities").then(applyCapabilities, () => applyCapabilities({ captioner: false, classifier: false }));
}

const capabilitiesLoaded = loadCapabilities();

async function describe(file, serial) {
  const caption = $("example-caption");
  caption.hidden = false;
  caption.dataset.state = "pending";
  caption.textContent = "Describing the picture…";
  const form = new FormData();
  form.append("file", file);
  let text;
  try {
    text = (await call("/caption", { method: "POST", body: form })).caption;
  } catch (error) {
    if (serial !== state.exampleSerial) return;
    caption.dataset.state = "failed";
    caption.textContent = `No description: ${error.message}`;
    return;
  }
  if (serial !== state.exampleSerial) return;
  $("example-img").alt = text || "your example image";
  caption.textContent = text || "(no description)";
  caption.dataset.state = "done";
}

// Labels of an uploaded image: shown only when the server has a classifier (GET /capabilities says;
// probing GET /classifier would log a 404 in the console of every server without one).

async function label(file, serial) {
  const labels = $("example-labels");
  labels.hidden = false;
  labels.dataset.state = "pending";
  labels.textContent = "Labelling the picture…";
  const form = new FormData();
  form.append("file", file);
  form.append("k", "3");
  try {
    const found = (await call("/classify", { method: "POST", body: form })).labels;
    if (serial !== state.exampleSerial) return;
    labels.textContent = "Labels: " + found.map((item) => `${item.label} (${(100 * item.probability).toFixed(0)} %)`).join(", ");
    labels.dataset.state = "done";
  } catch (error) {
    if (serial !== state.exampleSerial) return;
    labels.textContent = `No labels: ${error.message}`;
    labels.dataset.state = "failed";
  }
}

function showTurn(message) {
  const item = document.createElement("li");
  item.className = `turn ${message.role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.role === "user" ? "You: " : "visembed: ";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.content;
  item.append(who, text);
  $("dialogue").append(item);
}

function resetChat(visible) {
  state.dialogue = [];
  $("dialogue").replaceChildren();
  $("chat-status").textContent = "";
  $("chat-input").value = "";
  $("chat").hidden = !visible;
}

async function ask() {
  const input = $("chat-input");
  const question = input.value.trim();
  if (!question) { $("chat-status").textContent = "Type a question about the picture first."; return; }
  if (!state.example || $("chat-send").disabled) return;
  const serial = state.exampleSerial;
  state.dialogue.push({ role: "user", content: question });
  showTurn(state.dialogue[state.dialogue.length - 1]);
  input.value = "";
  const form = new FormData();
  form.append("file", state.example);
  form.append("messages", JSON.stringify(state.dialogue));
  $("chat-send").disabled = true;
  $("dialogue").setAttribute("aria-busy", "true");
  $("chat-status").textContent = "Writing a reply…";
  try {
    const body = await call("/chat", { method: "POST", body: form });
    if (serial !== state.exampleSerial) return;
    // an empty reply would make the next request's history invalid (empty messages are refused)
    state.dialogue.push({ role: "assistant", content: body.reply || "…" });
    showTurn(state.dialogue[state.dialogue.length - 1]);
    $("chat-status").textContent = body.note ? `Note: ${body.note}.` : "";
  } catch (error) {
    if (serial !== state.exampleSerial) return;
    state.dialogue.pop(); // the question was not answered: take it back, ready to resend
    $("dialogue").lastElementChild.remove();
    input.value = question;
    $("chat-status").textContent = `No reply: ${error.message}`;
  } finally {
    $("chat-send").disabled = false;
    $("dialogue").removeAttribute("aria-busy");
  }
}

function clearExample() {
  state.example = null;
  state.exampleSerial += 1;
  $("example").hidden = true;
  $("file").value = "";
  $("example-img").alt = "your example image";
  $("example-caption").hidden = true;
  $("example-labels").hidden = true;
  resetChat(false);
}

function useExample(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { setStatus(`${file.name} is not an image.`); return; }
  state.example = file;
  const serial = ++state.exampleSerial;
  $("example-img").src = URL.createObjectURL(file);
  $("example-img").alt = "your example image";
  $("example-caption").hidden = true;
  $("example-labels").hidden = true;
  $("example").hidden = false;
  resetChat(false);
  search();
  capabilitiesLoaded.then(() => {
    if (serial !== state.exampleSerial) return;
    if (capabilities.classifier) label(file, serial);
    if (!capabilities.captioner) return;
    resetChat(true);
    describe(file, serial);
  });
}

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
$("file").addEventListener("change", (event) => useExample(event.target.files[0]));
$("clear-example").addEventListener("click", clearExample);
$("chat-form").addEventListener("submit", (event) => { event.preventDefault(); ask(); });
$("clear-prefs").addEventListener("click", () => {
  state.liked.clear(); state.disliked.clear(); refreshButtons(); recommend();
});
const zone = $("drop-zone");
zone.addEventListener("keydown", (event) => {
  if (event.target !== zone) return; // keys on the buttons inside it are theirs
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
});
for (const type of ["dragenter", "dragover"]) {
  zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
}
for (const type of ["dragleave", "drop"]) {
  zone.addEventListener(type, () => zone.classList.remove("dragging"));
}
zone.addEventListener("drop", (event) => { event.preventDefault(); useExample(event.dataTransfer.files[0]); });
