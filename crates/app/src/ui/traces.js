// The trace viewer: recent traces from GET /v1/traces, and one trace's
// spans from GET /v1/traces/{id} drawn as a waterfall. Everything shown is
// set as text (never as HTML), so span names and attributes cannot inject.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function duration(ns) {
  if (ns >= 1e9) return (ns / 1e9).toFixed(2) + " s";
  if (ns >= 1e6) return (ns / 1e6).toFixed(1) + " ms";
  return (ns / 1e3).toFixed(0) + " µs";
}

function started(ns) {
  return new Date(ns / 1e6).toISOString().replace("T", " ").replace("Z", "");
}

async function fetchJson(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} from ${url}`);
  return body;
}

function say(text) {
  $("status").textContent = text;
}

async function showList() {
  $("trace-view").hidden = true;
  $("list-view").hidden = false;
  const query = new URLSearchParams();
  for (const [key, value] of new FormData($("filters"))) {
    if (value !== "") query.set(key, value);
  }
  say("loading…");
  let body;
  try {
    body = await fetchJson("v1/traces?" + query);
  } catch (error) {
    say(error.message);
    return;
  }
  const rows = body.traces.map((t) => {
    const row = el("tr", { class: "trace", "data-trace-id": t.trace_id }, [
      el("td", { text: started(t.start_ns), class: "muted" }),
      el("td", { text: t.root, class: t.error ? "error" : "" }),
      el("td", { text: t.service }),
      el("td", { text: duration(t.duration_ns) }),
      el("td", { text: String(t.spans) }),
      el("td", { text: t.trace_id, class: "mono muted" }),
    ]);
    row.addEventListener("click", () => { location.hash = t.trace_id; });
    return row;
  });
  $("traces").replaceChildren(...rows);
  say(rows.length ? `${rows.length} traces` : "no traces match");
}

// Spans in tree order (each after its parent, siblings by start), with depth.
function ordered(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  for (const span of spans) {
    const parent = span.parent_id && ids.has(span.parent_id) ? span.parent_id : "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(span);
  }
  const out = [];
  const walk = (parent, depth) => {
    const list = (children.get(parent) || []).sort((a, b) => a.start_ns - b.start_ns);
    for (const span of list) {
      out.push([span, depth]);
      walk(span.span_id, depth + 1);
    }
  };
  walk("", 0);
  return out;
}

async function showTrace(id) {
  $("list-view").hidden = true;
  $("trace-view").hidden = false;
  $("trace-title").textContent = id;
  $("spans").replaceChildren();
  say("loading…");
  let body;
  try {
    body = await fetchJson("v1/traces/" + encodeURIComponent(id));
  } catch (error) {
    $("trace-summary").textContent = "";
    say(error.message);
    return;
  }
  const spans = body.spans;
  const start = Math.min(...spans.map((s) => s.start_ns));
  const end = Math.max(...spans.map((s) => s.start_ns + s.duration_ns));
  const total = Math.max(end - start, 1);
  const services = new Set(spans.map((s) => s.service));
  $("trace-summary").textContent =
    `${spans.length} spans across ${services.size} services, ${duration(end - start)}, started ${started(start)}`;
  const rows = [];
  for (const [span, depth] of ordered(spans)) {
    const status = span.attributes["http.response.status_code"];
    const bar = el("div", { class: "bar" + (span.error ? " failed" : "") }, [
      el("span", { text: duration(span.duration_ns) }),
    ]);
    bar.style.left = ((span.start_ns - start) / total) * 100 + "%";
    bar.style.width = (span.duration_ns / total) * 100 + "%";
    const name = el("td", { class: "name" + (span.error ? " error" : ""), text: span.name });
    name.style.paddingLeft = 0.5 + depth * 1.2 + "rem";
    const row = el("tr", { class: "span", "data-span-id": span.span_id }, [
      name,
      el("td", { text: span.service }),
      el("td", { text: span.kind, class: "muted" }),
      el("td", { text: status === undefined ? "" : String(status) }),
      el("td", { class: "timeline" }, [bar]),
    ]);
    const details = el("tr", { class: "attributes", hidden: "" }, [
      el("td", { colspan: "5" }, [
        el("dl", {}, [
          ["span id", span.span_id],
          ["parent", span.parent_id || "(root)"],
          ...Object.entries(span.attributes).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
        ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
      ]),
    ]);
    row.addEventListener("click", () => { details.hidden = !details.hidden; });
    rows.push(row, details);
  }
  $("spans").replaceChildren(...rows);
  say("click a span for its attributes");
}

function route() {
  const id = location.hash.slice(1);
  if (/^[0-9a-fA-F]{32}$/.test(id)) showTrace(id.toLowerCase());
  else showList();
}

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  if (location.hash) location.hash = "";
  else showList();
});
window.addEventListener("hashchange", route);
route();
