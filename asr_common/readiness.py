"""Start-up helpers the demos, the bench and the tests share: a free local port, and waiting for a
service's readiness URL to answer 200.

Standard library only (no httpx), so either service's install can run its own demo.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        # Refused, reset, timed out, or an HTTP error status such as 503 while the model loads.
        return False


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 300, log: Path | None = None
) -> float:
    """Seconds until ``url`` answered 200; exits with the log's tail if ``proc`` ends first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise SystemExit(f"{url}: the process exited with code {proc.returncode}\n{tail}")
        if _answers_200(url):
            return time.monotonic() - started
        # A readiness URL has no push notification to await; a short poll interval is the only signal.
        time.sleep(0.1)
    raise SystemExit(f"{url} was not ready within {timeout:.0f} s")
