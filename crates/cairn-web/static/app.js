// Cairn console: drives the REST API with the session's CSRF token and plots observed values.
// Loaded from /static (no inline scripts: the content security policy forbids them).
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  async function api(method, url, body) {
    const options = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = text; }
    }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : response.statusText;
      throw new Error(message);
    }
    return data;
  }

  function show(text, isError) {
    const result = document.getElementById("op-result");
    if (result) {
      result.textContent = text;
      result.className = "result " + (isError ? "error" : "info");
    }
  }

  function format(value) {
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // Local times for <time data-ms>, also in fragments htmx swaps in.
  function localTimes() {
    for (const el of document.querySelectorAll("time[data-ms]")) {
      const ms = Number(el.dataset.ms);
      if (ms > 0 && !el.dateTime) {
        const date = new Date(ms);
        el.textContent = date.toLocaleString();
        el.dateTime = date.toISOString();
      }
    }
  }
  localTimes();
  document.body.addEventListener("htmx:afterSwap", localTimes);

  // Forms that post JSON to the API (users, tokens, security).
  for (const form of document.querySelectorAll("form[data-api-form]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {};
      for (const [key, value] of new FormData(form).entries()) {
        const input = form.elements[key];
        if (form.hasAttribute("data-skip-empty") && value === "") continue;
        if (input && input.dataset && input.dataset.list) {
          // A list typed as "a, b c": an array (of numbers for data-list="number").
          const items = String(value).split(/[\s,]+/).filter(Boolean);
          if (items.length === 0 && form.hasAttribute("data-skip-empty")) continue;
          body[key] = input.dataset.list === "number" ? items.map(Number) : items;
        } else if (input && input.type === "checkbox") {
          body[key] = true;
        } else {
          body[key] = input && input.type === "number" ? Number(value) : value;
        }
      }
      try {
        const data = await api(form.dataset.method || "POST", form.getAttribute("action"), body);
        if (form.dataset.show && data && data[form.dataset.show]) {
          show("Copy this now, it is not shown again: " + data[form.dataset.show], false);
        } else if (form.dataset.result && data) {
          show(format(data[form.dataset.result]), false);
        } else if (form.dataset.redirect && data && data.id) {
          window.location.assign(form.dataset.redirect + encodeURIComponent(data.id));
        } else {
          window.location.reload();
        }
      } catch (error) {
        show(error.message, true);
      }
    });
  }

  // Firmware upload: the file is the request body, name and version in the query.
  for (const form of document.querySelectorAll("form[data-upload]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = form.elements["file"].files[0];
      if (!file) return;
      const query = new URLSearchParams({
        name: form.elements["name"].value,
        version: form.elements["version"].value,
      });
      show("Uploading " + file.name + "…", false);
      try {
        const response = await fetch(form.getAttribute("action") + "?" + query.toString(), {
          method: "POST",
          headers: { "X-CSRF-Token": csrf, "Content-Type": "application/octet-stream" },
          credentials: "same-origin",
          body: file,
        });
        if (!response.ok) {
          let message = response.statusText;
          try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
          throw new Error(message);
        }
        window.location.reload();
      } catch (error) {
        show("Upload failed: " + error.message, true);
      }
    });
  }

  // Buttons that call the API directly (delete, revoke).
  for (const button of document.querySelectorAll("button[data-api]")) {
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      try {
        await api(button.dataset.method || "POST", button.dataset.api);
        window.location.reload();
      } catch (error) {
        show(error.message, true);
      }
    });
  }

  // The device page.
  const device = document.getElementById("device");
  if (!device) return;
  const endpoint = device.dataset.endpoint;
  const base = "/api/devices/" + encodeURIComponent(endpoint);

  function outputFor(path) {
    const parts = path.split("/").filter(Boolean);
    return parts.length === 3 ? document.getElementById("value-" + parts.join("-")) : null;
  }

  function display(path, value) {
    if (value !== null && typeof value === "object" && value.resources) {
      const [o, i] = path.split("/").filter(Boolean);
      for (const [rid, v] of Object.entries(value.resources)) {
        const out = outputFor("/" + o + "/" + i + "/" + rid);
        if (out) out.textContent = format(v);
      }
      return;
    }
    const out = outputFor(path);
    if (out) out.textContent = format(value);
  }

  const chart = { path: null, points: [] };

  function plot() {
    const svg = document.getElementById("chart");
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const ns = "http://www.w3.org/2000/svg";
    const points = chart.points.slice(-120);
    if (points.length === 0) return;
    const xs = points.map((p) => p.t);
    const ys = points.map((p) => p.v);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const w = 600, h = 200, pad = 30;
    const sx = (t) => pad + ((t - x0) / (x1 - x0)) * (w - 2 * pad);
    const sy = (v) => h - pad - ((v - y0) / (y1 - y0)) * (h - 2 * pad);
    const axis = document.createElementNS(ns, "line");
    axis.setAttribute("x1", pad); axis.setAttribute("x2", w - pad);
    axis.setAttribute("y1", h - pad); axis.setAttribute("y2", h - pad);
    svg.appendChild(axis);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p) => sx(p.t).toFixed(1) + "," + sy(p.v).toFixed(1)).join(" "));
    svg.appendChild(line);
    for (const [value, y] of [[y1, pad], [y0, h - pad]]) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", 2); label.setAttribute("y", y + 4);
      label.textContent = String(Math.round(value * 100) / 100);
      svg.appendChild(label);
    }
    const last = document.createElementNS(ns, "text");
    last.setAttribute("x", w - pad); last.setAttribute("y", 14);
    last.setAttribute("text-anchor", "end");
    last.setAttribute("id", "chart-last");
    last.textContent = chart.path + " = " + points[points.length - 1].v;
    svg.appendChild(last);
  }

  function addPoint(path, value, t) {
    if (path !== chart.path) return;
    const v = typeof value === "boolean" ? Number(value) : Number(value);
    if (!Number.isFinite(v)) return;
    chart.points.push({ t, v });
    if (chart.points.length > 500) chart.points.shift();
    plot();
  }

  async function run(button) {
    const path = button.dataset.path;
    const op = button.dataset.op;
    try {
      if (op === "read") {
        const data = await api("GET", base + "/read?path=" + encodeURIComponent(path));
        display(path, data.value);
        show("Read " + path + ": " + format(data.value), false);
      } else if (op === "write") {
        const input = document.getElementById(button.dataset.input);
        await api("POST", base + "/write", { path, value: input.value });
        show("Wrote " + path, false);
      } else if (op === "execute") {
        await api("POST", base + "/execute", { path });
        show("Executed " + path, false);
      } else if (op === "observe") {
        const data = await api("POST", base + "/observations", { path });
        chart.path = path;
        chart.points = [];
        document.getElementById("chart-label").textContent = "Observing " + path;
        display(path, data.value);
        addPoint(path, data.value, Date.now());
        show("Observing " + path, false);
      }
    } catch (error) {
      show(op + " " + path + " failed: " + error.message, true);
    }
  }

  for (const button of document.querySelectorAll("button[data-op]")) {
    button.addEventListener("click", () => run(button));
  }

  const events = new EventSource("/api/events?endpoint=" + encodeURIComponent(endpoint));
  events.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    if (event.endpoint !== endpoint) return;
    if (event.type === "notification") {
      display(event.path, event.value);
      addPoint(event.path, event.value, Date.now());
    }
  };
})();
