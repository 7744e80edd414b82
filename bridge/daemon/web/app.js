// The cdc-bridge status page: polls api/overview and redraws. Plain DOM, no framework.
// Every value from the daemon is set as text (textContent), never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const num = new Intl.NumberFormat("en-US");
  const dec = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  // -- formatting ------------------------------------------------------------------

  function fmtNum(n) {
    return n === null || n === undefined ? "–" : num.format(n);
  }

  function fmtRate(r) {
    return r === null || r === undefined ? "–" : `${dec.format(r)}/s`;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${dec.format(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${String(m % 60).padStart(2, "0")} m`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function fmtBytes(b) {
    if (b === null || b === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
    return `${i ? dec.format(b) : b} ${units[i]}`;
  }

  function fmtLag(lag) {
    const parts = Object.entries(lag || {}).map(([unit, v]) => {
      if (unit === "seconds") return fmtDuration(v);
      if (unit === "bytes") return fmtBytes(v);
      return `${dec.format(v)} ${unit}`;
    });
    return parts.length ? parts.join(" · ") : "–";
  }

  function fmtAgo(ms, nowMs) {
    if (!ms) return "–";
    return `${fmtDuration(Math.max(0, (nowMs - ms) / 1000))} ago`;
  }

  // -- DOM helpers -----------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function badge(state, field) {
    return el("span", { class: "badge", "data-state": state, "data-field": field, text: state });
  }

  function stats(target, rows) {
    const dl = document.getElementById(target);
    dl.replaceChildren(...rows.flatMap(([label, value, field, tone]) => [
      el("dt", { text: label }),
      el("dd", { "data-field": field, "data-tone": tone }, value),
    ]));
  }

  function empty(text) {
    return el("p", { class: "empty", text });
  }

  function sparkline(values) {
    const w = 140, h = 32, pad = 2;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const pts = values.slice(-60);
    const max = Math.max(1, ...pts);
    svg.setAttribute("aria-label", `throughput, last ${pts.length} s, peak ${dec.format(max)}/s`);
    if (pts.length < 2) return svg;
    const step = (w - 2 * pad) / (pts.length - 1);
    const xy = pts.map((v, i) => [pad + i * step, h - pad - (v / max) * (h - 2 * pad)]);
    const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    const area = document.createElementNS(SVG_NS, "polygon");
    area.setAttribute("points", `${pad},${h - pad} ${line} ${w - pad},${h - pad}`);
    area.setAttribute("class", "spark-area");
    const poly = document.createElementNS(SVG_NS, "polyline");
    poly.setAttribute("points", line);
    poly.setAttribute("class", "spark-line");
    svg.append(area, poly);
    return svg;
  }

  function peakLabel(values) {
    const pts = values.slice(-60);
    return pts.length ? `events/s, peak ${dec.format(Math.max(...pts))}` : "events/s";
  }

  // -- sections --------------------------------------------------------------------

  function renderHeader(d) {
    const ready = document.getElementById("ready");
    ready.dataset.state = d.ready ? "ready" : "not-ready";
    ready.textContent = d.ready ? "ready" : "not ready";
    const up = fmtDuration((d.now_ms - d.started_ms) / 1000);
    document.getElementById("meta").textContent = `pid ${d.pid} · up ${up}`;
  }

  function renderAdapters(d) {
    const names = Object.keys(d.adapters).sort();
    const box = document.getElementById("adapters");
    if (!names.length) { box.replaceChildren(empty("no adapters configured")); return; }
    box.replaceChildren(...names.map((name) => {
      const a = d.adapters[name];
      const failed = Object.keys(a.failed_tables || {});
      const tables = ((d.schemas || {}).tables || {})[name] || {};
      const paused = Object.keys(tables).sort().filter((t) => tables[t].paused);
      const versions = Object.keys(tables).sort()
        .map((t) => `${t} v${tables[t].version}`).join(", ");
      return el("article", { class: "adapter", "data-adapter": name },
        el("div", { class: "adapter-head" },
          el("span", { class: "name", "data-field": "name", text: name }),
          el("span", { class: "type muted", text: a.type }),
          badge(a.state, "state")),
        el("div", { class: "adapter-body" },
          el("dl", { class: "mini" },
            el("dt", { text: "events" }), el("dd", { "data-field": "events", text: fmtNum(a.events) }),
            el("dt", { text: "rate" }), el("dd", { "data-field": "rate", text: fmtRate(a.rate_per_s) }),
            el("dt", { text: "lag" }), el("dd", { "data-field": "lag", text: fmtLag(a.lag) }),
            el("dt", { text: "restarts" }), el("dd", { "data-field": "restarts", text: fmtNum(a.restarts) }),
            el("dt", { text: "last batch" }),
            el("dd", { "data-field": "last-batch", text: fmtAgo(a.last_batch_ms, d.now_ms) })),
          el("div", { class: "spark-box" }, sparkline(a.throughput || []),
            el("span", { class: "muted small", text: peakLabel(a.throughput || []) }))),
        a.last_error ? el("p", { class: "error", "data-field": "last-error", text: a.last_error }) : null,
        failed.length ? el("p", { class: "error", text: `tables set aside: ${failed.join(", ")}` }) : null,
        versions ? el("p", { class: "muted small", "data-field": "schemas", text: `schemas: ${versions}` }) : null,
        ...paused.map((t) => el("p", { class: "error", "data-field": "paused",
          text: `${t} paused, ${fmtNum(tables[t].held)} events held: ${tables[t].paused}` })));
    }));
  }

  function renderOutbox(d) {
    const o = d.outbox || {};
    const age = o.oldest_age_s;
    stats("outbox", [
      ["pending", fmtNum(o.pending), "pending", o.pending ? "warn-soft" : null],
      ["oldest pending", o.pending ? fmtDuration(age) : "–", "oldest-age",
        age !== null && age > 60 ? "bad" : null],
      ["size", fmtBytes(o.size_bytes), "size", null],
    ]);
  }

  function renderRelay(d) {
    const r = d.relay;
    const lat = r.latency || {};
    stats("relay", [
      ["state", badge(r.state, "relay-state"), "state-box", null],
      ["published", fmtNum(r.published), "published", null],
      ["rate", fmtRate(r.rate_per_s), "rate", null],
      ["latency (mean / p95 ≤)",
        lat.count ? `${fmtDuration(lat.mean_s)} / ${lat.p95_s === null ? "> 60 s" : fmtDuration(lat.p95_s)}` : "–",
        "latency", null],
      ["duplicates", fmtNum(r.duplicates), "duplicates", null],
      ["dead-lettered", fmtNum(r.dead_lettered), "dead-lettered", r.dead_lettered ? "bad" : null],
      ["retries", fmtNum(r.retries), "retries", null],
    ]);
  }

  function renderNats(d) {
    const js = d.jetstream || {};
    const s = js.stream;
    stats("nats", [
      ["connection", badge(d.nats.connected ? "connected" : "disconnected", "nats-state"),
        "connection", null],
      ["servers", (d.nats.servers || []).length
        ? el("span", {}, ...d.nats.servers.map((u) => el("span", { class: "line", text: u })))
        : "–", "servers", null],
      ["stream", s ? s.name : "–", "stream", null],
      ["messages", s ? fmtNum(s.messages) : "–", "stream-messages", null],
      ["stored", s ? fmtBytes(s.bytes) : "–", "stream-bytes", null],
      ["last sequence", s ? fmtNum(s.last_seq) : "–", "last-seq", null],
    ]);
  }

  function jsError(js) {
    return js && js.error ? el("p", { class: "error", text: js.error }) : null;
  }

  function renderConsumers(d) {
    const js = d.jetstream || {};
    const box = document.getElementById("consumers");
    const list = js.consumers || [];
    if (!list.length) {
      box.replaceChildren(jsError(js) || empty("no durable consumer on the stream"));
      return;
    }
    const head = el("tr", {}, ...["name", "pending", "ack pending", "ack floor"].map(
      (t, i) => el("th", { class: i ? "num" : null, text: t })));
    const rows = list.map((c) => el("tr", { "data-consumer": c.name },
      el("td", { "data-field": "name", title: c.filter ? `filter ${c.filter}` : null, text: c.name }),
      el("td", { class: "num", "data-field": "pending", text: fmtNum(c.pending) }),
      el("td", { class: "num", "data-field": "ack-pending", text: fmtNum(c.ack_pending) }),
      el("td", { class: "num", "data-field": "ack-floor", text: fmtNum(c.ack_floor) })));
    box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)),
      jsError(js) || "");
  }

  function renderDeadLetters(d) {
    const js = d.jetstream || {};
    const box = document.getElementById("dead-letters");
    const dl = js.dead_letters;
    if (!dl || !dl.latest.length) {
      box.replaceChildren(jsError(js) ||
        empty(dl ? `none in ${dl.stream}` : "no dead-letter stream yet"));
      return;
    }
    const items = dl.latest.map((m) => el("li", { "data-seq": m.seq },
      el("div", { class: "dl-head" },
        el("span", { class: "subject", "data-field": "subject", text: m.subject }),
        el("span", { class: "muted small", text: `#${m.seq} · ${fmtAgo(Date.parse(m.time), d.now_ms)}` })),
      el("div", { class: "reason", "data-field": "reason", text: m.reason || "(no reason given)" }),
      m.original_subject ? el("div", { class: "muted small", text: `from ${m.original_subject}` }) : null));
    box.replaceChildren(
      el("p", { class: "muted small", "data-field": "dlq-total",
        text: `${fmtNum(dl.total)} in ${dl.stream}; newest first` }),
      el("ul", { class: "dead-letters" }, ...items), jsError(js) || "");
  }

  function renderSnapshots(d) {
    const box = document.getElementById("snapshots");
    const list = d.snapshots || [];
    if (!list.length) { box.replaceChildren(empty("no re-snapshot requested")); return; }
    box.replaceChildren(...list.map((s) => {
      const pct = s.total ? Math.min(100, (100 * s.rows) / s.total) : (s.status === "done" ? 100 : null);
      const bar = el("div", { class: "bar", "data-indeterminate": pct === null && s.status === "running" });
      const fill = el("span", {});
      if (pct !== null) fill.style.width = `${pct.toFixed(1)}%`;
      bar.append(fill);
      const rows = s.total ? `${fmtNum(s.rows)} / ${fmtNum(s.total)} rows` : `${fmtNum(s.rows)} rows`;
      const extra = [s.rate_per_s ? fmtRate(s.rate_per_s) : null,
        s.eta_s !== null && s.status === "running" ? `ETA ${fmtDuration(s.eta_s)}` : null]
        .filter(Boolean).join(" · ");
      return el("div", { class: "snapshot", "data-request": s.id },
        el("div", { class: "snap-head" },
          el("span", { class: "name", text: `#${s.id} ${s.adapter}` }),
          el("span", { class: "muted small", text: (s.tables || ["all tables"]).join(", ") }),
          badge(s.status, "status")),
        bar,
        el("div", { class: "snap-foot small" },
          el("span", { "data-field": "rows", text: rows }),
          el("span", { class: "muted", "data-field": "eta", text: extra || (s.message || "") })));
    }));
  }

  function render(d) {
    renderHeader(d);
    renderAdapters(d);
    renderOutbox(d);
    renderRelay(d);
    renderNats(d);
    renderConsumers(d);
    renderDeadLetters(d);
    renderSnapshots(d);
  }

  // -- polling ---------------------------------------------------------------------

  function setLive(ok, text) {
    const live = document.getElementById("live");
    live.dataset.live = ok ? "yes" : "no";
    document.getElementById("live-text").textContent = text;
    document.body.classList.toggle("stale", !ok);
  }

  let updates = 0;
  async function poll() {
    try {
      const resp = await fetch("api/overview", { cache: "no-store" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const data = await resp.json();
      render(data);
      updates += 1;
      document.body.dataset.updates = String(updates);
      setLive(true, `live · ${new Date(data.now_ms).toLocaleTimeString()}`);
    } catch (err) {
      setLive(false, `daemon unreachable (${err.message}); retrying`);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
