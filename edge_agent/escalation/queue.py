"""A durable on-disk queue of escalations waiting for the cloud (SQLite, survives restarts).

Threading: one ``sqlite3`` connection, opened with ``check_same_thread=False`` and guarded by a lock,
so exactly one thread uses it at any moment and every method may be called from any thread. The
agent's async code must call it through ``asyncio.to_thread``: ``put`` writes up to a megabyte of
audio and waits for fsync (``synchronous=FULL``), which can take tens of milliseconds on an edge
device's SD card, too long to block the event loop that carries every session's audio.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    -- AUTOINCREMENT: ids are never reused, so a stale id (of a dropped row) can never hit a newer row.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    utterance_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    audio BLOB NOT NULL,
    context BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS escalations_due ON escalations (next_attempt_at, id);
CREATE INDEX IF NOT EXISTS escalations_created ON escalations (created_at);
"""
_COLUMNS = "id, utterance_id, session_id, audio, context, created_at, attempts, next_attempt_at"


@dataclass(frozen=True)
class QueuedEscalation:
    """One utterance waiting for the cloud."""

    id: int
    utterance_id: str
    session_id: str
    audio: bytes
    """PCM16 little-endian mono at 16 kHz."""
    context: bytes
    """A serialized ``speech_pb2.EdgeContext``."""
    created_at: float
    attempts: int
    """Attempts that failed so far."""
    next_attempt_at: float

    def __repr__(self) -> str:
        # Keep megabytes of audio out of logs and test failure messages.
        return (
            f"QueuedEscalation(id={self.id}, utterance_id={self.utterance_id!r}, "
            f"session_id={self.session_id!r}, audio={len(self.audio)} bytes, attempts={self.attempts}, "
            f"created_at={self.created_at:.3f}, next_attempt_at={self.next_attempt_at:.3f})"
        )


class EscalationQueue:
    """Escalations ordered by due time, at most ``max_items``, none older than ``max_age_s``.

    Times come from ``clock`` (wall time by default: they are stored and must mean the same thing
    after a restart, which monotonic time does not)."""

    def __init__(
        self, path: Path, max_items: int, max_age_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.path = Path(path)
        self._max_items = max_items
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; the few multi-statement writes use explicit ones.
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a queued escalation may be the only copy of what the user said; it must survive a
            # power cut too, not only a crash of the process (which NORMAL covers).
            self._db.execute("PRAGMA synchronous=FULL")
            # Answered audio is overwritten on delete instead of lingering in free pages.
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def now(self) -> float:
        """The queue's clock, for computing due times."""
        return self._clock()

    def put(self, utterance_id: str, session_id: str, audio: bytes, context: bytes) -> int:
        """Queue an escalation, due at once; returns its id. Drops the oldest items past ``max_items``."""
        now = self._clock()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "INSERT INTO escalations (utterance_id, session_id, audio, context, created_at,"
                    " attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, 0, ?)",
                    (utterance_id, session_id, audio, context, now, now),
                )
                new_id = cursor.lastrowid
                assert new_id is not None
                (count,) = db.execute("SELECT COUNT(*) FROM escalations").fetchone()
                dropped: list[tuple[int, str]] = []
                if count > self._max_items:
                    dropped = db.execute(
                        "SELECT id, utterance_id FROM escalations ORDER BY created_at, id LIMIT ?",
                        (count - self._max_items,),
                    ).fetchall()
                    db.executemany("DELETE FROM escalations WHERE id = ?", [(i,) for i, _ in dropped])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if dropped:
            log.warning(
                "escalation queue full (%d items): dropped the oldest %d: %s",
                self._max_items,
                len(dropped),
                ", ".join(utt for _, utt in dropped),
            )
        return int(new_id)

    def next_due(self, now: float) -> QueuedEscalation | None:
        """The item with the earliest due time at or before ``now`` (ties: oldest first)."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    f"SELECT {_COLUMNS} FROM escalations WHERE next_attempt_at <= ?"
                    " ORDER BY next_attempt_at, id LIMIT 1",
                    (now,),
                )
                .fetchone()
            )
        return None if row is None else QueuedEscalation(*row)

    def next_due_time(self) -> float | None:
        """When the earliest item is due, or None when the queue is empty."""
        with self._lock:
            (due,) = self._conn().execute("SELECT MIN(next_attempt_at) FROM escalations").fetchone()
        return None if due is None else float(due)

    def reschedule(self, item_id: int, next_attempt_at: float) -> None:
        """Record a failed attempt and set the next due time."""
        with self._lock:
            self._conn().execute(
                "UPDATE escalations SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                (next_attempt_at, item_id),
            )

    def delete(self, item_id: int) -> None:
        """Remove an item (answered or given up); its audio is overwritten on disk."""
        with self._lock:
            self._conn().execute("DELETE FROM escalations WHERE id = ?", (item_id,))

    def purge_expired(self) -> int:
        """Drop items older than ``max_age_s``; returns how many."""
        cutoff = self._clock() - self._max_age_s
        with self._lock:
            db = self._conn()
            # SELECT then DELETE (not DELETE ... RETURNING, which needs SQLite 3.35, newer than some
            # edge distributions ship).
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    "SELECT utterance_id FROM escalations WHERE created_at < ?", (cutoff,)
                ).fetchall()
                if rows:
                    db.execute("DELETE FROM escalations WHERE created_at < ?", (cutoff,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if rows:
            log.warning(
                "dropped %d escalations older than %.0f s: %s",
                len(rows),
                self._max_age_s,
                ", ".join(r[0] for r in rows),
            )
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn().execute("SELECT COUNT(*) FROM escalations").fetchone()
        return int(count)

    def close(self) -> None:
        """Checkpoint and close. Idempotent."""
        with self._lock:
            if self._db is None:
                return
            try:
                # Fold the WAL into the database and truncate it, so deleted audio does not stay
                # behind in old WAL frames after shutdown.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()
                self._db = None

    def __enter__(self) -> EscalationQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the escalation queue is closed")
        return self._db
