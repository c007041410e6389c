"use strict";
// The results explorer's script: builds one card per shown test image from the inline data, then filters and
// sorts the cards by the view, which lives in the URL fragment (#bin=...&sort=...) so that a view can be shared.
(function () {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const $ = (id) => document.getElementById(id);
  const rowIndex = Object.fromEntries(data.methods.map((m, i) => [m.key, i]));
  const metricIndex = Object.fromEntries(data.metrics.map((m, i) => [m.key, i]));
  const defaults = { bin: "all", group: "all", rows: data.methods.map((m) => m.key), sort: "", by: data.ranking.method,
                     minus: "", order: "asc", outline: false };
  document.documentElement.style.setProperty("--thumb", data.thumbnail + "px");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function option(select, value, text) {
    select.append(el("option", { value: value }, text));
  }

  function fmt(value, metric) {
    return value === null ? "n/a" : value.toFixed(metric.decimals);
  }

  // ---- controls
  option($("bin"), "all", "all bins");
  for (const b of data.bins) option($("bin"), b, b + " %");
  option($("group"), "all", "all shown");
  for (const g of data.groups) option($("group"), g, g);
  option($("sort"), "", "pair order");
  for (const m of data.metrics) option($("sort"), m.key, m.label + (m.higher ? " ↑" : " ↓"));
  option($("minus"), "", "nothing");
  for (const m of data.methods) {
    option($("by"), m.key, m.name);
    option($("minus"), m.key, m.name);
    $("rows").append(el("label", {}, el("input", { type: "checkbox", id: "row-" + m.key, value: m.key }), " " + m.name));
  }
  const total = data.bins.reduce((n, b) => n + data.pairs[b], 0);
  const rankMetric = data.metrics.find((m) => m.key === data.ranking.metric);
  const whole = 4 * data.ranking.per_group;
  const chosen = data.bins.some((b) => data.pairs[b] > whole);
  $("summary").textContent = `${total} test pairs (${data.bins.map((b) => b + " %: " + data.pairs[b]).join(", ")}); ` +
    (chosen ? `shown per bin: the ${data.ranking.per_group} worst, best and median by ` +
     `${data.methods[rowIndex[data.ranking.method]].name} ${rankMetric ? rankMetric.label : data.ranking.metric}` +
     ` and ${data.ranking.per_group} at random; a bin of at most ${whole} pairs whole.` :
     `every pair is shown (a bin of at most ${whole} pairs is shown whole).`);
  $("group").parentElement.hidden = !chosen;

  // ---- cards
  function thumb(src, link, outline, kind, item, row) {
    const box = el("a", { class: "thumb", href: link, "data-kind": kind });
    if (src) {
      box.append(el("img", { src: src, alt: kind }));
      box.append(el("img", { class: "overlay ol", src: outline, alt: "" }));
    } else {
      box.append(el("span", { class: "none" }, "no output"));
    }
    box.addEventListener("click", (event) => {
      event.preventDefault();
      if (src) openViewer(item, kind, row);
    });
    return box;
  }

  function metricLines(item, r) {
    return data.metrics.map((m, j) => el("span", { class: "m", "data-metric": m.key }, m.label + " " +
      fmt(item.values[r][j], m)));
  }

  const cards = data.items.map((item, order) => {
    const head = el("h2", {}, `bin ${item.bin} % · image ${item.id} · pair ${item.pos + 1} of ${data.pairs[item.bin]}`,
      ...item.groups.map((g) => el("span", { class: "tag " + g }, g)), el("span", { class: "sorted" }));
    const strip = el("div", { class: "strip" },
      el("figure", { "data-kind": "input" }, thumb(item.thumbs.input, item.links.mask, item.outline, "input", item),
        el("figcaption", {}, el("span", { class: "name" }, "Input"))),
      el("figure", { "data-kind": "structure" }, thumb(item.thumbs.structure, item.links.structure, item.outline,
        "structure", item), el("figcaption", {}, el("span", { class: "name" }, "Structure"))),
      ...data.methods.map((m, r) => el("figure", { "data-row": m.key },
        thumb(item.thumbs.fills[r], item.links.fills[r], item.outline, "fill", item, r),
        el("figcaption", {}, el("span", { class: "name" }, m.name), ...metricLines(item, r)))),
      el("figure", { "data-kind": "gt" }, thumb(item.thumbs.gt, item.links.gt, item.outline, "gt", item),
        el("figcaption", {}, el("span", { class: "name" }, "Ground truth"))));
    const node = el("section", { class: "item", "data-bin": item.bin, "data-id": item.id, "data-pos": item.pos },
      head, strip);
    return { item: item, order: order, node: node };
  });
  const main = $("items");
  for (const c of cards) main.append(c.node);

  // ---- the view and the fragment
  function readHash() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ""));
    const st = Object.assign({}, defaults, { rows: defaults.rows.slice() });
    if (p.has("bin") && (p.get("bin") === "all" || data.bins.includes(p.get("bin")))) st.bin = p.get("bin");
    if (p.has("group") && (p.get("group") === "all" || data.groups.includes(p.get("group")))) st.group = p.get("group");
    if (p.has("rows")) st.rows = p.get("rows").split(",").filter((k) => k in rowIndex);
    if (p.has("sort") && (p.get("sort") === "" || p.get("sort") in metricIndex)) st.sort = p.get("sort");
    if (p.has("by") && p.get("by") in rowIndex) st.by = p.get("by");
    if (p.has("minus") && (p.get("minus") === "" || p.get("minus") in rowIndex)) st.minus = p.get("minus");
    if (p.get("order") === "desc") st.order = "desc";
    st.outline = p.get("outline") === "1";
    return st;
  }

  function writeHash(st) {
    const p = new URLSearchParams();
    for (const key of ["bin", "group", "sort", "by", "minus", "order"]) {
      if (st[key] !== defaults[key]) p.set(key, st[key]);
    }
    if (st.rows.join(",") !== defaults.rows.join(",")) p.set("rows", st.rows.join(","));
    if (st.outline) p.set("outline", "1");
    const text = p.toString();
    if (location.hash.replace(/^#/, "") !== text) location.hash = text;
  }

  function fromControls() {
    return { bin: $("bin").value, group: $("group").value, sort: $("sort").value, by: $("by").value,
             minus: $("minus").value, order: $("order").value, outline: $("outline").checked,
             rows: data.methods.map((m) => m.key).filter((k) => $("row-" + k).checked) };
  }

  function toControls(st) {
    for (const key of ["bin", "group", "sort", "by", "minus", "order"]) $(key).value = st[key];
    for (const m of data.methods) $("row-" + m.key).checked = st.rows.includes(m.key);
    $("outline").checked = st.outline;
    $("viewer-outline-toggle").checked = st.outline;
  }

  function sortValue(item, st) {
    const j = metricIndex[st.sort];
    const a = item.values[rowIndex[st.by]][j];
    if (a === null || !st.minus) return a;
    const b = item.values[rowIndex[st.minus]][j];
    return b === null ? null : a - b;
  }

  function render(st) {
    const rows = new Set(st.rows);
    for (const fig of main.querySelectorAll("figure[data-row]")) fig.hidden = !rows.has(fig.dataset.row);
    let list = cards.filter((c) => (st.bin === "all" || c.item.bin === st.bin) &&
      (st.group === "all" || c.item.groups.includes(st.group)));
    if (st.sort) {
      const sign = st.order === "asc" ? 1 : -1;
      const keyed = list.map((c) => [sortValue(c.item, st), c]);
      keyed.sort((x, y) => {  // images without a value last, ties in bin and pair order
        if (x[0] === null || y[0] === null) return (x[0] === null) - (y[0] === null) || x[1].order - y[1].order;
        return sign * (x[0] - y[0]) || x[1].order - y[1].order;
      });
      list = keyed.map((x) => x[1]);
    }
    const metric = data.metrics[metricIndex[st.sort]];
    const label = st.sort ? data.methods[rowIndex[st.by]].name + (st.minus ? " − " +
      data.methods[rowIndex[st.minus]].name : "") + " " + metric.label + ": " : "";
    for (const c of list) {
      const v = st.sort ? sortValue(c.item, st) : null;
      c.node.querySelector(".sorted").textContent = st.sort ? label + (v === null ? "n/a" :
        (st.minus && v > 0 ? "+" : "") + v.toFixed(metric.decimals)) : "";
    }
    const shown = new Set(list);
    for (const c of cards) c.node.hidden = !shown.has(c);
    for (const c of list) main.append(c.node);
    for (const span of main.querySelectorAll("span.m.key")) span.classList.remove("key");
    if (st.sort) {
      const rowsKeyed = [st.by].concat(st.minus ? [st.minus] : []);
      for (const r of rowsKeyed) {
        for (const span of main.querySelectorAll(`figure[data-row="${r}"] span.m[data-metric="${st.sort}"]`)) {
          span.classList.add("key");
        }
      }
    }
    document.body.classList.toggle("outline", st.outline);
    $("viewer-outline").hidden = !st.outline;
    $("count").textContent = `showing ${list.length} of ${cards.length} selected test images`;
  }

  function apply() {
    const st = readHash();
    toControls(st);
    render(st);
  }

  for (const id of ["bin", "group", "sort", "by", "minus", "order", "outline"]) {
    $(id).addEventListener("change", () => writeHash(fromControls()));
  }
  for (const m of data.methods) $("row-" + m.key).addEventListener("change", () => writeHash(fromControls()));
  $("viewer-outline-toggle").addEventListener("change", () => {
    $("outline").checked = $("viewer-outline-toggle").checked;
    writeHash(fromControls());
  });
  window.addEventListener("hashchange", apply);

  // ---- the enlarged view
  function openViewer(item, kind, row) {
    const full = { input: item.links.gt, structure: item.links.structure, gt: item.links.gt,
                   fill: row === undefined ? null : item.links.fills[row] }[kind];
    const small = { input: item.thumbs.gt, structure: item.thumbs.structure, gt: item.thumbs.gt,
                    fill: row === undefined ? null : item.thumbs.fills[row] }[kind];
    const image = $("viewer-image");
    image.onerror = () => { image.onerror = null; image.src = small; };  // the page carried away from its run
    image.src = full || small;
    $("viewer-hole").src = item.hole;
    $("viewer-hole").hidden = kind !== "input";
    $("viewer-outline").src = item.outline;
    const side = Math.min(window.innerWidth * 0.9, window.innerHeight * 0.75, Math.max(512, item.w));
    const frame = document.querySelector("#viewer .frame");
    frame.style.width = Math.round(side * Math.min(1, item.w / item.h)) + "px";
    frame.style.height = Math.round(side * Math.min(1, item.h / item.w)) + "px";
    const name = { input: "Input", structure: "Structure", gt: "Ground truth",
                   fill: row === undefined ? "" : data.methods[row].name }[kind];
    const values = row === undefined ? "" : " · " + data.metrics.map((m, j) => m.label + " " +
      fmt(item.values[row][j], m)).join(" · ");
    $("viewer-caption").textContent = `${name} · bin ${item.bin} % · image ${item.id}${values}`;
    $("viewer-link").href = kind === "input" ? item.links.mask : full;
    $("viewer").hidden = false;
  }

  function closeViewer() {
    $("viewer").hidden = true;
  }

  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeViewer(); });

  apply();
})();
