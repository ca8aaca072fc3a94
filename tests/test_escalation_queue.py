"""The durable escalation queue, on a real SQLite file."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_common.protos import speech_pb2
from edge_agent.escalation.queue import EscalationQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _context(utterance_id: str) -> bytes:
    return speech_pb2.EdgeContext(
        utterance_id=utterance_id,
        n_best=[speech_pb2.EdgeHypothesis(text="turn the lights on", confidence=0.3)],
        reason=speech_pb2.LOW_CONFIDENCE,
    ).SerializeToString()


def _audio(seed: int, n: int = 16000) -> bytes:
    return bytes((seed * 131 + i * 7) % 256 for i in range(2 * n))


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[EscalationQueue]:
    q = EscalationQueue(tmp_path / "state" / "sub" / "q.sqlite3", max_items=10, max_age_s=3600, clock=clock)
    yield q
    q.close()


def test_put_next_due_reschedule_delete(queue: EscalationQueue, clock: FakeClock) -> None:
    assert len(queue) == 0
    assert queue.next_due(clock()) is None
    assert queue.next_due_time() is None
    audio = _audio(1)
    item_id = queue.put("utt-1", "sess-1", audio, _context("utt-1"))
    assert len(queue) == 1
    assert queue.next_due_time() == clock.now
    item = queue.next_due(clock())
    assert item is not None
    assert (item.id, item.utterance_id, item.session_id) == (item_id, "utt-1", "sess-1")
    assert item.audio == audio
    assert speech_pb2.EdgeContext.FromString(item.context).n_best[0].text == "turn the lights on"
    assert (item.created_at, item.attempts, item.next_attempt_at) == (clock.now, 0, clock.now)
    assert "bytes" in repr(item) and len(repr(item)) < 300  # the audio stays out of logs

    queue.reschedule(item_id, clock.now + 5)
    assert queue.next_due(clock()) is None  # not due yet
    assert queue.next_due_time() == clock.now + 5
    clock.now += 5
    again = queue.next_due(clock())
    assert again is not None
    assert (again.id, again.attempts, again.next_attempt_at) == (item_id, 1, clock.now)
    queue.reschedule(item_id, clock.now + 1)
    clock.now += 1
    third = queue.next_due(clock())
    assert third is not None and third.attempts == 2
    assert third.created_at == clock.now - 6  # creation time is kept

    queue.delete(item_id)
    assert len(queue) == 0
    assert queue.next_due(clock.now + 1e9) is None
    queue.delete(item_id)  # deleting twice is harmless


def test_items_come_out_by_due_time_then_age(queue: EscalationQueue, clock: FakeClock) -> None:
    a = queue.put("a", "s", _audio(1, 10), _context("a"))
    clock.now += 1
    b = queue.put("b", "s", _audio(2, 10), _context("b"))
    clock.now += 1
    c = queue.put("c", "s", _audio(3, 10), _context("c"))
    assert a < b < c
    queue.reschedule(a, clock.now + 30)
    queue.reschedule(b, clock.now + 10)
    # c is due now, then b (due in 10 s), then a (due in 30 s)
    due = queue.next_due(clock())
    assert due is not None and due.utterance_id == "c"
    queue.delete(c)
    assert queue.next_due(clock()) is None
    assert queue.next_due_time() == clock.now + 10
    due = queue.next_due(clock.now + 100)
    assert due is not None and due.utterance_id == "b"
    # Equal due times: the older item first.
    queue.reschedule(a, clock.now + 10)
    due = queue.next_due(clock.now + 10)
    assert due is not None and due.utterance_id == "a"


def test_max_items_drops_the_oldest_with_a_warning(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with EscalationQueue(tmp_path / "q.sqlite3", max_items=3, max_age_s=3600, clock=clock) as queue:
        ids = []
        for i in range(3):
            ids.append(queue.put(f"u{i}", "s", _audio(i, 10), _context(f"u{i}")))
            clock.now += 1
        assert not caplog.records
        with caplog.at_level(logging.WARNING, logger="edge_agent.escalation.queue"):
            new = queue.put("u3", "s", _audio(3, 10), _context("u3"))
        assert len(queue) == 3
        assert new > max(ids)
        assert "u0" in caplog.text and "dropped the oldest 1" in caplog.text
        remaining = []
        while (item := queue.next_due(clock.now)) is not None:
            remaining.append(item.utterance_id)
            queue.delete(item.id)
        assert remaining == ["u1", "u2", "u3"]


def test_purge_expired(queue: EscalationQueue, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    old = queue.put("old", "s", _audio(1, 10), _context("old"))
    clock.now += 1800
    queue.put("young", "s", _audio(2, 10), _context("young"))
    queue.reschedule(old, clock.now + 10_000)  # rescheduling does not make an item younger
    clock.now += 1800  # "old" is exactly max_age_s old: kept
    assert queue.purge_expired() == 0
    clock.now += 0.5
    with caplog.at_level(logging.WARNING, logger="edge_agent.escalation.queue"):
        assert queue.purge_expired() == 1
    assert "old" in caplog.text
    assert len(queue) == 1
    item = queue.next_due(clock())
    assert item is not None and item.utterance_id == "young"
    assert queue.purge_expired() == 0


def test_survives_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "deep" / "dir" / "q.sqlite3"
    first = EscalationQueue(path, max_items=10, max_age_s=3600, clock=clock)
    audio = _audio(7, 48000)
    kept = first.put("kept", "s1", audio, _context("kept"))
    gone = first.put("gone", "s1", _audio(8, 100), _context("gone"))
    first.reschedule(kept, clock.now + 2)
    first.delete(gone)
    first.close()
    first.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        len(first)

    second = EscalationQueue(path, max_items=10, max_age_s=3600, clock=clock)
    try:
        assert len(second) == 1
        item = second.next_due(clock.now + 2)
        assert item is not None
        assert (item.id, item.utterance_id, item.session_id, item.attempts) == (kept, "kept", "s1", 1)
        assert item.audio == audio
        assert item.next_attempt_at == clock.now + 2
        assert speech_pb2.EdgeContext.FromString(item.context).utterance_id == "kept"
        # Ids are never reused, even for the deleted last row.
        assert second.put("new", "s2", b"\x00\x00", _context("new")) > gone
    finally:
        second.close()


def test_wal_secure_delete_and_no_audio_left_on_disk(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "q.sqlite3"
    marker = os.urandom(64) * 500  # 32 kB that cannot occur by chance
    with EscalationQueue(path, max_items=10, max_age_s=3600, clock=clock) as queue:
        item_id = queue.put("secret", "s", marker, _context("secret"))
        queue.put("other", "s", _audio(1, 100), _context("other"))
        queue.delete(item_id)
    assert path.exists()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    assert marker[:64] not in path.read_bytes()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_concurrent_puts_from_threads(queue: EscalationQueue) -> None:
    # The agent calls the queue through asyncio.to_thread, i.e. from several pool threads.
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                queue.put(f"t{n}-{i}", "s", _audio(i, 10), _context("x"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(queue) == 10  # max_items: 20 puts, the oldest 10 dropped


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_items"):
        EscalationQueue(tmp_path / "q", max_items=0, max_age_s=1)
    with pytest.raises(ValueError, match="max_age_s"):
        EscalationQueue(tmp_path / "q", max_items=1, max_age_s=0)
