// The page's logic: microphone → AudioWorklet (16-bit PCM frames) → WebSocket /v1/stream → events on the
// page. The protocol is README's "WebSocket protocol (/v1/stream)".

// 50 ms frames: small enough that the agent's VAD and pilot see audio promptly, large enough that a
// 48 kHz stream is 20 messages a second rather than one per 128-sample render block.
const FRAME_MS = 50;
// The agent resamples any rate in this range; a context outside it is reopened at the nearest bound.
const MIN_RATE = 8000;
const MAX_RATE = 48000;
// After `stop` the agent finishes the last utterance (and may wait for the cloud, up to its deadline)
// before `end`; past this the page gives up waiting and closes.
const END_TIMEOUT_MS = 30000;
const FLUSH_TIMEOUT_MS = 2000;

const toggle = document.getElementById("toggle");
const statusLine = document.getElementById("status");
const partialLine = document.getElementById("partial");
const finalsList = document.getElementById("finals");
const errorsSection = document.getElementById("errors-section");
const errorsList = document.getElementById("errors");
const finalTemplate = document.getElementById("final-template");

let session = null;

function setStatus(text) {
  statusLine.textContent = text;
}

function setButton(state) {
  toggle.dataset.state = state;
  toggle.textContent = state === "running" ? "Stop" : "Start";
  toggle.disabled = state === "busy";
}

function showError(code, message) {
  const item = document.createElement("li");
  item.textContent = `${code}: ${message}`;
  errorsList.append(item);
  errorsSection.hidden = false;
}

function streamUrl() {
  // Same origin, and wss: under https: so a page served through TLS never opens a plain socket.
  const url = new URL("/v1/stream", window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the agent also takes its token as a query parameter.
  const token = new URLSearchParams(window.location.search).get("token");
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function openContext() {
  const context = new AudioContext();
  if (context.sampleRate >= MIN_RATE && context.sampleRate <= MAX_RATE) return context;
  // e.g. a 96 kHz sound card: let the browser resample to a rate the agent takes.
  const rate = Math.min(MAX_RATE, Math.max(MIN_RATE, context.sampleRate));
  context.close();
  return new AudioContext({ sampleRate: rate });
}

function openSocket(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("could not connect to the edge agent"));
  });
}

function withTimeout(promise, ms) {
  return Promise.race([promise, new Promise((resolve) => setTimeout(resolve, ms))]);
}

function formatPercent(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 100)} %`;
}

function fillFinal(item, event) {
  let text = event.text || "(nothing recognized)";
  // Speech judged not English that nothing transcribed (kept on the device, or the cloud not answering).
  if (event.transcribed === false) text = "(not transcribed: another language)";
  item.querySelector(".text").textContent = text;
  item.querySelector(".language").textContent = event.language || "–";
  item.querySelector(".confidence").textContent = formatPercent(event.confidence);
  item.querySelector(".source").textContent = event.source;
  item.dataset.source = event.source;
}

function addFinal(event) {
  const item = finalTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.utteranceId = event.utterance_id;
  fillFinal(item, event);
  let escalated = "no";
  if (event.escalated) {
    item.dataset.reason = event.reason;
    escalated = `yes (${event.reason})`;
    if (event.cloud_pending) escalated += ", cloud answer pending";
  }
  item.querySelector(".escalated").textContent = escalated;
  item.querySelector(".latency").textContent = `${Math.round(event.latency_ms)} ms`;
  finalsList.append(item);
  if (partialLine.dataset.utteranceId === event.utterance_id) partialLine.textContent = "";
}

function applyCorrection(event) {
  for (const item of finalsList.children) {
    if (item.dataset.utteranceId === event.utterance_id) {
      fillFinal(item, event);
      item.classList.add("corrected");
      // A correction is the cloud's late answer to an escalation: no longer pending.
      item.querySelector(".escalated").textContent = `yes (${item.dataset.reason || "escalated"})`;
    }
  }
}

function onEvent(current, event) {
  switch (event.type) {
    case "partial":
      partialLine.dataset.utteranceId = event.utterance_id;
      partialLine.textContent = event.text;
      break;
    case "final":
      addFinal(event);
      break;
    case "correction":
      applyCorrection(event);
      break;
    case "error":
      showError(event.code, event.message);
      break;
    case "end":
      current.ended(event);
      break;
    default:
      break; // events this page does not show
  }
}

function releaseAudio(current) {
  if (current.released) return;
  current.released = true;
  if (current.media) for (const track of current.media.getTracks()) track.stop();
  if (current.node) {
    current.node.port.onmessage = null;
    current.node.disconnect();
  }
  current.context.close();
}

function onClose(current, close) {
  current.closed = true;
  current.ended(null);
  if (current.stopping) return;
  // The agent closed first (refused the token, limits, errors, shutdown): the session is over.
  releaseAudio(current);
  if (session === current) session = null;
  partialLine.textContent = "";
  setStatus(`Disconnected (${close.code}${close.reason ? `: ${close.reason}` : ""}).`);
  setButton("idle");
}

function sendFrames(current) {
  const frameSamples = Math.round((current.context.sampleRate * FRAME_MS) / 1000);
  const node = new AudioWorkletNode(current.context, "pcm-framer", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    // Explicit mono: a stereo microphone is down-mixed by the browser before the processor sees it.
    channelCount: 1,
    channelCountMode: "explicit",
    processorOptions: { frameSamples },
  });
  current.node = node;
  current.flushed = new Promise((resolve) => {
    node.port.onmessage = (message) => {
      if (message.data === "flushed") resolve();
      else if (current.ws.readyState === WebSocket.OPEN) current.ws.send(message.data);
    };
  });
  current.context.createMediaStreamSource(current.media).connect(node);
  // The processor writes no output (silence); the connection is what makes the graph pull it.
  node.connect(current.context.destination);
}

async function start() {
  setButton("busy");
  errorsList.replaceChildren();
  errorsSection.hidden = true;
  setStatus("Connecting…");
  // Created inside the click so the browser's autoplay policy lets it run.
  const current = { context: openContext(), ws: null, media: null, node: null, stopping: false };
  current.endPromise = new Promise((resolve) => {
    current.ended = resolve;
  });
  try {
    // The processor and the socket come first and the microphone last, so audio flows to the agent from
    // the moment the microphone opens: the first words after Start are not lost.
    await current.context.audioWorklet.addModule("/static/pcm-worklet.js");
    current.ws = await openSocket(streamUrl());
    current.ws.onmessage = (message) => {
      if (typeof message.data === "string") onEvent(current, JSON.parse(message.data));
    };
    current.ws.onclose = (close) => onClose(current, close);
    // Sent now rather than after the permission prompt: the agent closes a socket that has not started
    // within EDGE_START_TIMEOUT_S, and a person may take longer than that to answer the prompt.
    const start = { type: "start", sample_rate: current.context.sampleRate, encoding: "pcm_s16le" };
    current.ws.send(JSON.stringify(start));
    setStatus("Waiting for the microphone…");
    current.media = await navigator.mediaDevices.getUserMedia({
      // The models were trained on unprocessed speech: no noise suppression or gain riding; echo
      // cancellation stays on for laptops that play sound while the microphone listens.
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    current.stopping = true; // this failure is reported here, not as a disconnection
    if (current.ws) current.ws.close(1000, "not started");
    releaseAudio(current);
    showError("start", err.message || String(err));
    setStatus("Not running.");
    setButton("idle");
    return;
  }
  if (current.closed) {
    releaseAudio(current); // the agent closed while the prompt was open; onClose said why
    return;
  }
  sendFrames(current);
  session = current;
  setButton("running");
  setStatus(`Listening (${current.context.sampleRate} Hz)…`);
  await current.context.resume();
}

async function stop() {
  const current = session;
  session = null;
  current.stopping = true;
  setButton("busy");
  setStatus("Finishing…");
  // Every captured sample goes out before `stop`, so the last words are transcribed.
  current.node.port.postMessage("flush");
  await withTimeout(current.flushed, FLUSH_TIMEOUT_MS);
  releaseAudio(current);
  let end = null;
  if (current.ws.readyState === WebSocket.OPEN) {
    current.ws.send(JSON.stringify({ type: "stop" }));
    end = await withTimeout(current.endPromise, END_TIMEOUT_MS);
  }
  current.ws.close(1000, "stopped");
  partialLine.textContent = "";
  setStatus(end ? `Stopped: ${end.utterances} utterance(s).` : "Stopped (the agent did not confirm the end).");
  setButton("idle");
}

toggle.addEventListener("click", () => {
  if (session) stop();
  else start();
});

if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.AudioWorkletNode) {
  setStatus("Press Start and speak.");
  setButton("idle");
} else {
  // getUserMedia exists only in secure contexts: https, or http on localhost.
  setStatus("This page needs the microphone: open it over https or on localhost, in a current browser.");
  setButton("busy");
}
