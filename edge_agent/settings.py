"""Settings of the edge agent: environment (prefix ``EDGE_``), overridden by CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edge_agent.language import DEFAULT_LANGUAGES, parse_languages

_STATE = Path.home() / ".local" / "state" / "edge-agent"
_CACHE = Path.home() / ".cache" / "edge-cloud-asr"


class EdgeSettings(BaseSettings):
    """Everything the edge agent can be told. Injected into factories, never read globally."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", use_attribute_docstrings=True)

    # -- serving ---------------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Address the WebSocket/HTTP server binds to."""
    port: int = Field(default=8765, ge=0, le=65535)
    """WebSocket/HTTP port (0 picks a free port)."""
    max_sessions: int = Field(default=4, ge=1, le=1000)
    """Concurrent WebSocket connections (started or not); more are refused with close code 1013. The
    default is what 2 cores serve with the cloud on the same machine (BENCHMARKS.md, load section)."""
    max_session_s: float = Field(default=3600.0, gt=0)
    """Longest a session may stay open, in seconds of wall time."""
    max_session_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    """Most audio bytes one session may send."""
    max_frame_bytes: int = Field(default=256 * 1024, gt=0)
    """Largest single binary frame (larger ones, up to 16 MiB, get ``frame_too_large`` and close 1009)."""
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    """Time a new connection has to deliver its HTTP request head (the WebSocket upgrade); slower
    ones get 408 and are closed."""
    start_timeout_s: float = Field(default=10.0, gt=0)
    """A WebSocket must send ``start`` within this long (else ``start_timeout`` and close 1008): a
    connection that never starts holds a place under ``max_sessions`` for nothing."""
    idle_timeout_s: float = Field(default=300.0, gt=0)
    """A started WebSocket that sends no complete message for this long gets ``idle_timeout`` and close
    1008 (long enough for a push-to-talk client between utterances, or one waiting for corrections)."""
    send_timeout_s: float = Field(default=10.0, gt=0)
    """A client that has not taken one event off the socket for this long is not reading: it is closed."""
    ping_interval_s: float = Field(default=20.0, gt=0)
    """The server pings each WebSocket this often; a peer that has not answered (pong) the ping within
    the same time is gone (a cut network, a frozen client) and is closed with 1011."""
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    """On SIGTERM, connections get this long to finish before their tasks are cancelled."""
    session_queue_frames: int = Field(default=64, ge=1)
    """Frames a connection may have waiting in the WebSocket layer; past it the server stops reading the
    socket and TCP flow control holds the client back (backpressure)."""

    # -- model -----------------------------------------------------------------------------
    model: str = "moonshine"
    """Edge model: a family (``moonshine``) for its bundled model, or ``family:/path/to/dir`` for a
    model directory of that family."""
    intra_op_threads: int = Field(default=2, ge=1, le=64)
    """onnxruntime intra-op threads for the edge model."""
    model_dir: Path | None = None
    """Directory with Moonshine's ``encoder_model.ort``, ``decoder_model_merged.ort``, ``tokenizer.bin``;
    default: the one in the moonshine-cpp package (``EDGE_MODEL=moonshine:/dir`` says the same)."""
    model_cache_dir: Path = _CACHE / "edge-models"
    """Where the rebuilt (optimizable) ONNX graphs, and their quantized copies, are cached."""
    quantization: Literal["none", "int8", "w8", "int4"] = "w8"
    """Moonshine: weights the agent runs with, quantized once into ``model_cache_dir`` on first start
    (``edge-agent prepare`` does it ahead) and checked against the shipped model on the bundled sample.
    ``w8``: 8-bit weight-only MatMul (half the memory; pilot verification stays exact); ``int8``: dynamic
    int8 (int8 weights, activations quantized per call); ``int4``: 4-bit weight-only MatMul; ``none``:
    the shipped graphs as they are (int8 on disk, fp32 in memory). BENCHMARKS.md's quantization table
    compares them. A model directory of ONNX
    graphs (``EDGE_MODEL=moonshine:/dir`` from ``edge-agent quantize``) is served as it is."""
    max_chunk_s: float = Field(default=25.0, gt=1.0, le=28.0)
    """Moonshine: audio longer than this is split at low-energy points before decoding."""
    conformer_head: Literal["auto", "ctc", "rnnt"] = "auto"
    """Conformer: which decoder head runs. A hybrid RNNT/CTC export (the bundled model, NeMo's
    ``*_hybrid_*`` models) ships both: ``ctc`` (``model.onnx``: greedy, prefix-beam n-best) or ``rnnt``
    (``encoder``/``decoder``/``joiner.onnx``: greedy, no n-best); ``auto`` takes the transducer when
    present (NeMo's default for hybrid models, and the bundled model's more accurate head), else CTC."""

    # -- hotwords ---------------------------------------------------------------------------
    hotwords: Annotated[tuple[str, ...], NoDecode] = ()
    """Phrases every session favours (names, product words, jargon; at most 100 of at most 50
    characters), added after a session's own ``hotwords``. In the environment: comma-separated, or a
    JSON list (for phrases with commas)."""
    hotword_bonus: float | None = Field(default=None, ge=0.0, le=20.0)
    """Log-prob added to a token that continues a hotword while decoding on the edge; default: the value
    tuned for the model family (BENCHMARKS.md, hotwords); 0 turns edge biasing off (the phrases still go
    to the cloud)."""

    # -- VAD / endpointing ---------------------------------------------------------------
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Silero speech probability above which a frame is speech."""
    min_silence_ms: int = Field(default=500, ge=50, le=5000)
    """Silence that ends an utterance."""
    min_speech_ms: int = Field(default=200, ge=0, le=5000)
    """Shorter bursts of speech are ignored."""
    max_utterance_s: float = Field(default=20.0, gt=1.0, le=120.0)
    """An utterance is cut here even if the speaker goes on."""
    pre_roll_ms: int = Field(default=300, ge=0, le=2000)
    """Audio kept from before the VAD fires, so first words are not clipped."""
    end_pad_ms: int = Field(default=100, ge=0, le=1000)
    """Audio after the first silent VAD window that belongs to the utterance. The speculative final
    waits for it, so it is part of every open-mic final's latency."""
    adaptive_endpoint: bool = False
    """Let the speculative final decide how much silence ends the utterance: ``endpoint_fast_ms`` when it
    ends a sentence and is stable in a quiet pause, ``endpoint_slow_ms`` when it ends in a word like "and"
    or "the" or the VAD rises again, ``min_silence_ms`` otherwise (needs ``speculative``). Off by default:
    with Moonshine on 2 cores the speculative final itself takes ~350 ms, so the fast end rarely comes
    before the fixed one, while the slow end and sentences split at inner pauses cost more (BENCHMARKS.md)."""
    endpoint_fast_ms: int = Field(default=160, ge=50, le=5000)
    """Silence that ends an utterance judged complete (adaptive endpointing)."""
    endpoint_slow_ms: int = Field(default=900, ge=50, le=10000)
    """Silence that ends an utterance judged incomplete (adaptive endpointing)."""
    endpoint_quiet_vad: float = Field(default=0.1, ge=0.0, le=1.0)
    """Highest VAD probability in a pause that still counts as quiet for a fast endpoint."""
    endpoint_end_confidence: float = Field(default=0.9, ge=0.0, le=1.0)
    """Probability the model must give to the text ending where it ends (a full stop, question or
    exclamation mark, or the end of the sequence, right after the last word) for a fast endpoint."""

    # -- pilot inference / offramps -------------------------------------------------------
    pilot: bool = True
    """Decode partial audio while the user speaks (partials; final reuses the work)."""
    speculative: bool = True
    """Start the final decode at the first silence, before the endpoint fires (dropped if speech resumes)."""
    pilot_min_audio_ms: int = Field(default=600, ge=100)
    """No pilot before this much speech."""
    pilot_min_new_audio_ms: int = Field(default=400, ge=50)
    """A new pilot needs at least this much new audio since the last one."""
    speculative_escalation: bool = True
    """When the speculative final would escalate, ask the cloud at once, while the endpoint waits for
    silence (dropped if the speaker goes on); off: ask after the endpoint (needs ``speculative``)."""
    offramps: bool = True
    """Escalate early from pilots and stop hopeless final decodes (off: decide after the final decode)."""
    always_cloud: bool = False
    """Send every utterance to the cloud and keep its answer (a baseline; the edge result is the fallback)."""
    calibration_path: Path | None = None
    """Calibration file for the confidence model; default: the one shipped with the package."""
    escalation_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Escalate when P(edge wrong) is above this; default: from the calibration file."""
    target_offload_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    """Escalate this share of utterances for low confidence, on the traffic the agent hears: the threshold
    is the P(edge wrong) this share of the last 200 finals exceeded (from the calibration set until 20
    were seen). Overrides the calibrated threshold; early and stop thresholds stay calibrated."""

    # -- other languages ---------------------------------------------------------------------
    languages: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LANGUAGES
    """Languages the cloud may transcribe speech the edge judged not English in (ISO 639-1, comma-separated;
    English is always added): the cloud detects the language among them. Empty: any language Whisper
    knows. ``en`` alone turns the language offramp off (every request asks for English)."""
    other_languages_to_cloud: bool = True
    """Send speech the edge judged not English to the cloud. False (privacy): such audio never leaves the
    device; its final says it was not transcribed (``"transcribed": false``, ``"reason": "language"``)."""

    # -- cloud -------------------------------------------------------------------------------
    cloud_target: str | None = "localhost:50051"
    """gRPC target of the cloud recognizer (host:port, or dns:///name:port); empty disables escalation."""
    cloud_api_key: SecretStr | None = None
    """Bearer key for the cloud."""
    cloud_tls: bool = False
    """Connect to the cloud over TLS (system roots unless ``cloud_ca_file`` is set)."""
    cloud_ca_file: Path | None = None
    """PEM bundle of the CA that signed the cloud's certificate (implies TLS)."""
    cloud_client_cert_file: Path | None = None
    """PEM client certificate for mutual TLS."""
    cloud_client_key_file: Path | None = None
    """PEM private key of the client certificate."""
    ws_token: SecretStr | None = None
    """When set, WebSocket clients must send ``Authorization: Bearer <token>`` (or ``?token=``)."""
    cloud_deadline_s: float = Field(default=4.0, gt=0.0, le=120.0)
    """Deadline of one escalation; the edge never waits longer for the cloud."""
    cloud_n_best: int = Field(default=3, ge=1, le=10)
    """Hypotheses asked from the cloud."""
    edge_n_best: int = Field(default=1, ge=1, le=5)
    """Edge hypotheses sent as context when escalating; above 1 a small beam search runs first (slower)."""
    breaker_failures: int = Field(default=3, ge=1)
    """Consecutive cloud failures that open the circuit breaker."""
    breaker_reset_s: float = Field(default=10.0, gt=0.0)
    """How long the breaker stays open before one trial call."""
    queue_path: Path = _STATE / "escalations.sqlite3"
    """On-disk queue of escalations waiting for the cloud (survives restarts)."""
    queue_max_items: int = Field(default=1000, ge=1)
    """Most queued escalations; the oldest are dropped past this."""
    queue_max_age_s: float = Field(default=24 * 3600.0, gt=0)
    """Queued escalations older than this are dropped."""
    retry_initial_s: float = Field(default=1.0, gt=0)
    """First retry delay for queued escalations (doubles up to ``retry_max_s``)."""
    retry_max_s: float = Field(default=60.0, gt=0)
    """Longest retry delay."""
    retry_deadline_s: float = Field(default=30.0, gt=0)
    """Deadline of one retry of a queued escalation (no client waits on it, so it can be generous)."""

    log_level: str = "INFO"
    """Python logging level."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line, with utterance ids that join edge and cloud lines."""

    @field_validator("hotwords", mode="before")
    @classmethod
    def _hotword_list(cls, value: object) -> tuple[str, ...]:
        from edge_agent.asr.hotwords import validate_hotwords

        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p for p in text.split(",") if p.strip()]
        return validate_hotwords(value, "EDGE_HOTWORDS")

    @field_validator("languages", mode="before")
    @classmethod
    def _language_list(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return parse_languages(value)
        if isinstance(value, list | tuple):
            return parse_languages([str(v) for v in value])
        raise ValueError("EDGE_LANGUAGES: give language codes separated by commas, e.g. en,es,de")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from edge_agent.asr.registry import parse_model_spec

        return str(parse_model_spec(value))
