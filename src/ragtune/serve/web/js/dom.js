// Tiny DOM helpers: text is always set with textContent, never parsed as HTML.
export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function statusBadge(status) {
  return el("span", { class: `status-${status}`, text: status.replace("_", " ") });
}

export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

export function fillSelect(select, options, keep = true) {
  const before = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
  if (keep && options.some(([v]) => v === before)) select.value = before;
}
