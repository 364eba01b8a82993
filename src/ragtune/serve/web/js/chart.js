// A loss curve as inline SVG: a polyline over (step, value) with min/max axis labels.
const NS = "http://www.w3.org/2000/svg";

function node(tag, attrs, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

export function drawCurve(svg, points) {
  const W = 600, H = 220, L = 48, R = 10, T = 10, B = 28;
  svg.replaceChildren();
  svg.dataset.points = String(points.length);
  if (!points.length) {
    svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "No steps yet"));
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (y1 === y0 ? 0.5 : 1 - (y - y0) / (y1 - y0)) * (H - T - B);
  svg.append(
    node("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    node("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    node("text", { x: L - 4, y: T + 10, "text-anchor": "end" }, y1.toFixed(2)),
    node("text", { x: L - 4, y: H - B, "text-anchor": "end" }, y0.toFixed(2)),
    node("text", { x: L, y: H - 8 }, `step ${x0}`),
    node("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `step ${x1}`),
    node("polyline", { class: "line",
      points: points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ") }),
  );
  const last = points[points.length - 1];
  svg.setAttribute("aria-label",
    `Training loss over ${points.length} steps, from ${ys[0].toFixed(3)} to ${last[1].toFixed(3)}`);
}
