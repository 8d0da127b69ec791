"""The durable queue: which jobs wait, which worker holds which, in a small SQLite database beside the store.

MLflow holds each job's config and inputs (a SCHEDULED run); this ledger holds only the order and the
claims, because claiming needs an atomic compare-and-set that MLflow tags do not give. Every process
that serves the same store opens the same file, so two app processes never run one job twice: a claim
is one `BEGIN IMMEDIATE` transaction that moves a whole batch from `queued` to `running`.

A job's row:
- `seq` its place in the FIFO (a batch's jobs share the batch's first seq);
- `state`: `queued`, `running` (held by `owner`), `done`;
- `owner` "<host>:<pid>:<process start>" of the process that holds it, `heartbeat` its last sign of life;
- `attempts`: claims so far; a job whose worker died is queued again until `MAX_ATTEMPTS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.tracking import pid_alive, process_start

__all__ = ["MAX_ATTEMPTS", "STALE_AFTER_S", "Claim", "Ledger", "PreviewClaim", "PreviewRow", "ledger_path", "owner_id"]

MAX_ATTEMPTS = 3  # a job whose worker died this many times fails with that reason
STALE_AFTER_S = 30.0  # a running job whose owner gave no sign of life for this long is presumed dead
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    run_id    TEXT PRIMARY KEY,
    batch     TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    state     TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    owner     TEXT,
    heartbeat REAL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS groups_ended (
    parent TEXT PRIMARY KEY,
    ended  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS previews (
    id         TEXT PRIMARY KEY,
    slot       TEXT NOT NULL,
    key        TEXT NOT NULL,
    config     TEXT NOT NULL,
    images     TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'abandoned')),
    not_before REAL NOT NULL,
    submitted  REAL NOT NULL,
    owner      TEXT,
    seconds    REAL,
    result     BLOB,
    step       INTEGER,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS previews_queued ON previews (state, not_before);
CREATE TABLE IF NOT EXISTS preview_images (
    sha256 TEXT PRIMARY KEY,
    png    BLOB NOT NULL,
    used   REAL NOT NULL
);
"""
PREVIEW_KEEP_S = 3600.0  # previews (and images no preview uses) older than this are deleted


def owner_id(pid: int | None = None) -> str:
    """This process as a claim's owner: host, pid and the pid's start time (a reused pid is another owner)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or ''}"


def owner_pid(owner: str) -> int | None:
    """The pid in an owner id of this host, else None."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    return int(pid_text) if host == socket.gethostname() and pid_text.isdigit() else None


def _owner_alive(owner: str) -> bool | None:
    """True or False for an owner on this host; None for another host's (only its heartbeat tells)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    return pid_alive(pid) and (not started or process_start(pid) in (None, started))


def ledger_path(tracking_uri: str) -> Path:
    """$STYLELAB_QUEUE_DB, else `stylelab-queue.db` beside a SQLite store, else one file per store URI in
    ~/.local/share/stylelab (an HTTP store served to several machines needs a shared path: set the
    variable)."""
    if configured := os.environ.get("STYLELAB_QUEUE_DB"):
        return Path(configured).resolve()
    if tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "stylelab-queue.db"
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "stylelab" / f"queue-{digest}.db"


@dataclass(frozen=True)
class Claim:
    """A batch a worker now holds: its run ids in submit order, and the attempt this is (1 = first)."""

    batch: str
    run_ids: tuple[str, ...]
    attempt: int


@dataclass(frozen=True)
class PreviewClaim:
    """A preview a worker now holds: its settings (`TransferConfig.to_json`) and images as PNG bytes."""

    id: str
    config: str
    content: bytes
    styles: tuple[bytes, ...]


@dataclass(frozen=True)
class PreviewRow:
    """What a page reads of a preview: `state` queued, running, done, failed or abandoned; the result
    as PNG bytes once done, or while running the image at iteration `step` (a first look); the seconds it
    took on the worker."""

    id: str
    state: str
    result: bytes | None
    seconds: float | None
    error: str | None
    step: int | None


@dataclass(frozen=True)
class Recovered:
    """Jobs whose worker died: queued again, or given up after `MAX_ATTEMPTS`."""

    requeued: tuple[str, ...]
    given_up: tuple[str, ...]


class Ledger:
    """The queue's durable state. Each call opens its own short transaction, so any thread or process
    may call it; SQLite's lock serialises the claims."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (transactions are explicit), closed after use; an error inside
        a `BEGIN` rolls it back."""
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def add(self, batch: str, run_ids: Sequence[str]) -> None:
        """Queue `run_ids` as one batch at the end of the FIFO (durable once this returns)."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.executemany(
                "INSERT INTO jobs (run_id, batch, seq, state, submitted) VALUES (?, ?, ?, 'queued', ?)",
                [(run_id, batch, seq, now) for run_id in run_ids],
            )
            db.execute("COMMIT")

    def claim(self, owner: str) -> Claim | None:
        """Atomically take the oldest queued batch for `owner`, or None when nothing waits."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no other claim can interleave
            row = db.execute("SELECT batch FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            batch = row[0]
            db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, heartbeat = ?, attempts = attempts + 1 "
                "WHERE batch = ? AND state = 'queued'",
                (owner, time.time(), batch),
            )
            rows = db.execute(
                "SELECT run_id, attempts FROM jobs WHERE batch = ? AND state = 'running' AND owner = ? ORDER BY rowid",
                (batch, owner),
            ).fetchall()
            db.execute("COMMIT")
        return Claim(batch, tuple(r[0] for r in rows), max(r[1] for r in rows))

    def heartbeat(self, owner: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE owner = ? AND state = 'running'", (time.time(), owner))

    def done(self, run_ids: Sequence[str]) -> None:
        """The jobs ended (whatever their status): they leave the queue for good."""
        with self._connect() as db:
            db.executemany("UPDATE jobs SET state = 'done', owner = NULL WHERE run_id = ?", [(r,) for r in run_ids])

    def release(self, run_ids: Sequence[str], owner: str) -> None:
        """Give held jobs back, first in line, without counting the attempt (a worker that stops cleanly)."""
        with self._connect() as db:
            db.executemany(
                "UPDATE jobs SET state = 'queued', owner = NULL, attempts = MAX(attempts - 1, 0) "
                "WHERE run_id = ? AND owner = ? AND state = 'running'",
                [(r, owner) for r in run_ids],
            )

    def withdraw(self, run_id: str) -> bool:
        """Take a queued job out of the queue (cancelled before it started); False when it is not queued."""
        with self._connect() as db:
            return (
                db.execute("UPDATE jobs SET state = 'done' WHERE run_id = ? AND state = 'queued'", (run_id,)).rowcount
                > 0
            )

    def state(self, run_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT state FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def owner(self, run_id: str) -> str | None:
        """Who holds a running job (see `owner_id`), else None."""
        with self._connect() as db:
            row = db.execute("SELECT owner FROM jobs WHERE run_id = ? AND state = 'running'", (run_id,)).fetchone()
        return None if row is None else row[0]

    def attempts(self, run_id: str) -> int:
        with self._connect() as db:
            row = db.execute("SELECT attempts FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def position(self, run_id: str) -> int | None:
        """1-based place of a queued job's batch in the FIFO, else None."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(DISTINCT b.batch) FROM jobs a JOIN jobs b ON b.state = 'queued' AND b.seq <= a.seq "
                "WHERE a.run_id = ? AND a.state = 'queued'",
                (run_id,),
            ).fetchone()
        return row[0] or None

    def queued(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT run_id FROM jobs WHERE state = 'queued' ORDER BY seq, rowid")]

    def active_count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE state != 'done'").fetchone()[0]

    def known(self, run_ids: Sequence[str]) -> set[str]:
        """Which of `run_ids` this ledger has ever queued."""
        with self._connect() as db:
            marks = ",".join("?" * len(run_ids))
            return {r[0] for r in db.execute(f"SELECT run_id FROM jobs WHERE run_id IN ({marks})", list(run_ids))}

    def claim_group_end(self, parent_run_id: str) -> bool:
        """True for exactly one caller per group: whoever may finalise the parent (two workers that end
        a group's last two children at once both see it ready)."""
        with self._connect() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO groups_ended (parent, ended) VALUES (?, ?)", (parent_run_id, time.time())
            )
            return inserted.rowcount == 1

    def recover(self, stale_after_s: float = STALE_AFTER_S) -> Recovered:
        """Queue again, first in line, every running job whose owner died (a process of this host that has
        ended, or any owner silent for `stale_after_s`); give up on those already tried `MAX_ATTEMPTS`
        times. One transaction, so two processes recovering at once do not both requeue a job."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT run_id, owner, heartbeat, attempts FROM jobs WHERE state = 'running'").fetchall()
            requeued, given_up = [], []
            for run_id, owner, beat, attempts in rows:
                alive = _owner_alive(owner or "")
                dead = alive is False or (alive is None and now - (beat or 0) > stale_after_s)
                if not dead:
                    continue
                if attempts >= MAX_ATTEMPTS:
                    db.execute("UPDATE jobs SET state = 'done', owner = NULL WHERE run_id = ?", (run_id,))
                    given_up.append(run_id)
                else:
                    db.execute("UPDATE jobs SET state = 'queued', owner = NULL WHERE run_id = ?", (run_id,))
                    requeued.append(run_id)
            db.execute("COMMIT")
        return Recovered(tuple(requeued), tuple(given_up))

    # -- previews: cheap, untracked stylisations of the studio's current settings --------------------------
    # A browser session's previews share a `slot`: a new one abandons the slot's older ones, queued or
    # running. Which a worker runs, and when, is `engine.jobs.preview`'s rule; the rows are only the state.

    def add_preview(
        self, slot: str, key: str, config: str, images: Sequence[tuple[str, bytes]], debounce_s: float
    ) -> str:
        """Queue a preview of `config` (JSON) on `images` ((sha256, PNG bytes): the content, then the styles)
        for `slot`, claimable `debounce_s` from now, and abandon the slot's earlier ones still queued or
        running. The same `key` (settings and images) already done is returned as it is. Returns its id."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            done = db.execute("SELECT id FROM previews WHERE key = ? AND state = 'done' LIMIT 1", (key,)).fetchone()
            db.execute(
                "UPDATE previews SET state = 'abandoned' WHERE slot = ? AND state IN ('queued', 'running')", (slot,)
            )
            if done is not None:
                db.execute("COMMIT")
                return done[0]
            db.executemany(
                "INSERT INTO preview_images (sha256, png, used) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET used = excluded.used",
                [(sha, png, now) for sha, png in images],
            )
            preview_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO previews (id, slot, key, config, images, state, not_before, submitted) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (preview_id, slot, key, config, ",".join(sha for sha, _ in images), now + debounce_s, now),
            )
            db.execute("DELETE FROM previews WHERE submitted < ?", (now - PREVIEW_KEEP_S,))
            db.execute("DELETE FROM preview_images WHERE used < ?", (now - PREVIEW_KEEP_S,))
            db.execute("COMMIT")
        return preview_id

    def preview_waiting(self) -> bool:
        """Whether a preview could be claimed now (queued, its debounce over): one cheap indexed read."""
        return self.preview_due_in() == 0.0

    def preview_due_in(self) -> float | None:
        """Seconds until the first queued preview can be claimed (0 when one can now); None when none is
        queued."""
        with self._connect() as db:
            (first,) = db.execute("SELECT MIN(not_before) FROM previews WHERE state = 'queued'").fetchone()
        return None if first is None else max(0.0, first - time.time())

    def claim_preview(self, owner: str) -> PreviewClaim | None:
        """Atomically take the oldest claimable preview for `owner`, or None."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT id, config, images FROM previews WHERE state = 'queued' AND not_before <= ? "
                "ORDER BY submitted LIMIT 1",
                (time.time(),),
            ).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE previews SET state = 'running', owner = ? WHERE id = ?", (owner, row[0]))
            shas = row[2].split(",")
            found = dict(
                db.execute(
                    f"SELECT sha256, png FROM preview_images WHERE sha256 IN ({','.join('?' * len(shas))})", shas
                ).fetchall()
            )
            db.execute("COMMIT")
        return PreviewClaim(row[0], row[1], found[shas[0]], tuple(found[sha] for sha in shas[1:]))

    def preview_abandoned(self, preview_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT state FROM previews WHERE id = ?", (preview_id,)).fetchone()
        return row is None or row[0] == "abandoned"

    def end_preview(
        self, preview_id: str, *, result: bytes | None, seconds: float, error: str | None = None
    ) -> None:
        """Record a preview's result (done) or error (failed); one abandoned meanwhile stays abandoned."""
        state = "done" if result is not None else "failed"
        with self._connect() as db:
            db.execute(
                "UPDATE previews SET state = ?, result = ?, seconds = ?, error = ?, owner = NULL "
                "WHERE id = ? AND state = 'running'",
                (state, result, seconds, error, preview_id),
            )

    def show_preview_step(self, preview_id: str, image: bytes, step: int) -> None:
        """A running preview's image so far (PNG bytes) at iteration `step`, for the page to show first."""
        with self._connect() as db:
            db.execute("UPDATE previews SET result = ?, step = ? WHERE id = ? AND state = 'running'",
                       (image, step, preview_id))  # fmt: skip

    def release_preview(self, preview_id: str) -> None:
        """Give a claimed preview back (its worker stops): queued again, for the next worker."""
        with self._connect() as db:
            db.execute("UPDATE previews SET state = 'queued', owner = NULL, result = NULL, step = NULL "
                       "WHERE id = ? AND state = 'running'",
                       (preview_id,))  # fmt: skip

    def preview(self, preview_id: str) -> PreviewRow | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, state, result, seconds, error, step FROM previews WHERE id = ?", (preview_id,)
            ).fetchone()
        return None if row is None else PreviewRow(*row)
