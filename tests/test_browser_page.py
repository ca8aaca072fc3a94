"""The browser page (``GET /``) in real headless Chromium: a fake microphone playing real speech, the page's
AudioWorklet and WebSocket client, the real edge model, and what the page then shows."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import ConsoleMessage, Error, Page, WebSocketRoute, sync_playwright

from tests.servers import ThreadedEdge, edge_settings
from tests.speech import Clip, wer

pytestmark = pytest.mark.model
RATE = 16000
TOKEN = "page-token"
CLIP = "librivox_0890.wav"  # 5.3 s of read speech: long enough for pilots (partials) while it plays
MAX_WER = 0.2
# Bounds, not expectations: the page needs ~8 s of real-time audio; a loaded CI machine running Chromium
# and the model on 2 cores can be many times slower.
FINAL_TIMEOUT_MS = 90_000
STOP_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def edge(edge_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEdge]:
    """Edge only (no cloud), behind a token: the page must pass the one in its own URL through."""
    settings = edge_settings(tmp_path_factory.mktemp("page-edge"), ws_token=TOKEN)
    server = ThreadedEdge(settings, edge_model).start()
    yield server
    server.stop()


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Debian's chromium is not installed: `apt-get install chromium` (scripts/test.sh installs it "
            "when run as root); Playwright drives that browser and downloads none",
            pytrace=False,
        )
    return path


def _microphone_wav(clip: Clip, path: Path) -> Path:
    """The clip as Chromium's fake microphone: 16-bit PCM, 1 s of silence before the speech and 3 s after
    it, so the agent's VAD (500 ms of silence) ends the utterance before the file plays again."""
    audio = np.concatenate([np.zeros(RATE, np.float32), clip.samples(), np.zeros(3 * RATE, np.float32)])
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path


# Records, in order, every partial text the page shows and the arrival of each final; set up before Start
# so nothing the page shows is missed between two polls.
_WATCH = """() => {
  window.seen = [];
  const partial = document.getElementById("partial");
  new MutationObserver(() => window.seen.push(["partial", partial.textContent]))
    .observe(partial, { childList: true, characterData: true, subtree: true });
  new MutationObserver(() => window.seen.push(["final", ""]))
    .observe(document.getElementById("finals"), { childList: true });
}"""


def test_page_and_static_files_are_served(edge: ThreadedEdge) -> None:
    with httpx.Client(base_url=edge.http, timeout=30) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        # Every file the page loads is served, with a type the browser accepts for it (module scripts
        # and worklets must be JavaScript; nosniff makes browsers hold servers to that).
        expected = {
            "/static/app.js": "text/javascript",
            "/static/pcm-worklet.js": "text/javascript",
            "/static/style.css": "text/css",
        }
        for path, media_type in expected.items():
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].split(";")[0] == media_type, path
            assert response.headers["x-content-type-options"] == "nosniff"
        assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
        assert '"/static/pcm-worklet.js"' in client.get("/static/app.js").text
        for missing in ("/static/nope.js", "/static/..%2Fpage.py", "/static/index.html"):
            assert client.get(missing).status_code == 404, missing


def test_page_transcribes_the_microphone_in_chromium(
    edge: ThreadedEdge, real_clips: list[Clip], tmp_path: Path
) -> None:
    clip = next(c for c in real_clips if c.path.name == CLIP)
    with _browser(_microphone_wav(clip, tmp_path / "microphone.wav")) as (page, problems):
        _open(page, f"{edge.http}/?token={TOKEN}")
        page.evaluate(_WATCH)
        page.get_by_role("button", name="Start").click()
        _wait_state(page, "running", 60_000)
        assert "Listening" in page.locator("#status").inner_text()

        final = page.locator("#finals li").first
        final.wait_for(timeout=FINAL_TIMEOUT_MS)
        text = final.locator(".text").inner_text()
        latency = final.locator(".latency").inner_text()
        source = final.locator(".source").inner_text()
        escalated = final.locator(".escalated").inner_text()
        seen: list[list[str]] = page.evaluate("window.seen")

        page.get_by_role("button", name="Stop").click()
        _wait_state(page, "idle", STOP_TIMEOUT_MS)
        status = page.locator("#status").inner_text()
        page.screenshot(path=str(tmp_path / "browser-page.png"), full_page=True)
        errors = page.locator("#errors li").all_inner_texts()

    assert wer([clip.text], [text]) <= MAX_WER, (clip.text, text)
    assert re.fullmatch(r"\d+ ms", latency), latency
    assert source == "edge" and escalated == "no"  # no cloud behind this edge
    first_final = next(i for i, (kind, _) in enumerate(seen) if kind == "final")
    partials = [shown for kind, shown in seen[:first_final] if kind == "partial" and shown.strip()]
    assert partials, seen  # the page showed what it heard while the speech was still playing
    # Stop sent `stop` and the page waited for `end` (which counts the utterances the agent finished).
    assert re.fullmatch(r"Stopped: \d+ utterance\(s\)\.", status), status
    assert not errors and not problems, (errors, problems)


# What a scripted agent sends once audio flows: an escalated final whose cloud answer is pending, a plain
# one, the pending one's correction (in another language), a final not transcribed, and an error.
_SCRIPT: list[dict[str, Any]] = [
    {"type": "partial", "utterance_id": "u1", "text": "the edge", "start": 0.2, "end": 0.9},
    {
        "type": "final",
        "utterance_id": "u1",
        "text": "the edge's guess",
        "confidence": 0.41,
        "source": "edge",
        "escalated": True,
        "reason": "low_confidence",
        "cloud_pending": True,
        "latency_ms": 812.4,
        "language": "en",
    },
    {"type": "partial", "utterance_id": "u2", "text": "turn it", "start": 2.0, "end": 2.6},
    {
        "type": "final",
        "utterance_id": "u2",
        "text": "turn it up",
        "confidence": 0.93,
        "source": "edge",
        "escalated": False,
        "reason": None,
        "cloud_pending": False,
        "latency_ms": 431.0,
        "language": "en",
    },
    {
        "type": "correction",
        "utterance_id": "u1",
        "text": "la respuesta de la nube",
        "source": "cloud",
        "confidence": 0.88,
        "language": "es",
    },
    {  # speech judged not English, kept on the device (EDGE_OTHER_LANGUAGES_TO_CLOUD=false)
        "type": "final",
        "utterance_id": "u3",
        "text": "",
        "transcribed": False,
        "language": "und",
        "confidence": 0.12,
        "source": "edge",
        "escalated": False,
        "reason": "language",
        "cloud_pending": False,
        "latency_ms": 520.0,
    },
    {"type": "error", "code": "bad_audio", "message": "binary frames must hold whole samples"},
]
_FRAMES_BEFORE_SCRIPT = 10  # half a second of audio has arrived


def test_page_shows_escalations_corrections_and_errors(edge: ThreadedEdge) -> None:
    """The page's side of the protocol against a scripted agent (Playwright answers the page's WebSocket):
    the events an edge without a cloud never sends, and the messages and frames the page sends."""
    urls: list[str] = []
    received: list[str | bytes] = []

    def agent(ws: WebSocketRoute) -> None:
        urls.append(ws.url)

        def on_message(message: str | bytes) -> None:
            received.append(message)
            if isinstance(message, bytes):
                if sum(isinstance(m, bytes) for m in received) == _FRAMES_BEFORE_SCRIPT:
                    for event in _SCRIPT:
                        ws.send(json.dumps(event))
            elif json.loads(message)["type"] == "stop":
                ws.send(json.dumps({"type": "end", "utterances": 3}))
                ws.close()

        ws.on_message(on_message)

    with _browser(None) as (page, problems):
        page.route_web_socket(re.compile(r".*/v1/stream.*"), agent)
        _open(page, f"{edge.http}/?token={TOKEN}")
        page.get_by_role("button", name="Start").click()
        page.locator("#finals li.corrected").wait_for(timeout=60_000)
        page.locator("#errors li").wait_for(timeout=10_000)
        finals = [
            {
                field: item.locator(f".{field}").inner_text()
                for field in ("text", "confidence", "source", "language", "escalated", "latency")
            }
            for item in page.locator("#finals li").all()
        ]
        partial = page.locator("#partial").inner_text()
        errors = page.locator("#errors li").all_inner_texts()
        page.get_by_role("button", name="Stop").click()
        _wait_state(page, "idle", STOP_TIMEOUT_MS)
        status = page.locator("#status").inner_text()

    assert finals == [
        {
            "text": "la respuesta de la nube",
            "confidence": "88 %",
            "source": "cloud",
            "language": "es",
            "escalated": "yes (low_confidence)",  # answered: no longer pending
            "latency": "812 ms",
        },
        {
            "text": "turn it up",
            "confidence": "93 %",
            "source": "edge",
            "language": "en",
            "escalated": "no",
            "latency": "431 ms",
        },
        {
            "text": "(not transcribed: another language)",
            "confidence": "12 %",
            "source": "edge",
            "language": "und",
            "escalated": "no",
            "latency": "520 ms",
        },
    ]
    assert partial == ""  # its utterance's final replaced it
    assert errors == ["bad_audio: binary frames must hold whole samples"]
    assert status == "Stopped: 3 utterance(s)."
    assert not problems, problems

    assert len(urls) == 1 and urls[0].startswith("ws://") and urls[0].endswith(f"/v1/stream?token={TOKEN}")
    start = json.loads(received[0])
    assert start["type"] == "start" and start["encoding"] == "pcm_s16le"
    assert isinstance(start["sample_rate"], int) and 8000 <= start["sample_rate"] <= 48000
    frames = [m for m in received if isinstance(m, bytes)]
    assert frames and all(isinstance(m, bytes) for m in received[1:-1])
    assert json.loads(received[-1]) == {"type": "stop"}  # after the last frame: the flush came first
    durations = {len(f) / 2 / start["sample_rate"] for f in frames[:-1]}
    assert len(durations) == 1 and 0.02 <= durations.pop() <= 0.1, durations  # one frame size, 20-100 ms
    assert all(len(f) % 2 == 0 for f in frames)


@contextmanager
def _browser(microphone: Path | None) -> Iterator[tuple[Page, list[str]]]:
    """A page in headless Chromium (Debian's) whose microphone plays ``microphone`` (or Chromium's beeps)
    with no permission prompt; yields it and the problems it reports (console errors, uncaught ones)."""
    executable = _chromium()
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}")
    problems: list[str] = []
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=args, timeout=120_000)
        except Error as exc:
            pytest.fail(f"Chromium ({executable}) did not start: {exc}", pytrace=False)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.on("console", lambda m: _console_error(m, problems))
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            yield page, problems
        finally:
            browser.close()


def _open(page: Page, url: str) -> None:
    """Load the page and wait until its script has enabled Start."""
    page.goto(url, timeout=60_000)
    _wait_state(page, "idle", 60_000)


def _wait_state(page: Page, state: str, timeout_ms: float) -> None:
    """Wait for the Start/Stop button's state: ``idle`` (Start, enabled), ``running`` (Stop), ``busy``.

    Its label alone does not tell: while stopping it already reads Start, disabled."""
    page.wait_for_function(
        "state => document.getElementById('toggle').dataset.state === state", arg=state, timeout=timeout_ms
    )


def _console_error(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type == "error":
        problems.append(f"console: {message.text}")
