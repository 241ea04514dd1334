// The view of nfk_nb's EmbeddingExplorer (an anywidget module): a scatter drawn on a canvas at the
// screen's pixel density (crisp on 2x screens), with hover (index and label) and click-to-select,
// and the selected point's neighbours: thumbnails with captions below, or a table beside.
// Python owns the state; a click only sets the synced `index` trait and Python answers.

const MARGIN = { left: 44, right: 12, top: 26, bottom: 34 };
const HIT_RADIUS = 9; // px around a point that counts as hovering it

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render({ model, el: host }) {
  const root = el("div", "nfk-explorer");
  const plot = el("div", "nfk-explorer-plot");
  const canvas = el("canvas");
  const tip = el("div", "nfk-explorer-tip");
  const side = el("div", "nfk-explorer-side");
  const strip = el("div", "nfk-explorer-strip");
  plot.append(canvas, tip);
  const row = el("div", "nfk-explorer-row");
  row.append(plot, side);
  root.append(row, strip);
  host.append(root);

  let screen = []; // [x, y] in CSS px of each point, for hit testing
  let hovered = -1;

  function size() {
    const w = model.get("width");
    const h = model.get("height");
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    plot.style.width = `${w}px`;
    plot.style.height = `${h}px`;
    return { w, h, dpr };
  }

  function draw() {
    const { w, h, dpr } = size();
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pts = model.get("points");
    const colors = model.get("colors");
    const legend = model.get("legend");
    const legendWidth = legend.length ? 64 : 0;
    const x0 = MARGIN.left, x1 = w - MARGIN.right - legendWidth;
    const y0 = MARGIN.top, y1 = h - MARGIN.bottom;
    let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
    for (const [x, y] of pts) {
      xmin = Math.min(xmin, x); xmax = Math.max(xmax, x);
      ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
    }
    const padx = (xmax - xmin) * 0.04 || 1, pady = (ymax - ymin) * 0.04 || 1;
    xmin -= padx; xmax += padx; ymin -= pady; ymax += pady;
    const sx = (x) => x0 + ((x - xmin) / (xmax - xmin)) * (x1 - x0);
    const sy = (y) => y1 - ((y - ymin) / (ymax - ymin)) * (y1 - y0);
    screen = pts.map(([x, y]) => [sx(x), sy(y)]);

    ctx.strokeStyle = "#bbb";
    ctx.lineWidth = 1;
    ctx.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0);
    ctx.fillStyle = "#333";
    ctx.font = "bold 13px sans-serif";
    ctx.textAlign = "left";
    ctx.fillText(model.get("title"), x0, 17);
    ctx.font = "12px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(model.get("xlabel"), (x0 + x1) / 2, h - 10);
    ctx.save();
    ctx.translate(14, (y0 + y1) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(model.get("ylabel"), 0, 0);
    ctx.restore();

    ctx.globalAlpha = 0.75;
    screen.forEach(([x, y], i) => {
      ctx.fillStyle = colors[i] || "#1f77b4";
      ctx.beginPath();
      ctx.arc(x, y, 2.6, 0, 2 * Math.PI);
      ctx.fill();
    });
    ctx.globalAlpha = 1;

    ctx.strokeStyle = "#111";
    ctx.lineWidth = 1.4;
    for (const j of model.get("neighbours")) {
      const [x, y] = screen[j];
      ctx.beginPath();
      ctx.arc(x, y, 6.5, 0, 2 * Math.PI);
      ctx.stroke();
    }
    const sel = model.get("index");
    if (screen[sel]) star(ctx, screen[sel][0], screen[sel][1], 9, "#111");
    if (hovered >= 0 && screen[hovered]) {
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(screen[hovered][0], screen[hovered][1], 7.5, 0, 2 * Math.PI);
      ctx.stroke();
    }

    ctx.font = "12px sans-serif";
    ctx.textAlign = "left";
    legend.forEach(([name, color], k) => {
      const ly = y0 + 8 + k * 17;
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x1 + 14, ly - 4, 4.5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillStyle = "#333";
      ctx.fillText(name, x1 + 24, ly);
    });
  }

  function star(ctx, x, y, r, color) {
    ctx.fillStyle = color;
    ctx.beginPath();
    for (let k = 0; k < 10; k++) {
      const rad = k % 2 ? r * 0.45 : r;
      const a = -Math.PI / 2 + (k * Math.PI) / 5;
      ctx[k ? "lineTo" : "moveTo"](x + rad * Math.cos(a), y + rad * Math.sin(a));
    }
    ctx.closePath();
    ctx.fill();
  }

  function nearest(event) {
    const box = canvas.getBoundingClientRect();
    const mx = event.clientX - box.left, my = event.clientY - box.top;
    let best = -1, bestD = HIT_RADIUS * HIT_RADIUS;
    screen.forEach(([x, y], i) => {
      const d = (x - mx) ** 2 + (y - my) ** 2;
      if (d <= bestD) { best = i; bestD = d; }
    });
    return { best, mx, my };
  }

  canvas.addEventListener("mousemove", (event) => {
    const { best, mx, my } = nearest(event);
    canvas.style.cursor = best >= 0 ? "pointer" : "default";
    if (best !== hovered) { hovered = best; draw(); }
    if (best < 0) { tip.style.display = "none"; return; }
    const labels = model.get("labels");
    tip.textContent = labels.length ? `#${best} · label ${labels[best]}` : `#${best}`;
    tip.style.display = "block";
    tip.style.left = `${Math.min(mx + 12, model.get("width") - 110)}px`;
    tip.style.top = `${Math.max(my - 28, 0)}px`;
  });
  canvas.addEventListener("mouseleave", () => {
    tip.style.display = "none";
    if (hovered >= 0) { hovered = -1; draw(); }
  });
  canvas.addEventListener("click", (event) => {
    const { best } = nearest(event);
    if (best >= 0 && best !== model.get("index")) {
      model.set("index", best);
      model.save_changes();
    }
  });

  function neighbours() {
    const items = model.get("items");
    const thumbs = items.length && items[0].src;
    strip.replaceChildren();
    side.replaceChildren();
    if (thumbs) {
      for (const item of items) {
        const fig = el("figure", item.query ? "nfk-thumb nfk-thumb-query" : "nfk-thumb");
        const img = el("img");
        img.src = item.src;
        img.width = model.get("thumb");
        img.alt = `#${item.index}`;
        img.title = item.query ? "selected point" : "click to select this neighbour";
        if (!item.query) {
          img.addEventListener("click", () => { model.set("index", item.index); model.save_changes(); });
        }
        const cap = el("figcaption");
        cap.append(el("div", "", item.query ? `selected #${item.index}` : `#${item.index}`));
        const detail = [item.label !== null ? `y=${item.label}` : "", item.cosine !== null ? `cos ${item.cosine}` : ""];
        cap.append(el("div", "", detail.filter(Boolean).join(" · ")));
        fig.append(img, cap);
        strip.append(fig);
      }
    } else if (items.length) {
      const table = el("table", "nfk-explorer-table");
      const head = el("tr");
      for (const t of ["neighbour", "label", "cosine"]) head.append(el("th", "", t));
      table.append(head);
      for (const item of items) {
        if (item.query) continue;
        const tr = el("tr");
        tr.append(el("td", "", `#${item.index}`), el("td", "", item.label ?? ""), el("td", "", item.cosine ?? ""));
        tr.addEventListener("click", () => { model.set("index", item.index); model.save_changes(); });
        table.append(tr);
      }
      side.append(table);
    }
  }

  draw();
  neighbours();
  model.on("change:points change:colors change:index change:neighbours change:width change:height", draw);
  model.on("change:items", neighbours);
  return () => { canvas.remove(); };
}

export default { render };
