"""Settings of the cloud server: environment (prefix ``CLOUD_``), overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud_server.hotword_filter import DEFAULT_THRESHOLD as DEFAULT_FILTER_THRESHOLD
from cloud_server.results import DEFAULT_HOTWORD_PROMPT_TOKENS


class CloudSettings(BaseSettings):
    """Everything the cloud server can be told. Injected into factories, never read globally."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_", extra="ignore", use_attribute_docstrings=True)

    host: str = "0.0.0.0"
    """Address the REST API binds to."""
    port: int = Field(default=8080, ge=0, le=65535)
    """REST API port (0 picks a free port)."""
    grpc_host: str = "[::]"
    """Address the gRPC server binds to."""
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port (0 picks a free port)."""

    model: str = "base"
    """``base`` (bundled, multilingual), ``tiny.en`` (extra ``tiny``) or a CTranslate2 Whisper directory."""
    model_cache_dir: Path = Path.home() / ".cache" / "edge-cloud-asr" / "models"
    """Where the bundled base model is assembled from its two package parts (once)."""
    compute_type: str = "int8"
    """CTranslate2 compute type on CPU."""
    cpu_threads: int = Field(default=2, ge=1, le=64)
    """Threads per inference worker."""
    workers: int = Field(default=1, ge=1, le=16)
    """Inference workers that may run at the same time (each uses ``cpu_threads``)."""
    max_queue: int = Field(default=4, ge=1, le=1000)
    """Requests admitted at once (running plus waiting). Past this, RESOURCE_EXHAUSTED / HTTP 503."""
    retry_after_s: int = Field(default=2, ge=1, le=3600)
    """Retry-After sent with a refusal for overload."""

    hotword_prompt_tokens: int = Field(default=DEFAULT_HOTWORD_PROMPT_TOKENS, ge=0, le=223)
    """Tokens of Whisper's prompt a request's hotwords may fill: phrases are kept in the order given
    while they fit (0: the whole 223-token prompt). Longer lists make Whisper hear names in ordinary
    speech."""
    hotword_filter: bool = True
    """Prompt Whisper only with the hotwords the edge's hypotheses of the utterance spell closely
    (``cloud_server/hotword_filter.py``): a list of names otherwise makes Whisper hear them in speech
    that holds none. Applies to gRPC requests whose final ``EdgeContext`` carries hypotheses; the
    rest (REST, other gRPC clients, early escalations) keep the whole list. Held out it kept 80 % hotword
    recall (83 % with the whole list) and cut the cost of an unrelated 100-phrase list on ordinary speech
    from +1.4 to +0.4 WER points (BENCHMARKS.md, hotwords)."""
    hotword_filter_threshold: float = Field(default=DEFAULT_FILTER_THRESHOLD, ge=0.0, le=1.0)
    """How closely (normalized Levenshtein similarity, spaces ignored) some run of words of an edge
    hypothesis must spell a phrase for the filter to keep it: 1 only exact spellings, 0 every phrase."""
    beam_size: int = Field(default=5, ge=1, le=16)
    """Default beam width."""
    max_n_best: int = Field(default=5, ge=1, le=16)
    """Upper bound on hypotheses a client may ask for."""
    max_audio_s: float = Field(default=600.0, gt=0)
    """Longest audio accepted in one request, in seconds."""
    replay_items: int = Field(default=512, ge=0, le=100000)
    """Answers kept to replay a retried utterance (same ``utterance_id``, config and audio) instead of
    decoding it again; 0 turns replays off."""
    replay_ttl_s: float = Field(default=3600.0, gt=0)
    """How long an answer stays replayable."""
    long_audio_s: float = Field(default=30.0, gt=0, le=30.0)
    """Audio longer than this is split at pauses with the VAD before decoding."""
    max_upload_mb: float = Field(default=25.0, gt=0)
    """Largest REST upload, in MiB (HTTP 413 above)."""
    language: str | None = None
    """Default language code; unset means detect."""
    second_pass: bool = True
    """When a gRPC request's EdgeContext carries edge hypotheses, rank them together with the cloud's 3 best
    by Whisper's teacher-forced score (plus a bonus for a text both lists hold) and return that ranking.
    Measured held out (scripts/eval_second_pass.py): WER 24.3% vs 25.6% cloud-only and 35.4% edge-only; it
    costs ~0.5 s more compute per such request on 2 threads (1.2 s vs 0.6 s for a 3 s utterance). Utterances
    over 30 s skip it."""
    second_pass_weights: Path = Path(__file__).with_name("second_pass.json")
    """Versioned JSON with the second pass's weights (as scripts/eval_second_pass.py writes it)."""
    pilot: bool = False
    """Cloud pilots: while a StreamingRecognize stream is open and the inference pool has nothing else to
    run, greedily decode the audio received so far; the final decode teacher-forces the latest pilot's
    tokens on the full audio and decodes only from the first one greedy decoding would not have chosen.
    Greedy finals (beam 1, n-best 1) are the same as without pilots; with a wider beam every hypothesis
    starts with the verified tokens. A request arriving meanwhile (the stream's own final too) cancels a
    running pilot, but waits for the model call it is in (the encoder or its decode). Off by default:
    CTranslate2 feeds a forced prefix through the decoder one step at a time, which costs what decoding
    it does, so on CPU finals came out slower with pilots (scripts/bench_cloud_pilot.py)."""
    pilot_interval_s: float = Field(default=1.0, ge=0.1, le=30.0)
    """Audio a stream must receive since its last pilot started (and before its first) for another to
    run; at most one pilot per stream is in flight. Streams past 30 s get no more pilots."""

    tls_cert_file: Path | None = None
    """PEM server certificate (chain): serve gRPC and REST over TLS."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: require and verify client certificates (mutual TLS) on gRPC and REST."""
    api_key: SecretStr | None = None
    """When set, REST needs ``Authorization: Bearer <key>`` and gRPC the same in metadata."""
    grace_s: float = Field(default=5.0, ge=0)
    """Grace period for in-flight requests on shutdown."""
    log_level: str = "INFO"
    """Python logging level."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line, with utterance ids that join edge and cloud lines."""
