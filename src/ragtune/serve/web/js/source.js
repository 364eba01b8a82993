// Open a retrieved passage in its source file, highlighted at its character offsets.
import { text } from "./api.js";
import { $, el } from "./dom.js";

// The [start, end) offsets of passage in source: exact match first, then one that
// tolerates differences in whitespace (loaders normalise spacing when chunking).
export function locate(source, passage) {
  const exact = source.indexOf(passage);
  if (exact >= 0) return [exact, exact + passage.length];
  const words = passage.trim().split(/\s+/).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  if (!words.length || !words[0]) return null;
  const m = new RegExp(words.join("\\s+")).exec(source);
  return m ? [m.index, m.index + m[0].length] : null;
}

export async function openSource(fileId, filename, passage) {
  const dialog = $("#source");
  $("#source-title").textContent = filename || fileId;
  const pre = $("#source-text");
  pre.textContent = "Loading…";
  dialog.showModal();
  let body;
  try {
    body = await text(`/files/${fileId}/content`);
  } catch (e) {
    pre.textContent = `Could not open the file: ${e.message}`;
    return;
  }
  const span = passage ? locate(body, passage) : null;
  if (!span) {
    $("#source-where").textContent = passage ? "Passage not found verbatim in the file." : "";
    pre.textContent = body;
    return;
  }
  const [start, end] = span;
  $("#source-where").textContent = `Characters ${start}–${end} of ${body.length}`;
  const mark = el("mark", { id: "source-hit", "data-start": start, "data-end": end,
    text: body.slice(start, end) });
  pre.replaceChildren(body.slice(0, start), mark, body.slice(end));
  mark.scrollIntoView({ block: "center" });
}
