// The demo page of `lrcn serve`: pick an image, ask a question, show the answers and
// where the model looked. Plain JS, no build step, no network beyond this server's API.
"use strict";

(function () {
  const TOP_K = 5;
  const CANVAS_SIDE = 512;  // backing-store size of the longer side of the drawn image
  // The heat map's colormap, blue (low) to red (high), as [position, [r, g, b]] stops; its
  // hot end is saturated so that it shows on the light backgrounds of easy-VQA.
  const RAMP = [
    [0.0, [40, 60, 200]],
    [0.35, [20, 190, 230]],
    [0.6, [250, 220, 40]],
    [0.8, [250, 120, 20]],
    [1.0, [210, 20, 20]],
  ];

  const $ = (id) => document.getElementById(id);
  const form = $("ask-form");
  const fileInput = $("image-input");
  const dropzone = $("dropzone");
  const imageName = $("image-name");
  const question = $("question");
  const askButton = $("ask");
  const errorBox = $("error");
  const result = $("result");
  const canvas = $("heatmap");
  const placeholder = $("canvas-placeholder");
  const toggle = $("toggle-heatmap");
  const attentionNote = $("attention-note");
  const answerBlock = $("answer-block");
  const answersList = $("answers");
  const wordsBox = $("question-words");
  const answerableBox = $("answerable");
  const latencyBox = $("latency");
  const statusBox = $("status");

  const state = {
    file: null,       // the Blob sent to the server
    bitmap: null,     // the decoded image, drawn on the canvas
    attention: null,  // rows of the last answer's image attention, or null
    answered: 0,      // answers shown so far (the result's data-answered)
    ticket: 0,        // bumped by each request and each new image: stale answers are dropped
  };

  // ---- image choice -------------------------------------------------------------------

  async function setImage(blob, name) {
    let image;
    try {
      image = await decode(blob);
    } catch (err) {
      showError(`${name} is not an image this browser can open.`);
      return;
    }
    state.ticket++;
    state.file = blob;
    state.bitmap = image;
    state.attention = null;
    imageName.textContent = name;
    clearError();
    clearAnswer();
    statusBox.textContent = "Image ready. Ask a question about it.";
    draw();
  }

  function decode(blob) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const img = new Image();
      img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("decode")); };
      img.src = url;
    });
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    if (file) setImage(file, file.name);
  });

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });

  async function loadExamples() {
    let examples;
    try {
      const response = await fetch("/api/examples");
      if (!response.ok) return;
      examples = await response.json();
    } catch (err) {
      return;  // the page works without examples
    }
    if (!Array.isArray(examples) || examples.length === 0) return;
    const list = $("examples");
    for (const example of examples) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      button.dataset.testid = "example";
      button.title = `Use this image and ask: ${example.question}`;
      const img = document.createElement("img");
      img.src = example.url;
      img.alt = `Example: ${example.name.replace(/[-_]/g, " ")}`;
      img.width = 64;
      img.height = 64;
      button.append(img);
      button.addEventListener("click", () => useExample(example));
      item.append(button);
      list.append(item);
    }
    $("examples-section").hidden = false;
  }

  async function useExample(example) {
    try {
      const response = await fetch(example.url);
      if (!response.ok) throw new Error(String(response.status));
      await setImage(await response.blob(), example.name);
    } catch (err) {
      showError(`Could not load the example image ${example.name}.`);
      return;
    }
    question.value = example.question;
    question.focus();
  }

  // ---- asking -------------------------------------------------------------------------

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!state.file) {
      showError("Choose an image first.");
      return;
    }
    if (!text) {
      showError("Type a question first.");
      question.focus();
      return;
    }
    clearError();
    const body = new FormData();
    body.append("image", state.file, imageName.textContent || "image");
    body.append("question", text);
    body.append("top_k", String(TOP_K));
    setBusy(true);
    const ticket = ++state.ticket;
    try {
      const response = await fetch("/api/predict", { method: "POST", body });
      const payload = await readJson(response);
      if (ticket !== state.ticket) return;  // the image changed while the model answered
      if (!response.ok) {
        clearAnswer();
        showError(errorMessage(payload, response.status));
        return;
      }
      showAnswer(payload);
    } catch (err) {
      if (ticket !== state.ticket) return;
      clearAnswer();
      showError("Could not reach the server. Is `lrcn serve` still running?");
    } finally {
      setBusy(false);
    }
  });

  async function readJson(response) {
    try {
      return await response.json();
    } catch (err) {
      return null;
    }
  }

  // FastAPI's detail is a string, or a list of validation errors with a `msg` each.
  function errorMessage(payload, status) {
    const detail = payload && payload.detail;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((d) => {
        const where = Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : "";
        return where ? `${where}: ${d.msg}` : d.msg;
      }).join("; ");
    }
    return `The server answered with an error (HTTP ${status}).`;
  }

  function setBusy(busy) {
    askButton.disabled = busy;
    askButton.textContent = busy ? "Asking…" : "Ask";
    result.setAttribute("aria-busy", String(busy));
    if (busy) statusBox.textContent = "Asking the model…";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    statusBox.textContent = "";
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  function clearAnswer() {
    answerBlock.hidden = true;
    answersList.replaceChildren();
    wordsBox.replaceChildren();
    state.attention = null;
    attentionNote.hidden = true;
    draw();
  }

  // ---- the answer ---------------------------------------------------------------------

  function percent(p) {
    const value = 100 * p;
    return value >= 10 || value === 0 ? `${Math.round(value)}%` : `${value.toFixed(1)}%`;
  }

  function showAnswer(data) {
    answersList.replaceChildren();
    for (const { answer, score } of data.answers || []) {
      const item = document.createElement("li");
      item.className = "answer";
      item.dataset.testid = "answer-bar";
      const label = document.createElement("span");
      label.className = "answer-label";
      label.textContent = answer;
      const track = document.createElement("span");
      track.className = "answer-track";
      const bar = document.createElement("span");
      bar.className = "answer-bar";
      bar.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      track.append(bar);
      const value = document.createElement("span");
      value.className = "answer-score";
      value.dataset.testid = "answer-score";
      value.textContent = percent(score);
      item.append(label, track, value);
      item.setAttribute("aria-label", `${answer}: ${percent(score)}`);
      answersList.append(item);
    }

    wordsBox.replaceChildren();
    const tokens = data.question_tokens || [];
    const weights = data.question_attention || [];
    const top = Math.max(0, ...weights) || 1;
    tokens.forEach((word, i) => {
      const span = document.createElement("span");
      span.className = "word";
      span.dataset.testid = "word";
      const w = weights[i] || 0;
      span.style.setProperty("--weight", (w / top).toFixed(3));
      span.title = `attention ${percent(w)}`;
      span.textContent = word;
      wordsBox.append(span, " ");
    });

    answerableBox.textContent = data.answerable == null
      ? "not reported by this model"
      : percent(data.answerable);
    latencyBox.textContent = typeof data.latency_ms === "number"
      ? `${data.latency_ms.toFixed(1)} ms`
      : "—";

    const grid = data.image_attention || [];
    state.attention = grid.length && grid[0].length ? grid : null;
    attentionNote.hidden = state.attention !== null;
    attentionNote.textContent = state.attention ? "" : "This model reports no attention over the image.";
    answerBlock.hidden = false;
    result.dataset.answered = String(++state.answered);
    const best = (data.answers || [])[0];
    statusBox.textContent = best
      ? `The model answers “${best.answer}” (${percent(best.score)}).`
      : "The model gave no answer.";
    draw();
  }

  // ---- the canvas: the image, and the attention grid over it ---------------------------

  toggle.addEventListener("change", draw);

  function draw() {
    const ctx = canvas.getContext("2d");
    const image = state.bitmap;
    canvas.dataset.overlay = "off";
    if (!image) {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      placeholder.hidden = false;
      return;
    }
    placeholder.hidden = true;
    const w0 = image.naturalWidth || image.width;
    const h0 = image.naturalHeight || image.height;
    const scale = CANVAS_SIDE / Math.max(w0, h0);
    canvas.width = Math.round(w0 * scale);
    canvas.height = Math.round(h0 * scale);
    // Small images (easy-VQA's are 64 px) stay crisp when blown up; photos are smoothed.
    ctx.imageSmoothingEnabled = scale < 2;
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    let label = `The chosen image, ${imageName.textContent}.`;
    if (state.attention && toggle.checked) {
      drawAttention(ctx, state.attention);
      canvas.dataset.overlay = "on";
      canvas.dataset.grid = `${state.attention.length}x${state.attention[0].length}`;
      label += " Overlaid: a heat map of where the model looked, bright where it looked most.";
    }
    canvas.setAttribute("aria-label", label);
  }

  function drawAttention(ctx, grid) {
    const rows = grid.length;
    const cols = grid[0].length;
    // The colours span this map's own lowest..highest weight (the legend's low..high).
    const flat = grid.flat();
    const low = Math.min(...flat);
    const span = Math.max(...flat) - low;
    // One pixel per grid cell, coloured and made transparent by its weight...
    const small = document.createElement("canvas");
    small.width = cols;
    small.height = rows;
    const sctx = small.getContext("2d");
    const pixels = sctx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = span > 0 ? (grid[r][c] - low) / span : 0;
        const [red, green, blue] = colormap(v);
        const k = 4 * (r * cols + c);
        pixels.data[k] = red;
        pixels.data[k + 1] = green;
        pixels.data[k + 2] = blue;
        pixels.data[k + 3] = Math.round(255 * (0.08 + 0.62 * v));
      }
    }
    sctx.putImageData(pixels, 0, 0);
    // ...then scaled up over the image with smoothing, so the cells blend into a heat map.
    ctx.save();
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
    ctx.restore();
  }

  function colormap(v) {
    for (let i = 1; i < RAMP.length; i++) {
      const [p1, c1] = RAMP[i];
      if (v <= p1) {
        const [p0, c0] = RAMP[i - 1];
        const t = (v - p0) / (p1 - p0);
        return c0.map((x, j) => Math.round(x + t * (c1[j] - x)));
      }
    }
    return RAMP[RAMP.length - 1][1];
  }

  draw();
  loadExamples();
})();
