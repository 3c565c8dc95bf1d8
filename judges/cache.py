"""An on-disk cache of judgments, so a resumed or repeated run does not pay for the same
judgment twice.

The key is a hash of everything that decides the judge's answer (endpoint, model, sampling
parameters, the exact messages sent, which already hold the prompt and the response), so
one cache file can serve many runs and judge configs safely. Only successful judgments are
stored: an error is always retried.

SQLite, because several judge actors on one machine may write at once; keep the file on a
local disk (SQLite locking is unreliable on network filesystems).

The file holds prompts, responses and the judge's replies: it is created readable by its
owner only (0600; SQLite gives its -wal and -shm files the same mode), and the directories
made for it 0700. A file that already exists keeps its mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from alignloop.judges.prompting import Parsed
from alignloop.records import CriterionJudgment


def default_cache_path() -> Path:
    """$ALIGNLOOP_CACHE (else ~/.cache/alignloop)/judge-cache/judgments.sqlite."""
    root = Path(os.environ.get("ALIGNLOOP_CACHE", Path.home() / ".cache" / "alignloop"))
    return root / "judge-cache" / "judgments.sqlite"


def cache_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class JudgmentCache:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        _private_dirs(self.path.parent)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite would create it 0644
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # A cache may lose its last entries in a power cut (they are asked again); it need
        # not fsync on every judgment.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> Parsed | None:
        row = self.db.execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])  # entries written before quotes (ranks, criteria) existed have none
        criteria = tuple(CriterionJudgment(**c) for c in value.get("criteria", ()))
        return Parsed(**{**value, "quotes": tuple(value.get("quotes", ())), "criteria": criteria})

    def put(self, key: str, parsed: Parsed) -> None:
        value = json.dumps(
            {
                "verdict": parsed.verdict,
                "score": parsed.score,
                "critique": parsed.critique,
                "quotes": list(parsed.quotes),
                # Only when set: entries of judges that do not rank stay as they were.
                **({"rank": parsed.rank} if parsed.rank is not None else {}),
                **({"criteria": [c.model_dump() for c in parsed.criteria]} if parsed.criteria else {}),
            }
        )
        self.db.execute("INSERT OR REPLACE INTO judgments (key, value) VALUES (?, ?)", (key, value))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]


def _private_dirs(path: Path) -> None:
    """mkdir -p, the directories it creates 0700."""
    if path.is_dir() or path == path.parent:
        return
    _private_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
