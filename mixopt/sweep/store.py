"""The experiment's embedded store: SQLite in WAL mode, written by the driver alone.

runs:         one row per run key (mixture x proxy x slices x tokenizer x seed x trainer version).
measurements: one row per (run key, evaluation key, metric): what a checkpoint scored on one task.
scores:       one row per (run key, suite key): the run's objective under that suite.
suites:       every suite ever used, by key, with its body.
sweeps:       one row per sweep / eval pass: when, what it trained and evaluated, its wall time.
Every state change is one transaction with synchronous=FULL: a kill loses no committed result.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    context TEXT NOT NULL,          -- hash of everything but the weights: runs comparable in one fit
    origin TEXT NOT NULL,           -- how the design produced it: prior, vertex:<d>, random:<i>, user:<i>
    weights TEXT NOT NULL,          -- JSON list, canonical domain order
    domains TEXT NOT NULL,          -- JSON list of domain names
    status TEXT NOT NULL,           -- planned | running | done | failed
    checkpoint TEXT, sha256 TEXT,
    train_loss REAL, tokens INTEGER, train_seconds REAL, epochs TEXT,
    error TEXT, created REAL NOT NULL, finished REAL,
    trainings INTEGER NOT NULL DEFAULT 0, -- times a proxy was trained for this key (1 unless retrained)
    lease_owner TEXT,               -- host:pid:nonce of the driver running it
    lease_expires REAL              -- unix time; a lease not renewed by then may be taken over
);
CREATE INDEX IF NOT EXISTS runs_context ON runs(context, status);
CREATE TABLE IF NOT EXISTS measurements (
    run_key TEXT NOT NULL REFERENCES runs(key),
    eval TEXT NOT NULL,             -- evaluation key (suites.Measure.key)
    metric TEXT NOT NULL,           -- loss, bpb, acc, acc_norm, prob
    value REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_key, eval, metric)
);
CREATE TABLE IF NOT EXISTS scores (
    run_key TEXT NOT NULL REFERENCES runs(key),
    suite TEXT NOT NULL,
    objective REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_key, suite)
);
CREATE TABLE IF NOT EXISTS suites (key TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started REAL NOT NULL, finished REAL,
    trained INTEGER NOT NULL DEFAULT 0, evaluated INTEGER NOT NULL DEFAULT 0
);
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
        cols = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
        for col, decl in (("trainings", "INTEGER NOT NULL DEFAULT 0"), ("lease_owner", "TEXT"),
                          ("lease_expires", "REAL")):
            if col not in cols:  # a store written by an earlier mixopt
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")

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

    def claim(self, keys: list[str], owner: str, ttl: float, limit: int) -> list[str]:
        """Lease up to `limit` of these runs to `owner`, in order: those planned or failed, and those
        running under a lease that expired or whose driver (on this host) is dead."""
        now = time.time()
        out = []
        with self._tx():
            for key in keys:
                if len(out) >= limit:
                    break
                row = self.db.execute("SELECT status, lease_owner, lease_expires FROM runs WHERE key=?",
                                      (key,)).fetchone()
                if row is None or row["status"] == "done":
                    continue
                if row["status"] == "running" and row["lease_owner"] != owner and \
                        (row["lease_expires"] or 0) > now and owner_alive(row["lease_owner"]):
                    continue
                self.db.execute("UPDATE runs SET status='running', lease_owner=?, lease_expires=? WHERE key=?",
                                (owner, now + ttl, key))
                out.append(key)
        return out

    def renew(self, owner: str, ttl: float) -> None:
        with self._tx():
            self.db.execute("UPDATE runs SET lease_expires=? WHERE lease_owner=? AND status='running'",
                            (time.time() + ttl, owner))

    def release(self, owner: str) -> None:
        """A driver leaving cleanly gives back what it did not finish."""
        with self._tx():
            self.db.execute("UPDATE runs SET status='planned', lease_owner=NULL, lease_expires=NULL "
                            "WHERE lease_owner=? AND status='running'", (owner,))

    def record_result(self, result: dict) -> bool:
        """A finished run and its evals, in one transaction; False if it was already recorded."""
        with self._tx():
            row = self.db.execute("SELECT status, sha256 FROM runs WHERE key=?", (result["key"],)).fetchone()
            if row is not None and row["status"] == "done" and row["sha256"] == result["sha256"]:
                return False
            self.db.execute(
                "UPDATE runs SET status='done', checkpoint=?, sha256=?, train_loss=?, tokens=?, train_seconds=?, "
                "epochs=?, error=NULL, finished=?, lease_owner=NULL, lease_expires=NULL WHERE key=?",
                (result["checkpoint"], result["sha256"], result["train_loss"], result["tokens"],
                 result["train_seconds"], json.dumps(result["epochs"]), time.time(), result["key"]))
            self.db.execute("UPDATE runs SET trainings = trainings + 1 WHERE key=?", (result["key"],))
            self._insert_measurements(result["key"], result["measurements"])
        return True

    def record_measurements(self, run_key: str, measurements: dict[str, dict[str, float]]) -> None:
        with self._tx():
            self._insert_measurements(run_key, measurements)

    def _insert_measurements(self, run_key: str, measurements: dict[str, dict[str, float]]) -> None:
        now = time.time()
        self.db.executemany(
            "INSERT OR REPLACE INTO measurements (run_key, eval, metric, value, created) VALUES (?, ?, ?, ?, ?)",
            [(run_key, e, m, float(v), now) for e, ms in measurements.items() for m, v in ms.items()])

    def record_scores(self, suite: str, objective: dict[str, float]) -> None:
        """run key -> objective under one suite (rewritten: the same suite gives the same value)."""
        now = time.time()
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO scores (run_key, suite, objective, created) VALUES (?, ?, ?, ?)",
                                [(k, suite, float(v), now) for k, v in objective.items()])

    def reset_run(self, key: str, error: str) -> None:
        """Send a run back to pending (its checkpoint is gone or corrupt): the next sweep retrains it."""
        with self._tx():
            self.db.execute("UPDATE runs SET status='planned', checkpoint=NULL, sha256=NULL, error=? WHERE key=?",
                            (error, key))
            self.db.execute("DELETE FROM measurements WHERE run_key=?", (key,))
            self.db.execute("DELETE FROM scores WHERE run_key=?", (key,))

    def start_sweep(self, kind: str) -> int:
        with self._tx():
            return self.db.execute("INSERT INTO sweeps (kind, started) VALUES (?, ?)", (kind, time.time())).lastrowid

    def finish_sweep(self, sweep_id: int, trained: int, evaluated: int) -> None:
        with self._tx():
            self.db.execute("UPDATE sweeps SET finished=?, trained=?, evaluated=? WHERE id=?",
                            (time.time(), trained, evaluated, sweep_id))

    def sweeps(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM sweeps ORDER BY id")]

    def record_failure(self, key: str, error: str) -> None:
        with self._tx():
            self.db.execute("UPDATE runs SET status='failed', error=?, finished=?, lease_owner=NULL, "
                            "lease_expires=NULL WHERE key=?", (error, time.time(), key))

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

    def measurements(self) -> dict[str, dict[str, dict[str, float]]]:
        """run key -> evaluation key -> {metric: value}."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for r in self.db.execute("SELECT run_key, eval, metric, value FROM measurements"):
            out.setdefault(r["run_key"], {}).setdefault(r["eval"], {})[r["metric"]] = r["value"]
        return out

    def scores(self, suite: str) -> dict[str, float]:
        return {r["run_key"]: r["objective"] for r in
                self.db.execute("SELECT run_key, objective FROM scores WHERE suite=?", (suite,))}

    def summary(self) -> dict:
        runs = {r["status"]: r["n"] for r in self.db.execute("SELECT status, COUNT(*) n FROM runs GROUP BY status")}
        trainings = self.db.execute("SELECT COALESCE(SUM(trainings), 0) FROM runs").fetchone()[0]
        suites = {}
        for r in self.db.execute(
                "SELECT s.key, s.body, s.created, COUNT(c.run_key) n, MAX(c.created) last FROM suites s "
                "LEFT JOIN scores c ON c.suite = s.key GROUP BY s.key ORDER BY s.created"):
            body = json.loads(r["body"])
            suites[r["key"]] = {"runs_scored": r["n"], "evaluations": [m["name"] for m in body["measures"]],
                                "objective": body.get("objective"), "first_used": r["created"],
                                "last_scored": r["last"]}
        measured = self.db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT run_key, eval FROM measurements)").fetchone()[0]
        return {"runs": {s: runs.get(s, 0) for s in ("planned", "running", "done", "failed")}, "trainings": trainings,
                "measurements": measured, "suites": suites}


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None) -> bool:
    """False only when the owner ran on this host and its process is gone; other hosts' owners
    count as alive until their lease expires."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.split(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
