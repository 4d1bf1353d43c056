"""The experiment's embedded store: SQLite in WAL mode, written by the driver alone.

runs:  one row per run key (mixture x proxy x slices x tokenizer x seed x trainer version).
evals: one row per (run key, suite key, metric).
Every state change is one transaction with synchronous=FULL: a kill loses no committed result.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    context TEXT NOT NULL,          -- hash of everything but the weights: runs comparable in one fit
    origin TEXT NOT NULL,           -- how the design produced it: prior, vertex:<d>, random:<i>, user:<i>
    weights TEXT NOT NULL,          -- JSON list, canonical domain order
    domains TEXT NOT NULL,          -- JSON list of domain names
    status TEXT NOT NULL,           -- planned | done | failed
    checkpoint TEXT, sha256 TEXT,
    train_loss REAL, tokens INTEGER, train_seconds REAL, epochs TEXT,
    error TEXT, created REAL NOT NULL, finished REAL
);
CREATE INDEX IF NOT EXISTS runs_context ON runs(context, status);
CREATE TABLE IF NOT EXISTS evals (
    run_key TEXT NOT NULL REFERENCES runs(key),
    suite TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_key, suite, metric)
);
CREATE TABLE IF NOT EXISTS suites (key TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL);
"""


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tx(self):
        return _Transaction(self.db)

    def add_planned(self, rows: list[dict]) -> None:
        """Insert runs not yet known; known runs keep their state."""
        now = time.time()
        with self._tx():
            self.db.executemany(
                "INSERT OR IGNORE INTO runs (key, context, origin, weights, domains, status, created) "
                "VALUES (?, ?, ?, ?, ?, 'planned', ?)",
                [(r["key"], r["context"], r["origin"], json.dumps(r["weights"]), json.dumps(r["domains"]), now)
                 for r in rows])

    def add_suite(self, suite: dict) -> None:
        with self._tx():
            self.db.execute("INSERT OR IGNORE INTO suites (key, body, created) VALUES (?, ?, ?)",
                            (suite["key"], json.dumps(suite), time.time()))

    def record_result(self, result: dict) -> None:
        """A finished run and its evals, in one transaction."""
        with self._tx():
            self.db.execute(
                "UPDATE runs SET status='done', checkpoint=?, sha256=?, train_loss=?, tokens=?, train_seconds=?, "
                "epochs=?, error=NULL, finished=? WHERE key=?",
                (result["checkpoint"], result["sha256"], result["train_loss"], result["tokens"],
                 result["train_seconds"], json.dumps(result["epochs"]), time.time(), result["key"]))
            self.db.executemany(
                "INSERT OR REPLACE INTO evals (run_key, suite, metric, value) VALUES (?, ?, ?, ?)",
                [(result["key"], result["suite"], m, float(v)) for m, v in result["metrics"].items()])

    def record_failure(self, key: str, error: str) -> None:
        with self._tx():
            self.db.execute("UPDATE runs SET status='failed', error=?, finished=? WHERE key=?",
                            (error, time.time(), key))

    def runs(self, context: str | None = None, status: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if context:
            sql, args = sql + " AND context=?", args + [context]
        if status:
            sql, args = sql + " AND status=?", args + [status]
        rows = [dict(r) for r in self.db.execute(sql + " ORDER BY created, rowid", args)]
        for r in rows:
            r["weights"] = json.loads(r["weights"])
            r["domains"] = json.loads(r["domains"])
        return rows

    def evals(self, suite: str) -> dict[str, dict[str, float]]:
        """run key -> {metric: value} under one suite."""
        out: dict[str, dict[str, float]] = {}
        for r in self.db.execute("SELECT run_key, metric, value FROM evals WHERE suite=?", (suite,)):
            out.setdefault(r["run_key"], {})[r["metric"]] = r["value"]
        return out

    def summary(self) -> dict:
        runs = {r["status"]: r["n"] for r in self.db.execute("SELECT status, COUNT(*) n FROM runs GROUP BY status")}
        evals = {r["suite"]: r["n"] for r in
                 self.db.execute("SELECT suite, COUNT(DISTINCT run_key) n FROM evals GROUP BY suite")}
        return {"runs": {s: runs.get(s, 0) for s in ("planned", "done", "failed")}, "evals_by_suite": evals}


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
