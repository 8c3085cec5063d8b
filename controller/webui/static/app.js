// Usher web console: plain JavaScript over the HTTP API (docs/http-api.md).
"use strict";

const $ = (s) => document.querySelector(s);
const state = { auth: null, me: null, vms: new Map(), cpu: new Map(), selected: new Set(), lastEvent: "", stream: null, plan: null };

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function showError(msg) {
  const e = $("#error");
  e.textContent = msg;
  e.hidden = !msg;
}

// api calls the HTTP API; errors become exceptions with the server's message.
async function api(method, path, body) {
  const opts = { method, headers: { Authorization: state.auth, "X-Usher-Client": "web" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const j = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error((j.error && j.error.msg) || r.statusText);
    e.status = r.status;
    throw e;
  }
  return j;
}

// --- login ---------------------------------------------------------------

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.auth = "Basic " + btoa(unescape(encodeURIComponent($("#user").value + ":" + $("#password").value)));
  try {
    const who = await api("GET", "/api/v1/whoami");
    state.me = who.identity;
    $("#password").value = "";
    showError("");
    enter(who);
  } catch (e) {
    state.auth = null;
    showError("Login failed: " + e.message);
  }
});

$("#logout").addEventListener("click", () => location.reload());

function enter(who) {
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = who.identity.user + (who.identity.admin ? " (admin)" : "") + " @ " + who.domain;
  document.querySelectorAll(".admin").forEach((b) => (b.hidden = !who.identity.admin));
  reload().then(follow);
  setInterval(refreshUsage, 3000);
}

// --- tabs ----------------------------------------------------------------

document.querySelectorAll(".tab").forEach((b) =>
  b.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("active", x === b));
    for (const t of ["vms", "nodes", "lists", "policy"]) $("#tab-" + t).hidden = t !== b.dataset.tab;
    ({ nodes: loadNodes, lists: loadLists, policy: loadPolicy }[b.dataset.tab] || (() => {}))();
  })
);

// --- VMs -----------------------------------------------------------------

async function reload() {
  try {
    const r = await api("GET", "/api/v1/vms?status=1");
    state.vms = new Map(r.vms.map((v) => [v.name, v]));
    for (const v of r.vms) track(v);
    render();
  } catch (e) {
    showError("Loading VMs: " + e.message);
  }
}

async function refreshUsage() {
  if (!state.auth) return;
  try {
    const r = await api("GET", "/api/v1/vms?status=1");
    for (const v of r.vms) {
      const have = state.vms.get(v.name);
      if (have) have.usage = v.usage;
      track(v);
    }
    render();
  } catch (e) {
    /* the event stream reports connection trouble */
  }
}

// track keeps a short history of each VM's 1-minute CPU average.
function track(v) {
  if (!v.usage) return;
  const h = state.cpu.get(v.name) || [];
  h.push(v.usage.cpu.m1);
  if (h.length > 30) h.shift();
  state.cpu.set(v.name, h);
}

function spark(values) {
  if (!values || values.length < 2) return "";
  const max = Math.max(0.05, ...values);
  const pts = values.map((y, i) => `${(i * 60) / (values.length - 1)},${18 - (y / max) * 16}`).join(" ");
  return `<svg class="spark" width="60" height="18"><polyline fill="none" stroke="#36c" stroke-width="1.5" points="${pts}"/></svg>`;
}

function fmtUsage(u) {
  if (!u) return "";
  return `${u.cpu.m1.toFixed(2)} / ${u.cpu.m5.toFixed(2)} / ${u.cpu.m15.toFixed(2)}`;
}

function render() {
  const rows = [...state.vms.values()].sort((a, b) => (a.cluster + a.short).localeCompare(b.cluster + b.short, undefined, { numeric: true }));
  $("#vms tbody").innerHTML = rows
    .map(
      (v) => `<tr data-vm="${esc(v.name)}">
      <td><input type="checkbox" class="sel" ${state.selected.has(v.name) ? "checked" : ""}></td>
      <td class="name">${esc(v.short)}</td><td>${esc(v.cluster)}</td>
      <td class="state ${esc(v.state)}">${esc(v.state)}</td><td class="node">${esc(v.lnm)}</td>
      <td>${v.mem_mb} MiB</td><td>${v.vcpus}</td><td>${esc((v.data && v.data.ip) || "")}</td>
      <td>${spark(state.cpu.get(v.name))} ${fmtUsage(v.usage)}</td></tr>`
    )
    .join("");
  $("#empty").hidden = rows.length > 0;
  for (const n of [...state.selected]) if (!state.vms.has(n)) state.selected.delete(n);
  $("#selected").textContent = state.selected.size + " selected";
}

$("#vms tbody").addEventListener("change", (ev) => {
  if (!ev.target.classList.contains("sel")) return;
  const name = ev.target.closest("tr").dataset.vm;
  ev.target.checked ? state.selected.add(name) : state.selected.delete(name);
  $("#selected").textContent = state.selected.size + " selected";
});

$("#all").addEventListener("change", (ev) => {
  state.selected = ev.target.checked ? new Set(state.vms.keys()) : new Set();
  render();
});

// --- the event stream: fetch, so it can send the credentials --------------

async function follow() {
  for (;;) {
    const headers = { Authorization: state.auth, "X-Usher-Client": "web" };
    if (state.lastEvent) headers["Last-Event-ID"] = state.lastEvent;
    try {
      const r = await fetch("/api/v1/events", { headers });
      if (!r.ok) throw new Error("events: " + r.status);
      $("#conn").textContent = "live";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (await handleBlock(block)) return follow();
        }
      }
    } catch (e) {
      /* reconnect below */
    }
    $("#conn").textContent = "reconnecting…";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

// handleBlock applies one server-sent event; true means start over.
async function handleBlock(block) {
  let id = "", type = "", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("id: ")) id = line.slice(4);
    else if (line.startsWith("event: ")) type = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (type === "resync") {
    state.lastEvent = "";
    await reload();
    return true;
  }
  if (!type) return false;
  if (id) state.lastEvent = id;
  const ev = JSON.parse(data);
  if (ev.vm) {
    const gone = ["destroyed"].includes(ev.vm.state) || ev.type === "vm_forgotten";
    if (gone) state.vms.delete(ev.vm.name);
    else {
      const old = state.vms.get(ev.vm.name);
      if (!old || (ev.vm.version || 0) >= (old.version || 0)) {
        ev.vm.usage = old && old.usage;
        state.vms.set(ev.vm.name, ev.vm);
      }
    }
    render();
  }
  return false;
}

// --- start: plan first, then confirm --------------------------------------

function startArgs() {
  const a = { cluster: $("#start-cluster").value.trim(), count: +$("#start-count").value };
  if (+$("#start-mem").value) a.mem_mb = +$("#start-mem").value;
  if (+$("#start-vcpus").value) a.vcpus = +$("#start-vcpus").value;
  const image = $("#start-image").value.trim();
  if (image) a.args = { image };
  return a;
}

$("#start").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const a = startArgs();
  try {
    const r = await api("POST", "/api/v1/plan", { start: a });
    state.plan = a;
    const done = (r.done || []).map((d) => `<li>${esc(d.name)} → ${d.ok ? esc(d.lnm) : "<b>" + esc(d.error) + "</b>"}</li>`).join("");
    const dropped = (r.dropped || []).map((d) => `<li>${esc(d.vm)} dropped: ${esc(d.reason)} (by ${esc(d.by)})</li>`).join("");
    const trace = (r.trace || []).map((s) => `<tr><td>${esc(s.event)}</td><td>${esc(s.handler)}</td><td>${esc(s.action)}</td><td>${esc(s.detail)}</td></tr>`).join("");
    $("#plan-body").innerHTML = `<ul>${done}${dropped}</ul>` +
      (trace ? `<table class="trace"><thead><tr><th>Event</th><th>Handler</th><th>Decision</th><th>Detail</th></tr></thead><tbody>${trace}</tbody></table>` : "");
    $("#plan").hidden = false;
    showError("");
  } catch (e) {
    showError("Plan: " + e.message);
  }
});

$("#cancel-btn").addEventListener("click", () => ($("#plan").hidden = true));

$("#confirm-btn").addEventListener("click", async () => {
  if (!state.plan) return;
  try {
    const r = await api("POST", "/api/v1/vms", state.plan);
    showResult(r, "started");
    $("#plan").hidden = true;
  } catch (e) {
    showError("Start: " + e.message);
  }
});

function showResult(r, verb) {
  const ok = (r.done || []).filter((d) => d.ok).length;
  const bad = (r.done || []).filter((d) => !d.ok).map((d) => `<li>${esc(d.name)}: ${esc(d.error)}</li>`).join("");
  const dropped = (r.dropped || []).map((d) => `<li>${esc(d.vm)} dropped: ${esc(d.reason)}</li>`).join("");
  const box = $("#result");
  box.innerHTML = `${verb} ${ok} of ${r.requested} VMs<ul>${bad}${dropped}</ul>`;
  box.hidden = false;
  for (const d of r.done || []) if (d.vm) state.vms.set(d.vm.name, d.vm);
  render();
}

// --- operations on the selection --------------------------------------------

document.querySelectorAll("button.op").forEach((b) =>
  b.addEventListener("click", async () => {
    const names = [...state.selected];
    if (!names.length) return showError("Select VMs first.");
    const op = b.dataset.op;
    if (op === "destroy" && !confirm(`Destroy ${names.length} VM(s)?`)) return;
    const body = {};
    if (op === "migrate") {
      const to = $("#migrate-to").value.trim();
      if (!to) return showError("Name the node to migrate to.");
      body.lnms = [to];
    }
    try {
      const set = encodeURIComponent(names.join(","));
      showResult(await api("POST", `/api/v1/vms/${set}/${op}`, body), op);
      showError("");
    } catch (e) {
      showError(op + ": " + e.message);
    }
  })
);

// --- admins --------------------------------------------------------------

async function loadNodes() {
  try {
    const r = await api("GET", "/api/v1/nodes?status=1");
    $("#nodes tbody").innerHTML = (r.lnms || [])
      .map((n) => `<tr><td>${esc(n.info.name)}</td><td>${esc(n.state)}</td>
        <td title="${esc([n.mode_reason, n.notice].filter(Boolean).join(" — "))}">${esc(n.mode || "active")}${n.fenced ? ", fenced" : ""}</td>
        <td>${esc(n.info.driver)}</td><td>${n.status.vms}</td>
        <td>${n.status.free_vcpus}/${n.info.cpus}</td><td>${n.status.free_mem_mb}/${n.info.mem_mb}</td><td>${fmtUsage(n.status.usage)}</td></tr>`)
      .join("");
  } catch (e) {
    showError("Nodes: " + e.message);
  }
}

async function loadLists() {
  try {
    const r = await api("GET", "/api/v1/vms?all=1&lists=1");
    const list = (title, vms) =>
      `<div class="card"><h3>${title} (${(vms || []).length})</h3><ul>${(vms || []).map((v) => `<li>${esc(v.name)} on ${esc(v.lnm)} (${esc(v.state)})</li>`).join("")}</ul></div>`;
    $("#lists").innerHTML = list("Lost", r.lost) + list("Missing", r.missing) + list("Unmanaged", r.unmanaged);
  } catch (e) {
    showError("Lists: " + e.message);
  }
}

async function loadPolicy() {
  try {
    const r = await api("GET", "/api/v1/policy");
    $("#policy").innerHTML = (r.scripts || [])
      .map((s) => `<div class="card"><h3>${esc(s.name)} ${s.loaded ? "" : "<b>(not loaded)</b>"}</h3>${s.last_error ? `<p class="error">${esc(s.last_error)}</p>` : ""}
        <table><thead><tr><th>Event</th><th>Order</th><th>Handler</th><th>Calls</th><th>Errors</th><th>Cut off</th><th>p99 µs</th></tr></thead><tbody>
        ${(s.handlers || []).map((h) => `<tr><td>${esc(h.event)}</td><td>${h.order}</td><td>${esc(h.name)}</td><td>${h.calls}</td><td>${h.errors}</td><td>${h.cut || 0}</td><td>${h.p99_us}</td></tr>`).join("")}
        </tbody></table></div>`)
      .join("");
  } catch (e) {
    showError("Policies: " + e.message);
  }
}
