// truc operator dashboard: polls /api/overview and renders it. No framework,
// no external resources; every string that reaches the page goes through
// textContent (never innerHTML).
"use strict";

const I18N = {
  vi: {
    alerts: "Cảnh báo", tree: "Mạng liên thông", throughput: "Lưu lượng (thông điệp/giây)",
    accepted: "đã lưu (văn bản, biên nhận, trạng thái)", delivered: "chuyển đến cơ quan tại nút này", refused: "từ chối",
    search: "Tra cứu văn bản", find: "Tìm", queues: "Hàng đợi theo cơ quan",
    agency: "Cơ quan", waiting: "Đang chờ", oldest: "Cũ nhất", overdue: "Văn bản quá hạn",
    dead: "Bị từ chối hẳn (chuyển lại bằng truc requeue khi đã khắc phục)", recipients: "Nơi nhận",
    queue: "Hàng đợi", refused_at: "Bị từ chối lúc", why: "Lý do", first: "đầu tiên", of: "trên",
    from: "Gửi từ", priority: "Độ khẩn", deadline: "Hạn", state: "Trạng thái",
    certs: "Chứng thư số", subject: "Chủ thể", expires: "Hết hạn", left: "Còn lại",
    logout: "Đăng xuất", none: "Không có", no_alerts: "Không có cảnh báo",
    up: "kết nối", down: "mất kết nối", unknown: "không rõ", parked: "đã tạm dừng", queued: "đang chờ",
    days: "ngày", updated: "Cập nhật", latency: "Độ trễ chuyển đến",
    not_found: "Không tìm thấy", refused: "Không thực hiện được", at: "Thời điểm", node: "Nút", step: "Bước", detail: "Chi tiết",
    version: "phiên bản", cert: "chứng thư", seen: "liên lạc", hub: "trục", relay: "LGSP", edge: "đơn vị",
    overdue_k: "quá hạn", link_down_k: "mất kết nối", cert_expiry_k: "chứng thư sắp hết hạn",
    disk_k: "đĩa đầy", audit_k: "nhật ký kiểm toán", store_k: "kho lưu trữ", crl_k: "danh sách thu hồi", crl_due_k: "danh sách thu hồi sắp hết hạn",
    collecting: "Đang thu thập số liệu (mỗi 2 giây)…",
    stale: "Số liệu dưới đây đã cũ, nút không trả lời được", timeout: "quá 10 giây không có trả lời",
  },
  en: {
    alerts: "Alerts", tree: "Federation", throughput: "Throughput (messages/s)",
    accepted: "stored (documents, receipts, statuses)", delivered: "delivered to agencies on this node", refused: "refused",
    search: "Find a document", find: "Find", queues: "Queues per agency",
    agency: "Agency", waiting: "Waiting", oldest: "Oldest", overdue: "Overdue documents",
    dead: "Refused for good (truc requeue once the cause is fixed)", recipients: "Recipients",
    queue: "Queue", refused_at: "Refused at", why: "Why", first: "first", of: "of",
    from: "From", priority: "Priority", deadline: "Deadline", state: "State",
    certs: "Certificates", subject: "Subject", expires: "Expires", left: "Left",
    logout: "Sign out", none: "None", no_alerts: "No alerts",
    up: "up", down: "down", unknown: "unknown", parked: "parked", queued: "queued",
    days: "days", updated: "Updated", latency: "Delivery latency",
    not_found: "Not found", refused: "Refused", at: "At", node: "Node", step: "Step", detail: "Detail",
    version: "version", cert: "certificate", seen: "seen", hub: "hub", relay: "relay", edge: "edge",
    overdue_k: "overdue", link_down_k: "link down", cert_expiry_k: "certificate expiry",
    disk_k: "disk", audit_k: "audit chain", store_k: "store", crl_k: "revocation list", crl_due_k: "revocation list due",
    collecting: "Collecting samples (every 2 seconds)…",
    stale: "What is shown below is out of date: the node cannot answer", timeout: "no answer within 10 s",
  },
};

let lang = localStorage.getItem("truc-lang") || "vi";
let last = null;
let lastTrace = null;
const t = (k) => (I18N[lang] && I18N[lang][k]) || k;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function time(ms) {
  if (!ms) return "–";
  // Vietnam local time, as edXML and the CLI show it.
  const d = new Date(ms + 7 * 3600 * 1000);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

function age(ms, now) {
  if (!ms) return "–";
  let s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function applyLang() {
  document.documentElement.lang = lang;
  $("lang").textContent = lang === "vi" ? "EN" : "VI";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  if (last) render(last);
  if (lastTrace) renderTrace(lastTrace);
}

function linkState(n) {
  if (n.link === "up" || n.link.startsWith("up to")) return "up";
  if (n.link === "down" || n.link.startsWith("down to")) return "down";
  if (n.link === "" && !n.parent) return "up"; // the root of what we see
  return "unknown";
}

function renderTree(v) {
  const ul = $("tree");
  ul.replaceChildren();
  const kids = {};
  for (const n of v.tree) (kids[n.parent] = kids[n.parent] || []).push(n);
  const add = (n, parentEl, depth) => {
    const state = linkState(n);
    const li = el("li", { "data-node": n.node, "data-link": state, class: "n " + state },
      el("span", { class: "dot", title: t(state) }),
      el("strong", {}, n.node),
      " ",
      el("span", { class: "role" }, t(n.role || "edge")),
      " ",
      el("span", { class: "state" }, t(state)),
      n.agencies.length ? el("div", { class: "agencies" }, n.agencies.join(" · ")) : null,
      el("div", { class: "facts muted" }, [
        n.version ? t("version") + " " + n.version : "",
        n.cert_not_after_ms ? t("cert") + " " + time(n.cert_not_after_ms).slice(0, 10) : "",
        n.last_seen_ms ? t("seen") + " " + age(n.last_seen_ms, v.now_ms) : "",
        n.down_since_ms && state === "down" ? t("down") + " " + age(n.down_since_ms, v.now_ms) : "",
        n.queue_depth ? t("waiting") + " " + n.queue_depth : "",
      ].filter(Boolean).join(" · ")),
    );
    parentEl.append(li);
    const children = (kids[n.node] || []).filter((c) => c !== n);
    if (children.length) {
      const sub = el("ul", {});
      li.append(sub);
      for (const c of children) add(c, sub, depth + 1);
    }
  };
  for (const root of v.tree.filter((n) => !n.parent)) add(root, ul, 0);
}

function renderChart(v) {
  const box = $("chart");
  box.replaceChildren();
  const s = v.samples;
  const W = 560, H = 160, P = 28;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  if (s.length < 2) {
    box.append(el("p", { class: "muted" }, t("collecting")));
    return;
  }
  const series = { accepted: [], delivered: [], refused: [] };
  for (let i = 1; i < s.length; i++) {
    const dt = Math.max(1, s[i].at_ms - s[i - 1].at_ms) / 1000;
    for (const k of Object.keys(series)) series[k].push([s[i].at_ms, Math.max(0, s[i][k] - s[i - 1][k]) / dt]);
  }
  const max = Math.max(1, ...Object.values(series).flat().map((p) => p[1]));
  const t0 = s[1].at_ms, t1 = s[s.length - 1].at_ms;
  const x = (ms) => P + ((ms - t0) / Math.max(1, t1 - t0)) * (W - P - 4);
  const y = (r) => H - 16 - (r / max) * (H - 28);
  const line = (x1, y1, x2, y2, cls) => {
    const l = document.createElementNS(svg.namespaceURI, "line");
    Object.entries({ x1, y1, x2, y2 }).forEach(([k, val]) => l.setAttribute(k, val));
    l.setAttribute("class", cls);
    svg.append(l);
  };
  line(P, H - 16, W - 4, H - 16, "axis");
  const label = (txt, lx, ly) => {
    const e = document.createElementNS(svg.namespaceURI, "text");
    e.setAttribute("x", lx); e.setAttribute("y", ly); e.setAttribute("class", "tick");
    e.textContent = txt;
    svg.append(e);
  };
  label(max.toFixed(max < 10 ? 1 : 0), 2, 14);
  label("0", 2, H - 16);
  label(time(t1).slice(11, 16), W - 40, H - 2);
  for (const [k, pts] of Object.entries(series)) {
    const p = document.createElementNS(svg.namespaceURI, "polyline");
    p.setAttribute("points", pts.map(([ms, r]) => `${x(ms).toFixed(1)},${y(r).toFixed(1)}`).join(" "));
    p.setAttribute("class", "series " + k);
    svg.append(p);
  }
  box.append(svg);
}

function rows(tbody, list, cells) {
  tbody.replaceChildren();
  if (!list.length) {
    const n = tbody.closest("table").tHead.rows[0].cells.length;
    tbody.append(el("tr", {}, el("td", { colSpan: n, class: "muted" }, t("none"))));
    return;
  }
  for (const item of list) tbody.append(el("tr", {}, ...cells(item).map((c) => el("td", {}, c))));
}

// " (200 first of 31,000)" when a list is cut, " (12)" otherwise.
function shownOf(shown, total) {
  if (total > shown) return ` (${shown} ${t("first")} ${t("of")} ${total})`;
  return total ? ` (${total})` : "";
}

function render(v) {
  last = v;
  $("node").textContent = `${v.node} · ${t(v.role)} · ${v.version}`;
  $("updated").textContent = `${t("updated")} ${time(v.now_ms).slice(11)}`;
  if (v.operator) $("who").textContent = `${v.operator.name} (${v.operator.role})`;
  const al = $("alerts");
  al.replaceChildren();
  if (!v.alerts.length) al.append(el("li", { class: "ok" }, t("no_alerts")));
  for (const a of v.alerts) {
    al.append(el("li", { class: "alert " + a.kind, "data-alert": a.kind },
      el("strong", {}, t(a.kind + "_k")), " ", a.subject, " — ", a.detail));
  }
  renderTree(v);
  renderChart(v);
  const l = v.latency;
  $("latency").textContent = l.count
    ? `${t("latency")}: p50 ${l.p50_s.toFixed(2)} s · p90 ${l.p90_s.toFixed(2)} s · p99 ${l.p99_s.toFixed(2)} s (n=${l.count})`
    : "";
  rows($("queues").tBodies[0], v.queues, (q) => [q.recipient, q.depth, age(q.oldest_ms, v.now_ms)]);
  rows($("overdue").tBodies[0], v.overdue, (o) => [
    o.recipient, o.doc_id, o.from, o.priority, time(o.deadline_ms), t(o.parked ? "parked" : "queued"),
  ]);
  // Fields a node older than this page does not send are empty, not an error.
  const dead = v.dead || [];
  rows($("dead").tBodies[0], dead, (d) => [
    time(d.at_ms), d.doc_id, d.from, (d.recipients || []).join(", "), d.queue, `${d.code}: ${d.reason}`,
  ]);
  $("dead-count").textContent = shownOf(dead.length, v.dead_total ?? dead.length);
  $("overdue-count").textContent = shownOf(v.overdue.length, v.overdue_total ?? v.overdue.length);
  rows($("certs").tBodies[0], v.certificates, (c) => {
    const days = Math.floor((c.not_after_ms - v.now_ms) / 86400000);
    return [c.subject, time(c.not_after_ms).slice(0, 10), days + " " + t("days")];
  });
}

// What is on screen is old: say so above everything and grey it out, until
// an answer comes again.
function stale(why) {
  const b = $("stale");
  if (why) {
    b.textContent = `${t("stale")}: ${why}`;
    b.hidden = false;
    document.body.classList.add("is-stale");
  } else {
    b.hidden = true;
    document.body.classList.remove("is-stale");
  }
}

const POLL_MS = 2000;
const TIMEOUT_MS = 10000;

// A signal that aborts a request after TIMEOUT_MS (AbortSignal.timeout where
// the browser has it, a timer elsewhere).
function deadline() {
  if (typeof AbortSignal.timeout === "function") return AbortSignal.timeout(TIMEOUT_MS);
  const c = new AbortController();
  setTimeout(() => c.abort(new DOMException("timeout", "TimeoutError")), TIMEOUT_MS);
  return c.signal;
}

// One request at a time: the next poll is planned when this one is over, so
// a slow node is not sent more while it is still answering.
async function poll() {
  try {
    const r = await fetch("/api/overview", {
      credentials: "same-origin", cache: "no-store", signal: deadline(),
    });
    if (r.status === 401 || r.status === 403) {
      location.reload();
      return;
    }
    if (r.ok) {
      render(await r.json());
      stale(null);
    } else {
      const v = await r.json().catch(() => ({}));
      stale(`${r.status} ${v.message || r.statusText}`);
    }
    // The trace on screen stays live: steps still to come show up (its own
    // errors are the trace's, not the node's).
    await loadTrace().catch(() => {});
  } catch (e) {
    stale(e.name === "TimeoutError" ? t("timeout") : String(e));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// The document whose trace is shown, if any, and its sender when named.
let traceId = null;
let traceFrom = "";

async function loadTrace() {
  const [id, from] = [traceId, traceFrom];
  if (!id) return;
  const query = from ? "?from=" + encodeURIComponent(from) : "";
  const r = await fetch("/api/trace/" + encodeURIComponent(id) + query, {
    credentials: "same-origin", cache: "no-store", signal: deadline(),
  });
  const v = await r.json();
  // An answer to an earlier search (another document, or another sender).
  if (id !== traceId || from !== traceFrom) return;
  lastTrace = { ok: r.ok, status: r.status, v };
  renderTrace(lastTrace);
}

async function search(ev) {
  ev.preventDefault();
  traceId = $("doc").value.trim() || null;
  traceFrom = $("from").value.trim();
  lastTrace = null;
  $("trace").replaceChildren();
  await loadTrace();
}

function renderTrace({ ok, status, v }) {
  const box = $("trace");
  box.replaceChildren();
  if (!ok) {
    const label = status === 404 ? t("not_found") : t("refused");
    box.append(el("p", { class: "error", id: "trace-error" }, `${label}: ${v.message}`));
    return;
  }
  const table = el("table", { id: "trace-table" },
    el("thead", {}, el("tr", {}, ...["at", "node", "step", "detail"].map((k) => el("th", {}, t(k))))));
  const body = el("tbody", {});
  for (const s of v.steps) {
    body.append(el("tr", { "data-step": s.step }, el("td", {}, time(s.at_ms)), el("td", {}, s.node),
      el("td", {}, s.step), el("td", {}, s.detail)));
  }
  table.append(body);
  box.append(el("p", { class: "muted", id: "trace-caption" }, `${v.doc_id} — ${v.node}`), table);
}

document.addEventListener("DOMContentLoaded", () => {
  $("lang").addEventListener("click", () => {
    lang = lang === "vi" ? "en" : "vi";
    localStorage.setItem("truc-lang", lang);
    applyLang();
  });
  $("search").addEventListener("submit", search);
  applyLang();
  poll();
});
