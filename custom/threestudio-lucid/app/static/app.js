// lucid-app's page: the new-run form, the selected run (progress, loss, images, 3D views, results) and
// the runs list. It polls the app's JSON API once a second; the selected run is in the URL (#run=KEY).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  // the page is polled every second: touch the DOM only where something changed (layout and paint
  // cost CPU, and the page may share the machine with the training it watches)
  const setText = (id, text) => { const el = $(id); if (el.textContent !== text) el.textContent = text; };
  const setDisabled = (id, value) => { const el = $(id); if (el.disabled !== value) el.disabled = value; };
  const LIVE_EVERY = 5000, IMAGES_EVERY = 3000;  // ms: how often a training run's splats and images are replaced
  const state = { info: null, config: null, originalText: "", key: null, detail: null, shown: {}, views: {},
    followNewest: true, pickedStep: null, defaultPrompt: "" };

  async function api(path, body) {
    const options = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    const response = await fetch(path, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok || data === null) {
      throw new Error((data && data.error) || `error: ${response.status} ${response.statusText} from ${path}`);
    }
    return data;
  }

  const clock = (s) => {
    if (s === null || s === undefined) return "?";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(r).padStart(2, "0");
  };
  const fmt = (v) => (typeof v === "number" ? (Math.abs(v) >= 100 || Number.isInteger(v) ? String(+v.toFixed(2)) : v.toPrecision(4)) : String(v));

  // ---------------------------------------------------------------- the form
  function renderFields(fields) {
    const box = $("fields");
    const typed = {};
    for (const input of box.querySelectorAll("input")) typed[input.name] = input.dataset.touched ? input.value : undefined;
    box.textContent = "";
    for (const [name, f] of Object.entries(fields)) {
      const wrap = document.createElement("div");
      if (name === "negative_prompt" || name === "model" || name === "init_prompt") wrap.className = "wide";
      const label = document.createElement("label");
      label.htmlFor = "field-" + name;
      label.textContent = f.label;
      if (f.note) { const n = document.createElement("span"); n.className = "note"; n.textContent = " (" + f.note + ")"; label.appendChild(n); }
      const input = document.createElement("input");
      input.id = "field-" + name; input.name = name;
      input.value = f.value === null || f.value === undefined ? "" : String(f.value);
      if (f.placeholder) input.placeholder = f.placeholder;
      if (f.type === "int" || f.type === "float") { input.inputMode = "decimal"; }
      if (name === "model") input.setAttribute("list", "models");
      input.disabled = !!f.disabled;
      input.addEventListener("input", () => { input.dataset.touched = "1"; });
      wrap.append(label, input);
      box.appendChild(wrap);
    }
  }

  async function loadConfig(id) {
    const cfg = await api("/api/config?id=" + encodeURIComponent(id));
    state.config = cfg;
    state.originalText = cfg.text;
    $("config-text").value = cfg.text;
    // the config's own prompt (LucidDreamer's configs have one), unless the user typed one
    if (!$("prompt").dataset.touched) $("prompt").value = cfg.prompt || state.defaultPrompt;
    renderFields(cfg.fields);
    $("launcher-row").hidden = !(state.info.threestudio && cfg.plugin);
  }

  async function editorChanged() {
    try {
      const data = await api("/api/config/fields", { text: $("config-text").value, config_id: $("config").value });
      // the editor's values, except where the user typed into a field
      const current = {};
      for (const input of $("fields").querySelectorAll("input")) if (input.dataset.touched) current[input.name] = input.value;
      renderFields(data.fields);
      for (const [name, value] of Object.entries(current)) {
        const input = $("field-" + name);
        if (input) { input.value = value; input.dataset.touched = "1"; }
      }
      $("form-error").textContent = "";
    } catch (e) { $("form-error").textContent = e.message; }
  }

  async function submitRun(event) {
    event.preventDefault();
    $("form-error").textContent = "";
    const fields = {};
    for (const input of $("fields").querySelectorAll("input")) if (!input.disabled) fields[input.name] = input.value;
    const text = $("config-text").value;
    const body = { prompt: $("prompt").value, config_id: $("config").value, fields,
      text: text === state.originalText ? null : text, launcher: $("launcher").value };
    $("run-button").disabled = true;
    try {
      const data = await api("/api/runs", body);
      select(data.key);
    } catch (e) {
      $("form-error").textContent = e.message;
    } finally {
      $("run-button").disabled = false;
    }
  }

  // ---------------------------------------------------------------- runs list
  function renderRuns(data) {
    const signature = JSON.stringify(data) + state.key;
    if (signature === state.runsShown) return;
    state.runsShown = signature;
    const body = $("runs-table").querySelector("tbody");
    body.textContent = "";
    for (const run of data.runs) {
      const tr = document.createElement("tr");
      tr.dataset.key = run.key;
      if (run.key === state.key) tr.className = "selected";
      let shown = run.state;
      if (run.state === "queued" && run.place) shown = `queued (#${run.place})`;
      for (const value of [run.prompt, run.label, shown, run.user || "", run.folder || ""]) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => select(run.key));
      body.appendChild(tr);
    }
    const busy = data.running.length, waiting = data.queued;
    setText("queue-summary", `${busy}/${data.devices.length} device${data.devices.length > 1 ? "s" : ""} busy, ${waiting} waiting`);
    state.active = busy > 0 || waiting > 0;
  }

  // ---------------------------------------------------------------- one run
  function select(key) {
    if (key !== state.key) {
      state.key = key; state.shown = {}; state.detail = null; state.liveAt = state.imagesAt = state.lossAt = 0;
      state.followNewest = true; state.pickedStep = null;
      setText("progress-video-state", "");
      for (const v of Object.values(state.views)) if (v) v.clear();  // another run: its camera is fitted anew
    }
    history.replaceState(null, "", "#run=" + encodeURIComponent(key));
    $("run").hidden = false;
    refresh();
  }

  function setOnce(name, value, apply) {
    if (state.shown[name] === value) return;
    state.shown[name] = value;
    apply(value);
  }

  function drawLoss(points) {
    const c = $("loss"), g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    g.fillStyle = "#6a7078"; g.font = "11px sans-serif";
    if (!points || points.length < 2) { g.fillText("no loss logged yet", 10, 20); return; }
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const positive = ys.every((y) => y > 0);
    const logScale = positive && Math.max(...ys) / Math.min(...ys) > 100;
    const f = logScale ? Math.log10 : (y) => y;
    const fy = ys.map(f);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...fy), y1 = Math.max(...fy);
    const L = 46, R = 8, T = 8, B = 22, W = c.width - L - R, H = c.height - T - B;
    const px = (x) => L + ((x - x0) / Math.max(x1 - x0, 1e-9)) * W;
    const py = (y) => T + H - ((y - y0) / Math.max(y1 - y0, 1e-12)) * H;
    g.strokeStyle = "#d9dce1"; g.strokeRect(L, T, W, H);
    g.strokeStyle = "#2f6fdf"; g.lineWidth = 1.2; g.beginPath();
    points.forEach((p, i) => (i ? g.lineTo(px(p[0]), py(fy[i])) : g.moveTo(px(p[0]), py(fy[i]))));
    g.stroke();
    const label = (y) => fmt(logScale ? Math.pow(10, y) : y);
    g.fillText(label(y1), 2, T + 9); g.fillText(label(y0), 2, T + H);
    g.fillText("step " + x0, L, c.height - 6); g.fillText(String(x1), L + W - 30, c.height - 6);
    g.fillText("train/loss" + (logScale ? " (log)" : ""), L + W / 2 - 30, c.height - 6);
  }

  function view(name, canvasId) {
    if (!(name in state.views)) {
      try { state.views[name] = new window.LucidViewer.View3D($(canvasId)); }
      catch (e) { $(canvasId).title = e.message; state.views[name] = null; }
    }
    return state.views[name];
  }

  // keepCamera: a new version of what is shown (the live splats, then the run's final ones) keeps the
  // camera the user has set
  async function showPly(name, canvasId, url, captionId, caption, keepCamera) {
    const v = view(name, canvasId);
    if (!v) return;
    try {
      const response = await fetch(url);
      if (!response.ok) return;
      const info = v.load(await response.arrayBuffer(), { keepCamera: !!keepCamera });
      if (captionId) $(captionId).textContent = caption(info, response);
    } catch (e) {
      if (captionId) $(captionId).textContent = "cannot show: " + e.message;
    }
  }

  // "Live splats: step 120, 5000 Gaussians (snapshot of 12:00:01)"; the step is left out when the app does
  // not know it (a live PLY without its sidecar: an older run, or read between the writer's two renames)
  function liveCaption(info, r) {
    const step = r.headers.get("X-Step"), written = parseFloat(r.headers.get("X-Written"));
    const when = Number.isFinite(written) ? new Date(1000 * written).toLocaleTimeString() : "?";
    const at = /^\d+$/.test(step || "") ? `step ${step}, ` : "";
    return `Live splats: ${at}${info.count} Gaussians ` +
      (r.headers.get("X-Source") === "checkpoint" ? "(newest checkpoint)" : `(snapshot of ${when})`);
  }

  // an error as one line of the page
  const oneLine = (message) => String(message || "unknown error").split("\n")[0].slice(0, 300);

  // the texture of an OBJ's material as ImageData (the viewer maps it per pixel by the OBJ's UVs)
  async function imageData(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const bitmap = await createImageBitmap(await response.blob());
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width; canvas.height = bitmap.height;
    const g = canvas.getContext("2d");
    g.drawImage(bitmap, 0, 0);
    return g.getImageData(0, 0, bitmap.width, bitmap.height);
  }

  // the newest export's mesh: its PLY with faces, or its OBJ with the MTL's texture or Kd (the server
  // chose the file: mesh.view); any failure is one line in the caption and an empty view
  async function showMesh(mesh) {
    const m = mesh.view;
    if (!m) {
      if (state.views.mesh) state.views.mesh.clear();
      setText("mesh-caption", "Mesh: no PLY with faces or OBJ to draw (downloads below)");
      return;
    }
    const v = view("mesh", "mesh-view");
    if (!v) { setText("mesh-caption", "Mesh: cannot draw here: " + oneLine($("mesh-view").title)); return; }
    try {
      const response = await fetch(m.url);
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      let info, note = "";
      if (m.kind === "obj") {
        const text = await response.text();
        let texture = null;
        if (m.texture) {
          try { texture = await imageData(m.texture); } catch (e) { note = `; ${m.texture_name} not read: ${oneLine(e.message)}`; }
        }
        info = v.loadObj(text, { texture, kd: m.kd });
        note = `, ${info.colour === "texture" ? m.texture_name : info.colour}${note}`;
      } else {
        info = v.load(await response.arrayBuffer());
      }
      setText("mesh-caption", `Mesh: ${info.count} vertices, ${info.faces} triangles (${m.name}${note})`);
    } catch (e) {
      v.clear();
      setText("mesh-caption", `Mesh: cannot show ${m.name}: ${oneLine(e.message)}`);
    }
  }

  function links(box, files) {
    box.textContent = "";
    for (const [label, url] of files) {
      if (!url) continue;
      const a = document.createElement("a");
      a.href = url; a.textContent = label; a.setAttribute("download", "");
      box.appendChild(a);
    }
  }

  function renderRun(d) {
    const running = d.state === "running" || d.state === "stopping";
    setText("run-title", `${d.prompt}  ·  ${d.label || ""}`);
    const badge = $("run-state");
    setText("run-state", d.state === "queued" && d.place ? `queued: #${d.place} in line` : d.state);
    if (badge.className !== "badge " + d.state) badge.className = "badge " + d.state;
    setText("run-message", d.message || "");
    setText("run-error", d.error || "");
    const p = d.progress;
    const total = (p && p.total) || d.max_steps;
    const step = p && p.step !== null ? p.step : (d.state === "done" ? total : d.last_step);
    const width = total && step !== null && step !== undefined ? Math.min(100, (100 * step) / total) + "%" : "0%";
    if ($("progress-bar").style.width !== width) $("progress-bar").style.width = width;
    let text = "";
    if (p && p.step !== null) {
      text = `step ${p.step} / ${total || "?"}`;
      if (p.rate) text += ` · ${p.rate >= 1 ? p.rate.toFixed(2) + " it/s" : (1 / p.rate).toFixed(2) + " s/it"}`;
      if (p.remaining !== null && p.remaining !== undefined) text += ` · ${clock(p.remaining)} left`;
      if (p.phase && p.phase !== "training") text += ` · ${p.phase}`;
    } else if (d.state === "running") {
      text = d.message || "starting (loading the model)";
    } else if (step !== null && step !== undefined && total) {
      text = `step ${step} / ${total}`;
    }
    setText("progress-text", text);
    setDisabled("stop", !d.actions.stop);
    setDisabled("resume", !d.actions.resume);
    setDisabled("export", !d.actions.export);
    const ex = d.export;
    setText("export-state", ex ? `export: ${ex.state}${ex.place ? " (#" + ex.place + " in line)" : ""}${ex.error ? " - " + ex.error : ""}` : "");
    setText("folder", d.folder ||
      (d.state === "failed" ? "(none: the launch stopped before it wrote a run folder)" : "(not started yet)"));
    setText("command", d.command || "");
    if ($("console-box").open) setText("console", (d.console || []).join("\n"));
    // the curve grows every second while it trains: redrawn every 5 s then, at once otherwise
    const lossKey = JSON.stringify(d.loss || []);
    if (lossKey !== state.shown.loss && (!running || !state.lossAt || Date.now() - state.lossAt > 5000)) {
      state.shown.loss = lossKey; state.lossAt = Date.now(); drawLoss(d.loss);
    }

    renderImages(d, false);
    renderProgressVideo(d);

    // splats: the live snapshot (save/live/) or checkpoint while it trains, then the run's point_cloud.ply;
    // at most one live refresh every LIVE_EVERY ms, however often the run writes them; the camera stays
    if (running && d.live && d.live.version && (!state.liveAt || Date.now() - state.liveAt >= LIVE_EVERY)) {
      if (state.shown.splats !== "live:" + d.live.version) state.liveAt = Date.now();
      setOnce("splats", "live:" + d.live.version, () => showPly("splats", "splat-view", d.live.url, "splats-caption",
        liveCaption, true));
    } else if (!running && d.splats) {
      setOnce("splats", d.splats, () => showPly("splats", "splat-view", d.splats, "splats-caption",
        (info) => `Splats: ${info.count} Gaussians (point_cloud.ply)`, true));
    }
    setOnce("splat-links", d.splats_download || "", () => links($("splat-links"), [["point_cloud.ply", d.splats_download]]));

    if ($("video-box").hidden !== !d.video) $("video-box").hidden = !d.video;
    setOnce("video", d.video || "", () => {
      if (d.video) $("video").src = d.video;
      links($("video-links"), [[(d.video_name || "video"), d.video_download]]);
    });

    const mesh = (d.exports || [])[0];
    if ($("mesh-box").hidden !== !mesh) $("mesh-box").hidden = !mesh;
    if (mesh) {
      setOnce("mesh", JSON.stringify([mesh.view, mesh.files]), () => {
        showMesh(mesh);
        const images = Object.keys(mesh.files).filter((k) => k.includes(".")).sort().map((k) => [k, mesh.files[k]]);
        links($("downloads"), [["PLY", mesh.files.ply], ["OBJ", mesh.files.obj], ["MTL", mesh.files.mtl], ...images,
          ["GLB", mesh.files.glb]]);
      });
    }

    const scores = d.scores;
    if ($("scores-box").hidden !== !scores) $("scores-box").hidden = !scores;
    setOnce("scores", JSON.stringify(scores || {}) + (d.toy_world_eval || ""), () => {
      const table = $("scores");
      table.textContent = "";
      for (const [k, v] of Object.entries(scores || {})) {
        const tr = document.createElement("tr");
        const a = document.createElement("td"), b = document.createElement("td");
        a.textContent = k; b.textContent = fmt(v);
        tr.append(a, b); table.appendChild(tr);
      }
      const img = $("toy-eval");
      img.hidden = !d.toy_world_eval;
      if (d.toy_world_eval) img.src = d.toy_world_eval;
    });
  }

  // the validation images of one step: every step that has them is on the slider, the newest by
  // default; while the run trains the slider follows each new step, unless the user moved it to an
  // earlier one (moving it back to the end follows again). Replaced at most every IMAGES_EVERY ms while
  // the run trains, at once when the user moves the slider (force).
  function renderImages(d, force) {
    const steps = d.image_steps || [];
    const running = d.state === "running" || d.state === "stopping";
    const due = force || !running || !state.imagesAt || Date.now() - state.imagesAt >= IMAGES_EVERY;
    if (!due) return;
    let i = steps.length - 1;
    if (!state.followNewest) {
      const picked = steps.findIndex((s) => s[0] === state.pickedStep);
      if (picked >= 0) i = picked;
    }
    const slider = $("image-step");
    const max = String(Math.max(steps.length - 1, 0));
    if (slider.max !== max) slider.max = max;
    if (i >= 0 && slider.value !== String(i)) slider.value = String(i);
    if ($("image-steps").hidden !== steps.length < 2) $("image-steps").hidden = steps.length < 2;
    const [step, urls] = i >= 0 ? steps[i] : [null, []];
    const shown = urls.join(" ");
    if (shown !== state.shown.images) state.imagesAt = Date.now();
    setOnce("images", shown, () => {
      const box = $("images");
      box.textContent = "";
      for (const url of urls) {
        const img = document.createElement("img");
        img.src = url; img.alt = `validation view at step ${step} (rgb | depth | alpha)`;
        box.appendChild(img);
      }
    });
    let caption = "Validation images (none yet)";
    if (step !== null) {
      const where = steps.length > 1 ? `, ${i + 1} of ${steps.length} steps` + (i === steps.length - 1 ? ", the newest" : "") : "";
      caption = `Validation images: step ${step}${where} (rgb | depth | alpha)`;
    }
    setText("images-caption", caption);
  }

  function pickImageStep() {
    const d = state.detail;
    if (!d) return;
    const steps = d.image_steps || [], i = +$("image-step").value;
    state.followNewest = i >= steps.length - 1;
    state.pickedStep = steps[i] ? steps[i][0] : null;
    renderImages(d, true);
  }

  // the progress video (save/progress.mp4): made on request from every step's validation images
  function renderProgressVideo(d) {
    const steps = d.image_steps || [], v = d.progress_video;
    if ($("progress-video-row").hidden !== !steps.length) $("progress-video-row").hidden = !steps.length;
    const label = !v ? "Make progress video" : v.stale ? "Update progress video (newer steps)" : "Remake progress video";
    setText("make-progress-video", label);
    setOnce("progress-video", v ? v.url : "", () => {
      links($("progress-video-links"), [["progress.mp4", v && v.download]]);
      const video = $("progress-video");
      video.hidden = !v;
      if (v) video.src = v.url; else video.removeAttribute("src");
    });
  }

  async function makeProgressVideo() {
    const key = state.key;
    if (!key) return;
    setDisabled("make-progress-video", true);
    setText("progress-video-state", "making the video ...");
    try {
      const v = await api("/api/run/progress-video", { key });
      if (key === state.key) {
        setText("progress-video-state", `${v.frames} frame${v.frames > 1 ? "s" : ""} (steps ${v.steps[0]} to ` +
          `${v.steps[v.steps.length - 1]}), ${v.fps} frames a second`);
        state.shown["progress-video"] = undefined;  // the same URL may hold a new video
      }
      refresh();
    } catch (e) {
      if (key === state.key) setText("progress-video-state", oneLine(e.message));
    } finally {
      setDisabled("make-progress-video", false);
    }
  }

  async function act(what) {
    if (!state.key) return;
    try {
      const data = await api("/api/run/" + what, { key: state.key });
      if (data.key && data.key !== state.key) select(data.key);
      else refresh();
    } catch (e) { setText("run-error", e.message); }
  }

  // ---------------------------------------------------------------- polling
  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      renderRuns(await api("/api/runs"));
      if (state.key) {
        const key = state.key;
        const d = await api("/api/run?key=" + encodeURIComponent(key));
        if (key === state.key) { state.detail = d; renderRun(d); }
      }
    } catch (e) {
      if (state.key) setText("run-error", e.message);
    } finally {
      busy = false;
    }
  }

  async function init() {
    const info = await api("/api/info");
    state.info = info;
    $("devices").textContent = "devices: " + info.devices.join(", ");
    const select_ = $("config");
    const groups = {};
    for (const c of info.configs) {
      const group = c.plugin ? (c.world === "luciddreamer" ? "LucidDreamer's configs" : "threestudio-lucid")
        : "threestudio baselines";
      if (!groups[group]) { groups[group] = document.createElement("optgroup"); groups[group].label = group; select_.appendChild(groups[group]); }
      const o = document.createElement("option");
      o.value = c.id; o.textContent = c.label;
      groups[group].appendChild(o);
    }
    select_.value = info.default_config;
    const captions = $("captions");
    for (const c of info.captions) { const o = document.createElement("option"); o.value = c; captions.appendChild(o); }
    const models = document.createElement("datalist");
    models.id = "models";
    for (const m of info.models) { const o = document.createElement("option"); o.value = m; models.appendChild(o); }
    document.body.appendChild(models);
    state.defaultPrompt = info.captions.length ? info.captions[info.captions.length - 1] : "";
    $("prompt").addEventListener("input", () => { $("prompt").dataset.touched = "1"; });
    await loadConfig(select_.value);
    select_.addEventListener("change", () => loadConfig(select_.value).catch((e) => { $("form-error").textContent = e.message; }));
    $("config-text").addEventListener("change", editorChanged);
    $("reset-config").addEventListener("click", () => { $("config-text").value = state.originalText; editorChanged(); });
    $("run-form").addEventListener("submit", submitRun);
    $("stop").addEventListener("click", () => act("stop"));
    $("resume").addEventListener("click", () => act("resume"));
    $("export").addEventListener("click", () => act("export"));
    $("image-step").addEventListener("input", pickImageStep);
    $("make-progress-video").addEventListener("click", makeProgressVideo);
    $("console-box").addEventListener("toggle", () => { if (state.detail) setText("console", (state.detail.console || []).join("\n")); });
    const fromHash = () => {
      const m = location.hash.match(/run=([^&]+)/);
      if (m && decodeURIComponent(m[1]) !== state.key) select(decodeURIComponent(m[1]));
    };
    window.addEventListener("hashchange", fromHash);
    fromHash();
    // once a second while something runs or waits, every 5 s when all is quiet
    let last = 0;
    setInterval(() => {
      const active = state.active || (state.detail && ["running", "stopping", "queued"].includes(state.detail.state));
      if (active || Date.now() - last >= 5000) { last = Date.now(); refresh(); }
    }, 1000);
    refresh();
    document.body.dataset.ready = "1";
  }

  window.addEventListener("DOMContentLoaded", () => init().catch((e) => { $("form-error").textContent = e.message; }));
})();
