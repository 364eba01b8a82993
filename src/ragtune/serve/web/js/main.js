// App shell: the API key (kept in sessionStorage) and hash routing between pages.
import { key, get } from "./api.js";
import { $ } from "./dom.js";
import * as knowledge from "./knowledge.js";
import * as training from "./training.js";
import * as playground from "./playground.js";
import * as compare from "./compare.js";

const pages = { knowledge, training, playground, compare };
let current = null;

async function checkKey() {
  const state = $("#key-state");
  try {
    await get("/models");
    state.textContent = key.get() ? "Key accepted" : "No key needed";
    return true;
  } catch (e) {
    state.textContent = e.status === 401 ? "Enter a valid API key" : e.message;
    return false;
  }
}

async function show() {
  const name = (location.hash || "#knowledge").slice(1);
  const page = pages[name] ? name : "knowledge";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.dataset.page !== page;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current && current !== pages[page] && current.leave) current.leave();
  current = pages[page];
  delete document.body.dataset.ready;
  if (await checkKey()) {
    await current.enter();
    document.body.dataset.ready = page; // the page shows this key's objects now
  }
}

function init() {
  for (const p of Object.values(pages)) p.init();
  $("#api-key").value = key.get();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    key.set($("#api-key").value.trim());
    location.reload(); // nothing of the previous key's objects stays on the page
  });
  $("#key-forget").addEventListener("click", () => {
    key.clear();
    location.reload();
  });
  window.addEventListener("hashchange", show);
  show();
}

init();
