// Borealis web UI: a single-page app over the scheduler's JSON API (/api/v1, see
// docs/http-api.md). Plain JavaScript, no build step, no dependencies.
//
// - Hash routes: #/roles, #/role/R, #/job/R/E/N, #/job/R/E/N/I, #/logs/TASK/stdout,
//   #/updates, #/update/R/E/N/ID, #/maintenance, #/quotas, #/cluster.
// - Each page builds its skeleton once (filters, pagers, tables) and refresh() only updates
//   data in place, every POLL_MS while the tab is visible: filter text, focus and scroll stay.
// - Every list is paged server-side (offset/limit); tables show PAGE_SIZE rows.
// - Text from the API only ever reaches the page as text nodes or attributes (no innerHTML).
// - A token (localStorage) is sent as `Authorization: Bearer`; 401 opens the sign-in dialog,
//   other errors show the API's one-line `error` in the banner.
"use strict";

(function () {
  const POLL_MS = 2000;
  const PAGE_SIZE = 100;
  const LOG_TAIL_BYTES = 65536;
  const LOG_KEEP_CHARS = 2 * 1024 * 1024;
  const TOKEN_KEY = "borealis.token";
  const TASK_STATES = [
    "INIT", "PENDING", "THROTTLED", "ASSIGNED", "STARTING", "RUNNING", "FINISHED", "FAILED",
    "KILLING", "KILLED", "RESTARTING", "PREEMPTING", "DRAINING", "PARTITIONED", "LOST",
  ];
  const HOST_MODES = ["NONE", "SCHEDULED", "DRAINING", "DRAINED"];
  const ACTIVE_STATES = new Set([
    "ASSIGNED", "STARTING", "RUNNING", "KILLING", "RESTARTING", "PREEMPTING", "DRAINING",
    "PARTITIONED",
  ]);

  // ------------------------------------------------------------------ DOM helpers

  /** Builds an element. attrs: class, text, on<event>, anything else as an attribute.
   *  Children: nodes, strings (as text), arrays, null/false (skipped). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = String(v);
        else if (k.startsWith("on") && typeof v === "function") {
          el.addEventListener(k.slice(2), v);
        } else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else if (c instanceof Node) el.appendChild(c);
      else el.appendChild(document.createTextNode(String(c)));
    }
  }

  function setChildren(el, ...children) {
    el.replaceChildren();
    append(el, children);
  }

  const enc = encodeURIComponent;

  function jobHash(role, env, name) {
    return `#/job/${enc(role)}/${enc(env)}/${enc(name)}`;
  }

  function jobKeyParts(key) {
    const [role, env, ...rest] = String(key).split("/");
    return [role || "", env || "", rest.join("/")];
  }

  function jobKeyHash(key) {
    return jobHash(...jobKeyParts(key));
  }

  function link(href, text, attrs) {
    return h("a", Object.assign({ href }, attrs || {}), text);
  }

  function mono(text, attrs) {
    return h("span", Object.assign({ class: "mono" }, attrs || {}), text);
  }

  function muted(text) {
    return h("span", { class: "muted" }, text);
  }

  // ------------------------------------------------------------------ formatting

  function num(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
  }

  function plural(n, one, many) {
    return `${num(n)} ${n === 1 ? one : (many || `${one}s`)}`;
  }

  function pad(n, w) {
    return String(n).padStart(w || 2, "0");
  }

  function fmtTime(ms) {
    if (!ms) return "—";
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "—";
    let s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    let m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return s ? `${m}m ${s}s` : `${m}m`;
    let hr = Math.floor(m / 60);
    m %= 60;
    if (hr < 24) return m ? `${hr}h ${m}m` : `${hr}h`;
    const d = Math.floor(hr / 24);
    hr %= 24;
    return hr ? `${d}d ${hr}h` : `${d}d`;
  }

  function ago(ms) {
    if (!ms) return "—";
    const delta = Date.now() - ms;
    return delta >= 0 ? `${fmtDuration(delta)} ago` : `in ${fmtDuration(-delta)}`;
  }

  function timeCell(ms) {
    if (!ms) return muted("—");
    return h("span", { title: new Date(ms).toISOString() }, fmtTime(ms),
      h("span", { class: "muted small" }, ` (${ago(ms)})`));
  }

  function fmtMib(mib) {
    if (mib === null || mib === undefined) return "—";
    if (mib >= 1024 * 1024) return `${(mib / 1024 / 1024).toFixed(1)} TiB`;
    if (mib >= 1024) return `${(mib / 1024).toFixed(1)} GiB`;
    return `${mib} MiB`;
  }

  function fmtCpu(c) {
    if (c === null || c === undefined) return "—";
    return `${Number(c).toLocaleString("en-US", { maximumFractionDigits: 3 })} cores`;
  }

  function fmtBytes(n) {
    if (n >= 1024 ** 4) return `${(n / 1024 ** 4).toFixed(1)} TiB`;
    if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)} GiB`;
    if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
    if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${n} B`;
  }

  /** CPU time (ms): seconds with two decimals below a minute, then as a duration. */
  function fmtCpuTime(ms) {
    if (ms === null || ms === undefined) return "—";
    return ms < 60000 ? `${(ms / 1000).toFixed(2)} s` : fmtDuration(ms);
  }

  /** An ended task's usage (`usage` of an instance, null when none), one field of it. */
  function usageCell(i, field) {
    if (!i.usage) return muted("—");
    if (field === "cpu_time_ms") return fmtCpuTime(i.usage.cpu_time_ms);
    const n = i.usage[field];
    return field === "disk_bytes" && !n ? muted("not measured") : fmtBytes(n);
  }

  const RESOURCES = [
    ["cpu", "CPU", fmtCpu],
    ["ram_mib", "RAM", fmtMib],
    ["disk_mib", "Disk", fmtMib],
  ];

  // ------------------------------------------------------------------ widgets

  function stateClass(state) {
    return "state-" + String(state || "UNKNOWN").toLowerCase().replace(/[^a-z0-9]+/g, "-");
  }

  /** A colored badge for a task state, host mode or update status. */
  function badge(state, extra) {
    return h("span", Object.assign({
      class: `badge ${stateClass(state)}`, "data-state": state,
    }, extra || {}), state || "UNKNOWN");
  }

  /** Badges with counts for a {STATE: n} map, in lifecycle order. onPick(state): clickable. */
  function stateCounts(counts, onPick) {
    const known = TASK_STATES.filter((s) => counts && counts[s]);
    const other = Object.keys(counts || {}).filter((s) => !TASK_STATES.includes(s));
    const all = known.concat(other);
    if (!all.length) return muted("no tasks");
    return h("span", { class: "counts" }, all.map((s) => {
      const attrs = { class: `badge ${stateClass(s)}`, "data-state": s, "data-count": counts[s] };
      const inner = [s, h("b", null, num(counts[s]))];
      if (onPick) {
        return h("button", Object.assign(attrs, {
          type: "button", title: `Show ${s} instances`, onclick: () => onPick(s),
        }), inner);
      }
      return h("span", attrs, inner);
    }));
  }

  /** A bar: used of total, with its text. */
  function bar(used, total, text, testid, progress) {
    const frac = total > 0 ? used / total : (used > 0 ? 1 : 0);
    const pct = Math.min(100, Math.max(0, frac * 100));
    const level = progress ? "progress" : frac > 1 ? "over" : frac >= 0.9 ? "high" : frac >= 0.7 ? "mid" : "low";
    return h("div", { class: "bar-wrap", "data-testid": testid, title: `${(frac * 100).toFixed(1)}%` },
      h("div", { class: `bar ${level}` },
        h("div", { class: "fill", style: `width:${pct.toFixed(1)}%` })),
      h("div", { class: "bar-text" }, text));
  }

  function resourceBar(key, used, total, testid) {
    const f = RESOURCES.find((r) => r[0] === key)[2];
    return bar(used, total, `${f(used)} / ${f(total)}`, testid);
  }

  /** A table whose rows are kept by key: an unchanged row is not rebuilt. */
  function table(columns, opts) {
    const tbody = h("tbody");
    const el = h("table", { class: "grid", "data-testid": opts.testid, "data-loaded": "false" },
      h("thead", null, h("tr", null, columns.map((c) => h("th", { class: c.class }, c.title)))),
      tbody);
    const empty = h("div", { class: "empty", hidden: true, "data-testid": `${opts.testid}-empty` },
      opts.empty || "Nothing here.");
    let rows = new Map();
    return {
      el: h("div", { class: "table-wrap" }, el, empty),
      set(items) {
        const next = new Map();
        const ordered = [];
        for (const item of items) {
          const key = String(opts.key(item));
          const sig = JSON.stringify(item);
          let row = rows.get(key);
          if (!row || row.sig !== sig) {
            const tr = h("tr", opts.rowAttrs ? opts.rowAttrs(item) : null,
              columns.map((c) => h("td", { class: c.class }, c.cell(item))));
            row = { sig, tr };
          }
          next.set(key, row);
          ordered.push(row.tr);
        }
        const current = Array.from(tbody.children);
        if (current.length !== ordered.length || current.some((tr, i) => tr !== ordered[i])) {
          tbody.replaceChildren(...ordered);
        }
        rows = next;
        empty.hidden = items.length > 0;
        el.setAttribute("data-loaded", "true");
        el.setAttribute("data-rows", String(items.length));
      },
    };
  }

  /** Pager controls for a server-side page: "1–100 of 12,345" and first/prev/next/last. */
  function pager(testid, onOffset) {
    let state = { total: 0, offset: 0 };
    const info = h("span", { class: "pager-info", "data-testid": `${testid}-info` });
    const mk = (label, test, fn) => h("button", {
      type: "button", class: "ghost", "data-testid": `${testid}-${test}`,
      onclick: () => onOffset(fn(state)),
    }, label);
    const lastOffset = (s) => Math.max(0, Math.floor((s.total - 1) / PAGE_SIZE) * PAGE_SIZE);
    const first = mk("« First", "first", () => 0);
    const prev = mk("‹ Prev", "prev", (s) => Math.max(0, s.offset - PAGE_SIZE));
    const next = mk("Next ›", "next", (s) => s.offset + PAGE_SIZE);
    const last = mk("Last »", "last", lastOffset);
    const el = h("div", { class: "pager", "data-testid": testid, hidden: true }, info, first, prev, next, last);
    return {
      el,
      set(total, offset, count) {
        state = { total, offset };
        info.textContent = total === 0 ? "0 of 0"
          : `${num(offset + (count ? 1 : 0))}–${num(offset + count)} of ${num(total)}`;
        first.disabled = prev.disabled = offset <= 0;
        next.disabled = last.disabled = offset + PAGE_SIZE >= total;
        el.hidden = total <= PAGE_SIZE && offset === 0;
      },
    };
  }

  /** A search box that calls onChange(text) after typing pauses. */
  function searchBox(testid, placeholder, value, onChange) {
    let timer = null;
    const input = h("input", {
      type: "search", class: "search", placeholder, "data-testid": testid,
      spellcheck: "false", autocomplete: "off",
    });
    input.value = value || "";
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => onChange(input.value.trim()), 250);
    });
    return input;
  }

  function selectBox(testid, options, value, onChange) {
    const sel = h("select", { "data-testid": testid },
      options.map(([v, label]) => h("option", { value: v }, label)));
    sel.value = value || "";
    sel.addEventListener("change", () => onChange(sel.value));
    return sel;
  }

  function card(title, ...body) {
    return h("section", { class: "card" }, title ? h("h2", null, title) : null, body);
  }

  function stat(label, testid) {
    const value = h("div", { class: "stat-value", "data-testid": testid }, "—");
    const sub = h("div", { class: "stat-sub" });
    return { el: h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), value, sub), value, sub };
  }

  function breadcrumbs(...parts) {
    const out = [];
    parts.forEach((p, i) => {
      if (i) out.push(h("span", { class: "sep" }, "/"));
      out.push(Array.isArray(p) ? link(p[0], p[1]) : h("span", { class: "here" }, p));
    });
    return h("nav", { class: "crumbs", "data-testid": "breadcrumbs" }, out);
  }

  function pageHeader(title, crumbs, extra) {
    return h("div", { class: "page-head" },
      crumbs || null,
      h("div", { class: "page-title-row" },
        h("h1", { "data-testid": "page-title" }, title), extra || null));
  }

  function toolbar(...items) {
    return h("div", { class: "toolbar" }, items);
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function setToken(t) {
    try {
      if (t) localStorage.setItem(TOKEN_KEY, t);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage off: the token lasts this page */ }
  }

  function query(params) {
    const parts = [];
    for (const [k, v] of Object.entries(params || {})) {
      if (v === null || v === undefined || v === "") continue;
      parts.push(`${enc(k)}=${enc(v)}`);
    }
    return parts.length ? `?${parts.join("&")}` : "";
  }

  /** GET path: the JSON answer (or the Response with raw). Throws ApiError. */
  async function api(path, opts) {
    opts = opts || {};
    const headers = { Accept: opts.raw ? "text/plain" : "application/json" };
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    let res;
    try {
      res = await fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
    } catch (e) {
      throw new ApiError(0, "Network", `cannot reach the scheduler (${e.message})`);
    }
    if (!res.ok) {
      let body = null;
      try {
        body = await res.json();
      } catch (e) { /* not JSON */ }
      const err = new ApiError(res.status, (body && body.code) || `HTTP${res.status}`,
        (body && body.error) || `${res.status} ${res.statusText}`);
      if (res.status === 401) needLogin(err.message);
      throw err;
    }
    return opts.raw ? res : res.json();
  }

  /** Runs fns with at most `limit` in flight; their results in order. */
  async function inParallel(items, limit, fn) {
    const out = new Array(items.length);
    let i = 0;
    const worker = async () => {
      while (i < items.length) {
        const at = i++;
        try {
          out[at] = { ok: await fn(items[at]) };
        } catch (e) {
          out[at] = { err: e };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return out;
  }

  // ------------------------------------------------------------------ routing state

  /** The hash's path segments and query. */
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, q] = raw.split("?");
    const segs = path.split("/").filter((s) => s !== "").map((s) => {
      try {
        return decodeURIComponent(s);
      } catch (e) {
        return s;
      }
    });
    const params = {};
    new URLSearchParams(q || "").forEach((v, k) => { params[k] = v; });
    return { segs, params };
  }

  /** Rewrites the hash's query in place (no navigation, no history entry). */
  function saveParams(params) {
    const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
    const q = query(params);
    history.replaceState(null, "", `#${path}${q}`);
  }

  // ------------------------------------------------------------------ pages
  //
  // A page is { title, nav, el, refresh: async () => void }. refresh() fetches what the page
  // shows and updates it in place; it is called on mount, every POLL_MS, and after a filter or
  // pager change (pages call `this.poke()`, which the app sets).

  function rolesPage(params) {
    const st = { q: params.q || "", offset: Number(params.offset) || 0 };
    const p = { title: "Roles", nav: "roles" };
    const rolesPager = pager("roles-pager", (o) => { st.offset = o; save(); p.poke(); });
    const save = () => saveParams({ q: st.q, offset: st.offset || "" });
    const tbl = table([
      { title: "Role", cell: (r) => link(`#/role/${enc(r.role)}`, r.role,
        { "data-testid": `role-link-${r.role}`, class: "strong" }) },
      { title: "Jobs", class: "num", cell: (r) => num(r.jobs) },
      { title: "Tasks by state", cell: (r) => stateCounts(r.tasks_by_state) },
    ], { testid: "roles-table", key: (r) => r.role, empty: "No roles match." });
    const total = h("span", { class: "muted", "data-testid": "roles-total" });
    p.el = h("div", null,
      pageHeader("Roles", null, total),
      toolbar(searchBox("roles-filter", "Filter roles…", st.q, (v) => {
        st.q = v; st.offset = 0; save(); p.poke();
      }), rolesPager.el),
      card(null, tbl.el));
    p.refresh = async () => {
      const page = await api(`/api/v1/roles${query({ offset: st.offset, limit: PAGE_SIZE, q: st.q })}`);
      total.textContent = plural(page.total, "role");
      tbl.set(page.items);
      rolesPager.set(page.total, page.offset, page.items.length);
    };
    return p;
  }

  function jobKind(j) {
    if (j.cron) return h("span", { class: "tag cron", title: j.cron.schedule }, "cron");
    return j.is_service ? h("span", { class: "tag service" }, "service")
      : h("span", { class: "tag adhoc" }, "ad hoc");
  }

  function rolePage(role, params) {
    const st = { q: params.q || "", offset: Number(params.offset) || 0 };
    const p = { title: `Role ${role}`, nav: "roles" };
    const save = () => saveParams({ q: st.q, offset: st.offset || "" });
    const jobsPager = pager("jobs-pager", (o) => { st.offset = o; save(); p.poke(); });
    const tbl = table([
      { title: "Job", cell: (j) => link(jobHash(j.role, j.environment, j.name), j.name,
        { "data-testid": `job-link-${j.job_key}`, class: "strong" }) },
      { title: "Environment", cell: (j) => j.environment },
      { title: "Kind", cell: jobKind },
      { title: "Instances", class: "num", cell: (j) => num(j.instances) },
      { title: "Tasks by state", cell: (j) => stateCounts(j.tasks_by_state) },
      { title: "Update / cron", cell: (j) => [
        j.update ? link(`#/update/${jobKeyParts(j.job_key).map(enc).join("/")}/${j.update.id}`,
          badge(j.update.status), { title: `update ${j.update.id}` }) : null,
        j.cron ? h("span", { class: "small" }, mono(j.cron.schedule), " next ",
          timeCell(j.cron.next_run_unix_ms)) : null,
        !j.update && !j.cron ? muted("—") : null,
      ] },
    ], { testid: "jobs-table", key: (j) => j.job_key, empty: "No jobs match." });
    const total = h("span", { class: "muted", "data-testid": "jobs-total" });
    p.el = h("div", null,
      pageHeader(role, breadcrumbs(["#/roles", "roles"], role), total),
      toolbar(searchBox("jobs-filter", "Filter jobs…", st.q, (v) => {
        st.q = v; st.offset = 0; save(); p.poke();
      }), jobsPager.el),
      card(null, tbl.el));
    p.refresh = async () => {
      const page = await api(`/api/v1/jobs${query({
        role, q: st.q, offset: st.offset, limit: PAGE_SIZE,
      })}`);
      total.textContent = plural(page.total, "job");
      tbl.set(page.items);
      jobsPager.set(page.total, page.offset, page.items.length);
    };
    return p;
  }

  function instanceDetailText(i) {
    if (i.state === "PENDING" && i.pending_reason) {
      return h("span", { class: "pending-reason-inline" }, i.pending_reason);
    }
    return i.message ? h("span", { class: "small" }, i.message) : muted("");
  }

  function jobPage(role, env, name, params) {
    const key = `${role}/${env}/${name}`;
    const st = { state: params.state || "", offset: Number(params.offset) || 0 };
    const p = { title: key, nav: "roles" };
    const save = () => saveParams({ state: st.state, offset: st.offset || "" });
    const setState = (s) => {
      st.state = s; st.offset = 0; stateSel.value = s; save(); p.poke();
    };
    const instPager = pager("instances-pager", (o) => { st.offset = o; save(); p.poke(); });
    const stateSel = selectBox("state-filter",
      [["", "All states"]].concat(TASK_STATES.map((s) => [s, s])), st.state, setState);
    const tbl = table([
      { title: "Instance", class: "num", cell: (i) => link(`${jobHash(role, env, name)}/${i.instance}`,
        String(i.instance), { "data-testid": `instance-link-${i.instance}`, class: "strong" }) },
      { title: "Task", cell: (i) => mono(i.task_id) },
      { title: "State", cell: (i) => badge(i.state) },
      { title: "Host", cell: (i) => i.hostname || muted("—") },
      { title: "Age", cell: (i) => fmtDuration(i.age_ms) },
      { title: "Exit", class: "num", cell: (i) => (i.exit_code === null ? muted("—") : String(i.exit_code)) },
      { title: "Failures", class: "num", cell: (i) => num(i.failure_count) },
      { title: "Pending reason / message", class: "wide", cell: instanceDetailText },
    ], {
      testid: "instances-table", key: (i) => i.instance, empty: "No instances match.",
      rowAttrs: (i) => ({ "data-testid": `instance-row-${i.instance}`, "data-state": i.state }),
    });
    const summary = {
      instances: stat("Instances", "job-instances"),
      kind: stat("Kind", "job-kind"),
      update: stat("Update", "job-update"),
      cron: stat("Cron", "job-cron"),
    };
    const counts = h("div", { class: "summary-counts", "data-testid": "job-state-counts" });
    p.el = h("div", null,
      pageHeader(name, breadcrumbs(["#/roles", "roles"], [`#/role/${enc(role)}`, role], `${env}/${name}`),
        h("span", { class: "muted mono" }, key)),
      h("div", { class: "stats" }, Object.values(summary).map((s) => s.el)),
      card("Tasks by state", counts),
      toolbar(h("label", { class: "inline" }, "State ", stateSel), instPager.el),
      card(null, tbl.el));
    p.refresh = async () => {
      const d = await api(`/api/v1/jobs/${enc(role)}/${enc(env)}/${enc(name)}${query({
        offset: st.offset, limit: PAGE_SIZE, state: st.state,
      })}`);
      const j = d.job;
      summary.instances.value.textContent = num(j.instances);
      setChildren(summary.kind.value, jobKind(j));
      setChildren(summary.update.value, j.update
        ? link(`#/update/${enc(role)}/${enc(env)}/${enc(name)}/${j.update.id}`, badge(j.update.status))
        : muted("none"));
      setChildren(summary.update.sub, link(`#/updates?job=${enc(key)}`, "all updates"));
      setChildren(summary.cron.value, j.cron ? mono(j.cron.schedule) : muted("—"));
      setChildren(summary.cron.sub, j.cron
        ? [`next ${fmtTime(j.cron.next_run_unix_ms)} · ${j.cron.collision_policy}`] : []);
      setChildren(counts, stateCounts(j.tasks_by_state, setState));
      tbl.set(d.instances.items);
      instPager.set(d.instances.total, d.instances.offset, d.instances.items.length);
    };
    return p;
  }

  function portsText(ports) {
    const names = Object.keys(ports || {});
    if (!names.length) return muted("none");
    return names.map((n) => h("span", { class: "kv" }, h("span", { class: "muted" }, `${n}:`), mono(String(ports[n]))));
  }

  function logLinks(i, prefix) {
    if (!i.logs) return muted("not placed");
    return h("span", { class: "log-links" },
      link(`#/logs/${enc(i.task_id)}/stdout`, "stdout", { "data-testid": `${prefix}stdout-link`, class: "button" }),
      link(`#/logs/${enc(i.task_id)}/stderr`, "stderr", { "data-testid": `${prefix}stderr-link`, class: "button" }));
  }

  function timeline(events) {
    if (!events || !events.length) return muted("No events.");
    return h("ol", { class: "timeline", "data-testid": "events" }, events.map((e, idx) => {
      const next = events[idx + 1];
      return h("li", { "data-state": e.state, "data-testid": "event" },
        h("span", { class: `dot ${stateClass(e.state)}` }),
        h("div", { class: "event-head" }, badge(e.state),
          h("span", { class: "event-time", title: new Date(e.unix_ms).toISOString() }, fmtTime(e.unix_ms)),
          h("span", { class: "muted small" }, next ? ` for ${fmtDuration(next.unix_ms - e.unix_ms)}`
            : ` ${ago(e.unix_ms)}`)),
        e.message ? h("div", { class: "event-msg" }, e.message) : null);
    }));
  }

  function instancePage(role, env, name, instance) {
    const key = `${role}/${env}/${name}`;
    const p = { title: `${key}/${instance}`, nav: "roles" };
    const stateBox = h("div", { class: "state-big" });
    const pending = h("div", { class: "pending-box", hidden: true, "data-testid": "pending-reason" });
    const details = h("dl", { class: "details", "data-testid": "instance-details" });
    const logs = h("div", { class: "logs-row" });
    const events = h("div");
    const history = table([
      { title: "Task", cell: (i) => mono(i.task_id) },
      { title: "State", cell: (i) => badge(i.state) },
      { title: "Host", cell: (i) => i.hostname || muted("—") },
      { title: "Exit", class: "num", cell: (i) => (i.exit_code === null ? muted("—") : String(i.exit_code)) },
      { title: "CPU", class: "num", cell: (i) => usageCell(i, "cpu_time_ms") },
      { title: "Peak memory", class: "num", cell: (i) => usageCell(i, "peak_memory_bytes") },
      { title: "Last event", cell: (i) => timeCell(i.events.length ? i.events[i.events.length - 1].unix_ms : 0) },
      { title: "Message", class: "wide", cell: (i) => i.message || muted("") },
      { title: "Logs", cell: (i) => logLinks(i, `history-${i.task_id}-`) },
    ], { testid: "history-table", key: (i) => i.task_id, empty: "No earlier tasks." });
    p.el = h("div", null,
      pageHeader(`Instance ${instance}`, breadcrumbs(["#/roles", "roles"], [`#/role/${enc(role)}`, role],
        [jobHash(role, env, name), `${env}/${name}`], String(instance)), stateBox),
      pending,
      h("div", { class: "two-col" },
        card("Task", details, logs),
        card("Events", events)),
      card("Earlier tasks", history.el));
    p.refresh = async () => {
      const d = await api(`/api/v1/jobs/${enc(role)}/${enc(env)}/${enc(name)}/instances/${enc(instance)}`);
      const i = d.instance;
      setChildren(stateBox, badge(i.state, { "data-testid": "instance-state", class: `badge big ${stateClass(i.state)}` }),
        h("span", { class: "muted" }, ` for ${fmtDuration(i.age_ms)}`));
      const isPending = i.state === "PENDING" || i.state === "THROTTLED";
      pending.hidden = !(isPending && i.pending_reason);
      setChildren(pending, h("div", { class: "pending-title" }, "Why pending"),
        h("div", { class: "pending-text", "data-testid": "pending-reason-text" }, i.pending_reason || ""));
      const row = (label, value, testid) => [h("dt", null, label), h("dd", { "data-testid": testid }, value)];
      setChildren(details,
        row("Task ID", mono(i.task_id), "task-id"),
        row("Host", i.hostname || muted("not placed"), "task-host"),
        row("Agent", i.agent_id ? mono(i.agent_id) : muted("—"), "task-agent"),
        row("Ports", portsText(i.ports), "task-ports"),
        row("Sandbox", i.sandbox ? mono(i.sandbox) : muted("—"), "task-sandbox"),
        row("Failures", num(i.failure_count), "task-failures"),
        row("Exit code", i.exit_code === null ? muted("—") : String(i.exit_code), "task-exit"),
        row("Message", i.message || muted("—"), "task-message"),
        i.usage ? row("CPU time", usageCell(i, "cpu_time_ms"), "task-cpu-time") : null,
        i.usage ? row("Peak memory", usageCell(i, "peak_memory_bytes"), "task-peak-memory") : null,
        i.usage ? row("Sandbox disk", usageCell(i, "disk_bytes"), "task-disk") : null,
        i.preempted_by ? row("Preempted by", mono(i.preempted_by), "task-preempted-by") : null);
      setChildren(logs, h("span", { class: "muted" }, "Logs "), logLinks(i, ""));
      setChildren(events, timeline(i.events));
      history.set(d.history || []);
    };
    return p;
  }

  function logsPage(taskId, stream, params) {
    const p = { title: `${stream} of ${taskId}`, nav: "roles" };
    const st = { follow: params.follow === "1", next: null, size: 0, chars: 0, task: null };
    let decoder = new TextDecoder("utf-8");
    const pre = h("pre", { class: "log", "data-testid": "log-text", tabindex: "0" });
    const status = h("span", { class: "muted small", "data-testid": "log-status" }, "loading…");
    const crumbs = h("div");
    const follow = h("input", { type: "checkbox", "data-testid": "log-follow" });
    follow.checked = st.follow;
    follow.addEventListener("change", () => {
      st.follow = follow.checked;
      saveParams({ follow: st.follow ? "1" : "" });
      if (st.follow) pre.scrollTop = pre.scrollHeight;
      p.poke();
    });
    const other = stream === "stdout" ? "stderr" : "stdout";
    const reload = h("button", { type: "button", class: "ghost", "data-testid": "log-reload",
      onclick: () => { st.next = null; p.poke(); } }, "Reload");
    p.el = h("div", null,
      crumbs,
      toolbar(
        h("div", { class: "tabs" },
          h("span", { class: "tab active" }, stream),
          link(`#/logs/${enc(taskId)}/${other}${st.follow ? "?follow=1" : ""}`, other,
            { class: "tab", "data-testid": `log-switch-${other}` })),
        h("label", { class: "inline toggle" }, follow, " Follow"),
        reload, status),
      h("div", { class: "card log-card" }, pre));
    const url = (q) => `/api/v1/tasks/${enc(taskId)}/logs/${stream}${query(q)}`;
    const atBottom = () => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    const appendText = (text) => {
      if (!text) return;
      pre.appendChild(document.createTextNode(text));
      st.chars += text.length;
      if (st.chars > LOG_KEEP_CHARS) {
        const all = pre.textContent;
        pre.textContent = all.slice(all.length - LOG_KEEP_CHARS / 2);
        st.chars = pre.textContent.length;
      }
    };
    p.refresh = async () => {
      if (!st.task) {
        const t = await api(`/api/v1/tasks/${enc(taskId)}`);
        st.task = t;
        const [role, env, name] = jobKeyParts(t.job_key);
        setChildren(crumbs, pageHeader(`${stream}`, breadcrumbs(["#/roles", "roles"],
          [`#/role/${enc(role)}`, role], [jobHash(role, env, name), `${env}/${name}`],
          [`${jobHash(role, env, name)}/${t.instance.instance}`, `instance ${t.instance.instance}`],
          stream), h("span", { class: "muted" }, mono(taskId), " ", badge(t.instance.state))));
      }
      if (st.next !== null && !st.follow) return;
      const first = st.next === null;
      let res;
      try {
        res = await api(first ? url({ tail: LOG_TAIL_BYTES }) : url({ offset: st.next }), { raw: true });
      } catch (e) {
        if (e.status === 416 && !first) { st.next = null; return p.refresh(); }
        throw e;
      }
      const buf = await res.arrayBuffer();
      const offset = Number(res.headers.get("X-Log-Offset") || 0);
      const size = Number(res.headers.get("X-Log-Size") || offset + buf.byteLength);
      const stick = first || atBottom();
      if (first) {
        decoder = new TextDecoder("utf-8");
        pre.textContent = "";
        st.chars = 0;
      }
      appendText(decoder.decode(new Uint8Array(buf), { stream: true }));
      st.next = offset + buf.byteLength;
      st.size = size;
      pre.setAttribute("data-size", String(size));
      status.textContent = (offset > 0 && first ? `last ${fmtBytes(buf.byteLength)} of ` : "") +
        `${fmtBytes(size)}${st.follow ? " · following" : ""}`;
      if (!pre.textContent) pre.setAttribute("data-empty", "true");
      else pre.removeAttribute("data-empty");
      if (stick && (first || st.follow)) pre.scrollTop = pre.scrollHeight;
    };
    return p;
  }

  function updateHash(u) {
    return `#/update/${jobKeyParts(u.job_key).map(enc).join("/")}/${u.id}`;
  }

  function progressCell(u) {
    if (u.instances_total === null || u.instances_total === undefined) return muted("—");
    return bar(u.instances_done, u.instances_total,
      `${num(u.instances_done)} / ${num(u.instances_total)} instances`, `update-progress-${u.job_key}-${u.id}`, true);
  }

  function updatesPage(params) {
    const p = { title: "Updates", nav: "updates" };
    const st = { job: params.job || "", role: params.role || "", aoff: 0, foff: 0 };
    const save = () => saveParams({ job: st.job, role: st.role });
    // Details of finished updates do not change: fetched once.
    const finishedDetail = new Map();
    const cols = [
      { title: "Job", cell: (u) => link(jobKeyHash(u.job_key), u.job_key, { class: "mono" }) },
      { title: "Update", cell: (u) => link(updateHash(u), `#${u.id}`, { "data-testid": `update-link-${u.job_key}-${u.id}` }) },
      { title: "Status", cell: (u) => badge(u.status) },
      { title: "Progress", class: "bar-col", cell: progressCell },
      { title: "In flight", class: "num", cell: (u) => num(u.in_flight) },
      { title: "Failures", class: "num", cell: (u) => num(u.failures) },
      { title: "Started", cell: (u) => timeCell(u.started_unix_ms) },
      { title: "Last change", cell: (u) => timeCell(u.updated_unix_ms) },
    ];
    const key = (u) => `${u.job_key}#${u.id}`;
    const active = table(cols, { testid: "active-updates-table", key, empty: "No active updates." });
    const finished = table(cols, { testid: "finished-updates-table", key, empty: "No finished updates." });
    const finishedHint = h("p", { class: "muted small", "data-testid": "finished-updates-hint", hidden: true },
      "The scheduler lists finished updates per job: enter a job key above (a job's page links here).");
    const apager = pager("active-updates-pager", (o) => { st.aoff = o; p.poke(); });
    const fpager = pager("finished-updates-pager", (o) => { st.foff = o; p.poke(); });
    const counts = { a: h("span", { class: "muted", "data-testid": "active-updates-total" }),
      f: h("span", { class: "muted", "data-testid": "finished-updates-total" }) };
    p.el = h("div", null,
      pageHeader("Updates", null),
      toolbar(
        searchBox("updates-role-filter", "Role (exact)…", st.role, (v) => {
          st.role = v; st.aoff = st.foff = 0; save(); p.poke();
        }),
        searchBox("updates-job-filter", "Job key role/env/name…", st.job, (v) => {
          st.job = v; st.aoff = st.foff = 0; save(); p.poke();
        })),
      card(null, h("div", { class: "card-head" }, h("h2", null, "Active"), counts.a, apager.el), active.el),
      card(null, h("div", { class: "card-head" }, h("h2", null, "Finished"), counts.f, fpager.el),
        finishedHint, finished.el));
    // Fills in instances_total/done from each update's detail where the list lacks them.
    const withProgress = async (items, cache) => {
      const need = items.filter((u) => u.instances_total === null || u.instances_total === undefined);
      const todo = need.filter((u) => !(cache && cache.has(key(u)))).slice(0, 25);
      const got = await inParallel(todo, 6, (u) =>
        api(`/api/v1/jobs/${jobKeyParts(u.job_key).map(enc).join("/")}/updates/${u.id}`));
      todo.forEach((u, i) => {
        if (got[i].ok && cache) cache.set(key(u), got[i].ok.summary);
        if (got[i].ok) u._detail = got[i].ok.summary;
      });
      return items.map((u) => {
        const d = u._detail || (cache && cache.get(key(u)));
        if (d && (u.instances_total === null || u.instances_total === undefined)) {
          return Object.assign({}, u, { instances_total: d.instances_total, instances_done: d.instances_done });
        }
        return u;
      }).map((u) => { delete u._detail; return u; });
    };
    p.refresh = async () => {
      const base = { role: st.role, job: st.job, limit: PAGE_SIZE };
      const [a, f] = await Promise.all([
        api(`/api/v1/updates${query(Object.assign({ active: "true", offset: st.aoff }, base))}`),
        api(`/api/v1/updates${query(Object.assign({ active: "false", offset: st.foff }, base))}`),
      ]);
      const [ai, fi] = await Promise.all([withProgress(a.items, null), withProgress(f.items, finishedDetail)]);
      active.set(ai);
      finished.set(fi);
      apager.set(a.total, a.offset, a.items.length);
      fpager.set(f.total, f.offset, f.items.length);
      counts.a.textContent = `${num(a.total)} active`;
      counts.f.textContent = `${num(f.total)} finished`;
      finishedHint.hidden = Boolean(st.job) || f.total > 0;
    };
    return p;
  }

  function updatePage(role, env, name, id) {
    const key = `${role}/${env}/${name}`;
    const p = { title: `Update ${id} of ${key}`, nav: "updates" };
    const head = h("div", { class: "state-big" });
    const progress = h("div");
    const settings = h("dl", { class: "details" });
    const events = h("div");
    const diff = h("pre", { class: "diff", "data-testid": "update-diff" });
    const inst = table([
      { title: "Instance", class: "num", cell: (i) => link(`${jobHash(role, env, name)}/${i.instance}`, String(i.instance)) },
      { title: "From rev", class: "num", cell: (i) => (i.from_rev === null ? muted("new") : String(i.from_rev)) },
      { title: "To rev", class: "num", cell: (i) => (i.to_rev === null ? muted("removed") : String(i.to_rev)) },
      { title: "Phase", cell: (i) => badge(i.phase) },
      { title: "Failures", class: "num", cell: (i) => num(i.failures) },
      { title: "Rolling back", cell: (i) => (i.in_rollback ? "yes" : muted("no")) },
    ], { testid: "update-instances-table", key: (i) => i.instance, empty: "No instances in scope." });
    p.el = h("div", null,
      pageHeader(`Update #${id}`, breadcrumbs(["#/updates", "updates"], [jobHash(role, env, name), key], `#${id}`), head),
      card("Progress", progress),
      h("div", { class: "two-col" }, card("Settings", settings), card("Events", events)),
      card("Instances", inst.el),
      card("Config change", diff));
    p.refresh = async () => {
      const d = await api(`/api/v1/jobs/${enc(role)}/${enc(env)}/${enc(name)}/updates/${enc(id)}`);
      const s = d.summary;
      setChildren(head, badge(s.status, { "data-testid": "update-status", class: `badge big ${stateClass(s.status)}` }));
      setChildren(progress, progressCell(s), h("div", { class: "muted small" },
        `${num(d.instances_before)} → ${num(d.instances_after)} instances · to rev ${d.to_rev} · ` +
        `${num(s.in_flight)} in flight · ${num(s.failures)} failures · started ${fmtTime(s.started_unix_ms)}`));
      const row = (label, value) => [h("dt", null, label), h("dd", null, value)];
      const x = d.settings;
      setChildren(settings,
        row("Batch size", num(x.batch_size)),
        row("Watch", `${x.watch_secs}s`),
        row("Max failures per instance", num(x.max_per_instance_failures)),
        row("Max total failures", num(x.max_total_failures)),
        row("Rollback on failure", x.rollback_on_failure ? "yes" : "no"),
        row("Wait for batch completion", x.wait_for_batch_completion ? "yes" : "no"),
        row("Pulse interval", x.pulse_interval_secs ? `${x.pulse_interval_secs}s` : muted("none")),
        row("SLA aware", x.sla_aware ? "yes" : "no"));
      setChildren(events, d.events.length ? h("ol", { class: "timeline" }, d.events.map((e) =>
        h("li", null, h("span", { class: `dot ${stateClass(e.status)}` }),
          h("div", { class: "event-head" }, badge(e.status), h("span", { class: "event-time" }, fmtTime(e.unix_ms))),
          e.message ? h("div", { class: "event-msg" }, e.message) : null))) : muted("No events."));
      inst.set(d.instances);
      const text = d.diffs.map((df) => `# rev ${df.from_rev} → rev ${df.to_rev}\n${df.diff || "(no change)\n"}`).join("\n");
      if (diff.textContent !== text) diff.textContent = text || "(no diff)";
    };
    return p;
  }

  function maintenancePage(params) {
    const p = { title: "Maintenance", nav: "maintenance" };
    const st = { q: params.q || "", mode: params.mode || "", offset: Number(params.offset) || 0 };
    const save = () => saveParams({ q: st.q, mode: st.mode, offset: st.offset || "" });
    const hostsPager = pager("hosts-pager", (o) => { st.offset = o; save(); p.poke(); });
    const tbl = table([
      { title: "Host", cell: (m) => h("span", { class: "strong mono" }, m.host) },
      { title: "Mode", cell: (m) => badge(m.mode) },
      { title: "Active tasks", class: "num", cell: (m) => num(m.active_tasks) },
      { title: "Blocked by", class: "wide", cell: (m) => (m.blocked.length ? h("ul", { class: "blockers" },
        m.blocked.map((b) => h("li", null,
          link(`${jobKeyHash(b.job_key)}/${b.instance}`, `${b.job_key}/${b.instance}`, { class: "mono" }),
          " ", h("span", { class: "small" }, b.reason)))) : muted("—")) },
      { title: "Drain deadline", cell: (m) => timeCell(m.drain_deadline_unix_ms) },
      { title: "Forced", cell: (m) => (m.forced ? h("span", { class: "tag warn" }, "forced") : muted("no")) },
    ], {
      testid: "hosts-table", key: (m) => m.host, empty: "No hosts match.",
      rowAttrs: (m) => ({ "data-testid": `host-row-${m.host}`, "data-mode": m.mode }),
    });
    const total = h("span", { class: "muted", "data-testid": "hosts-total" });
    p.el = h("div", null,
      pageHeader("Maintenance", null, total),
      h("p", { class: "muted" }, "Hosts under maintenance: SCHEDULED (no new tasks), DRAINING (tasks leaving as their SLAs allow), DRAINED. Hosts in service (NONE) are listed on the cluster page."),
      toolbar(
        searchBox("hosts-filter", "Filter hosts…", st.q, (v) => { st.q = v; st.offset = 0; save(); p.poke(); }),
        h("label", { class: "inline" }, "Mode ", selectBox("mode-filter",
          [["", "All modes"]].concat(HOST_MODES.filter((m) => m !== "NONE").map((m) => [m, m])), st.mode,
          (v) => { st.mode = v; st.offset = 0; save(); p.poke(); })),
        hostsPager.el),
      card(null, tbl.el));
    p.refresh = async () => {
      const page = await api(`/api/v1/maintenance${query({
        q: st.q, mode: st.mode, offset: st.offset, limit: PAGE_SIZE,
      })}`);
      total.textContent = plural(page.total, "host");
      tbl.set(page.items);
      hostsPager.set(page.total, page.offset, page.items.length);
    };
    return p;
  }

  function quotasPage(params) {
    const p = { title: "Quotas", nav: "quotas" };
    const st = { q: params.q || "", offset: Number(params.offset) || 0 };
    const save = () => saveParams({ q: st.q, offset: st.offset || "" });
    const rolesPager = pager("quotas-pager", (o) => { st.offset = o; save(); p.poke(); });
    const resCell = (k) => (r) => {
      if (r.error) return muted("—");
      if (!r.quota_set) {
        const f = RESOURCES.find((x) => x[0] === k)[2];
        return h("span", { class: "small muted" }, `${f(r.used[k])} used, no quota`);
      }
      return resourceBar(k, r.used[k], r.quota[k], `quota-${r.role}-${k}`);
    };
    const tbl = table([
      { title: "Role", cell: (r) => link(`#/role/${enc(r.role)}`, r.role, { class: "strong" }) },
      { title: "Quota", cell: (r) => (r.error ? h("span", { class: "error-text" }, r.error)
        : r.quota_set ? h("span", { class: "tag service" }, "set") : h("span", { class: "tag adhoc" }, "none")) },
      { title: "CPU", class: "bar-col", cell: resCell("cpu") },
      { title: "RAM", class: "bar-col", cell: resCell("ram_mib") },
      { title: "Disk", class: "bar-col", cell: resCell("disk_mib") },
    ], {
      testid: "quotas-table", key: (r) => r.role, empty: "No roles match.",
      rowAttrs: (r) => ({ "data-testid": `quota-row-${r.role}` }),
    });
    const total = h("span", { class: "muted", "data-testid": "quotas-total" });
    p.el = h("div", null,
      pageHeader("Quotas", null, total),
      h("p", { class: "muted" }, "Production quota per role: what its production tasks hold against what it may hold."),
      toolbar(searchBox("quotas-filter", "Filter roles…", st.q, (v) => { st.q = v; st.offset = 0; save(); p.poke(); }),
        rolesPager.el),
      card(null, tbl.el));
    p.refresh = async () => {
      const page = await api(`/api/v1/roles${query({ q: st.q, offset: st.offset, limit: PAGE_SIZE })}`);
      const quotas = await inParallel(page.items, 8, (r) => api(`/api/v1/quotas/${enc(r.role)}`));
      const forbidden = quotas.find((q) => q.err && q.err.status === 401);
      if (forbidden) throw forbidden.err;
      total.textContent = plural(page.total, "role");
      tbl.set(page.items.map((r, i) => (quotas[i].ok ? quotas[i].ok : { role: r.role, error: quotas[i].err.message })));
      rolesPager.set(page.total, page.offset, page.items.length);
    };
    return p;
  }

  function clusterPage(params) {
    const p = { title: "Cluster", nav: "cluster" };
    const st = { q: params.q || "", mode: params.mode || "", offset: Number(params.offset) || 0 };
    const save = () => saveParams({ q: st.q, mode: st.mode, offset: st.offset || "" });
    const stats = {
      agents: stat("Agents", "cluster-agents"),
      jobs: stat("Jobs", "cluster-jobs"),
      rate: stat("Schedule rate", "cluster-rate"),
      placed: stat("Tasks placed", "cluster-placed"),
    };
    const modes = h("div", { "data-testid": "cluster-modes" });
    const util = h("div", { class: "util", "data-testid": "cluster-utilization" });
    const states = h("div", { "data-testid": "cluster-states" });
    const agentsPager = pager("agents-pager", (o) => { st.offset = o; save(); p.poke(); });
    const resCol = (k) => (a) => resourceBar(k, a.used[k], a.total[k]);
    const tbl = table([
      { title: "Agent", cell: (a) => mono(a.agent_id, { class: "mono strong" }) },
      { title: "Host", cell: (a) => a.hostname },
      { title: "Connected", cell: (a) => (a.connected ? h("span", { class: "tag ok" }, "connected")
        : h("span", { class: "tag bad" }, "disconnected")) },
      { title: "Mode", cell: (a) => badge(a.mode) },
      { title: "CPU", class: "bar-col", cell: resCol("cpu") },
      { title: "RAM", class: "bar-col", cell: resCol("ram_mib") },
      { title: "Disk", class: "bar-col", cell: resCol("disk_mib") },
      { title: "Tasks", class: "num", cell: (a) => num(a.active_tasks) },
      { title: "Attributes", cell: (a) => Object.keys(a.attributes).map((k) =>
        h("span", { class: "kv" }, h("span", { class: "muted" }, `${k}=`), a.attributes[k])) },
      { title: "Log server", cell: (a) => (a.log_address ? mono(a.log_address) : muted("none")) },
    ], {
      testid: "agents-table", key: (a) => a.agent_id, empty: "No agents match.",
      rowAttrs: (a) => ({ "data-testid": `agent-row-${a.agent_id}`, "data-connected": String(a.connected) }),
    });
    const total = h("span", { class: "muted", "data-testid": "agents-total" });
    p.el = h("div", null,
      pageHeader("Cluster", null),
      h("div", { class: "stats" }, Object.values(stats).map((s) => s.el)),
      h("div", { class: "two-col" },
        card("Utilization", util),
        card("Agents by mode", modes)),
      card("Tasks by state", states),
      toolbar(
        searchBox("agents-filter", "Filter agents by host or id…", st.q, (v) => { st.q = v; st.offset = 0; save(); p.poke(); }),
        h("label", { class: "inline" }, "Mode ", selectBox("agents-mode-filter",
          [["", "All modes"]].concat(HOST_MODES.map((m) => [m, m])), st.mode,
          (v) => { st.mode = v; st.offset = 0; save(); p.poke(); })),
        total, agentsPager.el),
      card(null, tbl.el));
    p.refresh = async () => {
      const [c, page] = await Promise.all([
        api("/api/v1/cluster"),
        api(`/api/v1/agents${query({ q: st.q, mode: st.mode, offset: st.offset, limit: PAGE_SIZE })}`),
      ]);
      showClusterName(c.cluster_name);
      stats.agents.value.textContent = num(c.agents.total);
      stats.agents.sub.textContent = `${num(c.agents.connected)} connected`;
      stats.jobs.value.textContent = num(c.jobs);
      stats.jobs.sub.textContent = plural(c.roles, "role");
      stats.rate.value.textContent = `${Number(c.schedule_rate_per_sec).toLocaleString("en-US", { maximumFractionDigits: 1 })}/s`;
      stats.rate.sub.textContent = "tasks placed, last 10 s";
      stats.placed.value.textContent = num(c.tasks_placed_total);
      stats.placed.sub.textContent = "since the scheduler started";
      setChildren(util, RESOURCES.map(([k, label]) => h("div", { class: "util-row" },
        h("div", { class: "util-label" }, label),
        resourceBar(k, c.resources.used[k], c.resources.total[k], `util-${k}`))));
      const byMode = HOST_MODES.filter((m) => c.agents.by_mode[m]).map((m) =>
        h("span", { class: `badge ${stateClass(m)}`, "data-state": m, "data-count": c.agents.by_mode[m] },
          m, h("b", null, num(c.agents.by_mode[m]))));
      setChildren(modes, h("div", { class: "counts" }, byMode.length ? byMode : muted("no agents")),
        h("div", { class: "muted small" }, `${num(c.agents.connected)} of ${num(c.agents.total)} connected`));
      setChildren(states, stateCounts(c.tasks_by_state));
      total.textContent = plural(page.total, "agent");
      tbl.set(page.items);
      agentsPager.set(page.total, page.offset, page.items.length);
    };
    return p;
  }

  function notFoundPage() {
    const p = { title: "Not found", nav: "" };
    p.el = h("div", null, pageHeader("No such page"),
      card(null, h("p", null, "This address names no page. ", link("#/roles", "Go to the roles."))));
    p.refresh = async () => {};
    return p;
  }

  function pageFor(segs, params) {
    const [name, ...a] = segs;
    switch (name || "roles") {
      case "roles": return rolesPage(params);
      case "role": return a.length === 1 ? rolePage(a[0], params) : notFoundPage();
      case "job":
        if (a.length === 3) return jobPage(a[0], a[1], a[2], params);
        if (a.length === 4 && /^\d+$/.test(a[3])) return instancePage(a[0], a[1], a[2], a[3]);
        return notFoundPage();
      case "logs":
        return a.length === 2 && (a[1] === "stdout" || a[1] === "stderr")
          ? logsPage(a[0], a[1], params) : notFoundPage();
      case "updates": return updatesPage(params);
      case "update": return a.length === 4 ? updatePage(a[0], a[1], a[2], a[3]) : notFoundPage();
      case "maintenance": return maintenancePage(params);
      case "quotas": return quotasPage(params);
      case "cluster": return clusterPage(params);
      default: return notFoundPage();
    }
  }

  // ------------------------------------------------------------------ the app

  const view = document.getElementById("view");
  const banner = document.getElementById("banner");
  const live = document.getElementById("live");
  const lastRefresh = document.getElementById("last-refresh");
  const session = document.getElementById("session");
  const login = document.getElementById("login");
  const loginForm = document.getElementById("login-form");
  const tokenInput = document.getElementById("token-input");
  const loginError = document.getElementById("login-error");
  let current = null;
  let clusterName = "";
  let firstRender = true;

  function showClusterName(name) {
    if (!name || name === clusterName) return;
    clusterName = name;
    document.getElementById("cluster-name").textContent = name;
  }

  function loadClusterName() {
    return api("/api/v1/cluster").then((c) => {
      showClusterName(c.cluster_name);
      document.title = `${current ? current.title : "Borealis"} · ${clusterName}`;
    }).catch(() => {});
  }

  function showError(e) {
    banner.hidden = false;
    banner.setAttribute("data-code", e.code || "");
    banner.setAttribute("data-status", String(e.status || ""));
    setChildren(banner, h("strong", null, e.status ? `${e.status} ${e.code}` : (e.code || "Error")),
      " ", h("span", { "data-testid": "error-text" }, e.message || String(e)));
  }

  function clearError() {
    if (!banner.hidden) {
      banner.hidden = true;
      banner.replaceChildren();
    }
  }

  /** Runs the current page's refresh, one at a time; a poke during one runs another after. */
  async function refresh(page) {
    if (!page || page !== current) return;
    if (page.busy) {
      page.again = true;
      return;
    }
    page.busy = true;
    try {
      do {
        page.again = false;
        try {
          await page.refresh();
          if (page !== current) return;
          clearError();
          const t = new Date();
          lastRefresh.textContent = `updated ${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
          view.setAttribute("data-ready", "true");
          if (firstRender) {
            firstRender = false;
            // For tests/ui/page_load.py: the page's data is in the DOM (render), and the frame
            // that shows it has been painted (frame: a task after the next animation frame).
            performance.mark("borealis-first-render");
            requestAnimationFrame(() => setTimeout(() => performance.mark("borealis-first-frame"), 0));
          }
        } catch (e) {
          if (page !== current) return;
          showError(e);
          view.setAttribute("data-ready", "error");
        }
      } while (page.again && page === current);
    } finally {
      page.busy = false;
    }
  }

  function mount() {
    const { segs, params } = parseHash();
    const page = pageFor(segs, params);
    page.poke = () => refresh(page);
    current = page;
    clearError();
    view.setAttribute("data-ready", "false");
    view.setAttribute("data-page", segs[0] || "roles");
    view.replaceChildren(page.el);
    document.title = `${page.title} · ${clusterName || "Borealis"}`;
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.getAttribute("data-nav") === page.nav);
    }
    window.scrollTo(0, 0);
    refresh(page);
  }

  function tick() {
    if (document.hidden) return;
    refresh(current);
  }

  function showLive() {
    live.textContent = document.hidden ? "paused" : "live";
    live.classList.toggle("paused", document.hidden);
  }

  // ---------------------------------------------------------------- auth

  let whoami = null;

  function needLogin(message) {
    setToken(token()); // keep what is stored; the user may fix it
    if (!login.open) {
      loginError.hidden = !message || !token();
      loginError.textContent = token() ? `Refused: ${message}` : "";
      tokenInput.value = "";
      try {
        login.showModal();
      } catch (e) {
        login.setAttribute("open", "");
      }
      tokenInput.focus();
    }
  }

  function renderSession() {
    const items = [];
    if (whoami && whoami.auth) {
      if (whoami.principal) {
        items.push(h("span", { class: "principal", "data-testid": "principal",
          title: `permissions: ${whoami.permissions.join(", ")}` }, whoami.principal));
        items.push(h("button", { type: "button", class: "ghost light", "data-testid": "sign-out",
          onclick: () => { setToken(""); whoami = null; renderSession(); needLogin(""); } }, "Sign out"));
      } else {
        items.push(h("button", { type: "button", class: "ghost light", "data-testid": "sign-in",
          onclick: () => needLogin("") }, "Sign in"));
      }
    } else if (whoami) {
      items.push(h("span", { class: "muted-light", "data-testid": "auth-off" }, "auth off"));
    }
    setChildren(session, items);
  }

  async function loadWhoami() {
    try {
      whoami = await api("/api/v1/whoami");
    } catch (e) {
      whoami = e.status === 401 ? { auth: true, principal: null, permissions: [] } : null;
    }
    renderSession();
    return whoami;
  }

  loginForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const t = tokenInput.value.trim();
    if (!t) return;
    setToken(t);
    try {
      whoami = await fetch("/api/v1/whoami", {
        headers: { Accept: "application/json", Authorization: `Bearer ${t}` }, cache: "no-store",
      }).then(async (res) => {
        const body = await res.json().catch(() => null);
        if (!res.ok) throw new ApiError(res.status, body && body.code, (body && body.error) || res.statusText);
        return body;
      });
    } catch (e) {
      setToken("");
      loginError.hidden = false;
      loginError.textContent = e.message;
      return;
    }
    loginError.hidden = true;
    login.close();
    renderSession();
    loadClusterName();
    refresh(current);
  });

  // ---------------------------------------------------------------- start

  window.addEventListener("hashchange", mount);
  document.addEventListener("visibilitychange", () => {
    showLive();
    tick();
  });
  setInterval(tick, POLL_MS);
  // The cluster name in the header and the title: at start, after signing in, and once a
  // minute (cheap), on every page.
  setInterval(() => {
    if (!document.hidden) loadClusterName();
  }, 60000);
  showLive();
  loadWhoami().then(loadClusterName);
  mount();
})();
