"""The experiment's embedded store: SQLite in WAL mode, written by the driver alone.

runs:         one row per run key: what the run trained on (each domain with weight > 0: its train
              slice and weight) under a context (proxy spec, tokenizer, seed, trainer version).
              Runs are never tied to the config's list of domains: a run stays valid while every
              slice it trained on is still in the sample (plan.Plan.runs), and is superseded,
              kept, once one changed.
measurements: one row per (run key, evaluation key, metric): what a checkpoint scored on one task,
              and where and how it was measured (measured_as, store v9).
scores:       one row per (run key, suite key): the run's objective under that suite.
suites:       every suite ever used, by key, with its body.
sweeps:       one row per sweep / eval pass: when, what it trained and evaluated, its wall time.
budget_rounds: one row per round of `mixopt optimize --budget` (store v8; v10: the candidate).
optimize_calls: one row per call of `mixopt optimize --budget` and how it ended (store v11).
Every state change is one transaction with synchronous=FULL: a kill loses no committed result.
Results are never deleted: a run whose checkpoint is missing or damaged is marked `suspect` (kept,
left out of fits) until a new training replaces them. Checkpoint paths are relative to the
workspace, so a copied, moved or read-only mounted workspace keeps its runs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import quote

from mixopt import __version__
from mixopt.core.keys import precision_of
from mixopt.core.workspace import Workspace, relative_checkpoint
from mixopt.errors import MixoptError

# The schema as of store version 0 (PRAGMA user_version 0, mixopt 0.1). Never edit it: change the
# schema with a step in MIGRATIONS below.
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    context TEXT NOT NULL,          -- hash of everything but the weights: runs comparable in one fit
    origin TEXT NOT NULL,           -- how the design produced it: prior, vertex:<d>, random:<i>, user:<i>
    weights TEXT NOT NULL,          -- JSON list, canonical domain order
    domains TEXT NOT NULL,          -- JSON list of domain names
    status TEXT NOT NULL,           -- planned | running | done | failed | suspect
    checkpoint TEXT, sha256 TEXT,   -- checkpoint: relative to the workspace since store version 2
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


def _add_run_columns(db: sqlite3.Connection, root: Path) -> None:
    """Stores written before retraining counts and leases lack these columns."""
    cols = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
    for col, decl in (("trainings", "INTEGER NOT NULL DEFAULT 0"), ("lease_owner", "TEXT"),
                      ("lease_expires", "REAL")):
        if col not in cols:
            db.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")


def _relative_checkpoints(db: sqlite3.Connection, root: Path) -> None:
    """Checkpoint paths relative to the workspace, and each checkpoint's size in bytes."""
    db.execute("ALTER TABLE runs ADD COLUMN checkpoint_bytes INTEGER")
    for key, path in db.execute("SELECT key, checkpoint FROM runs WHERE checkpoint IS NOT NULL").fetchall():
        rel = relative_checkpoint(path, root)
        f = root / rel
        db.execute("UPDATE runs SET checkpoint=?, checkpoint_bytes=? WHERE key=?",
                   (rel, f.stat().st_size if f.is_file() else None, key))


def _trained_slices(db: sqlite3.Connection, root: Path) -> None:
    """Each run's train slice per domain (sha256, parallel to `weights`) and its tokenizer's sha256:
    what decides whether the run is still valid after the data changes. Older rows keep NULL until
    a plan recognizes their context and adopts them (plan.adopt_legacy)."""
    db.execute("ALTER TABLE runs ADD COLUMN slices TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN tokenizer TEXT")


def _replicates(db: sqlite3.Connection, root: Path) -> None:
    """Each run's replicate: 0 trained with the experiment's seed (every run before version 4), k > 0
    with another init / data-order seed of the same mixture (core.keys.replicate_seed)."""
    db.execute("ALTER TABLE runs ADD COLUMN replicate INTEGER NOT NULL DEFAULT 0")


def _failure_kinds(db: sqlite3.Connection, root: Path) -> None:
    """What kind of failure a failed run had: 'nonfinite' (a diverged proxy or a NaN / infinite
    measurement: retraining the same key computes the same, so only `sweep --retry-failed` does) or
    'error' (anything else: the next sweep tries it again). NULL on older rows: tried again."""
    db.execute("ALTER TABLE runs ADD COLUMN failure TEXT")


def _compute(db: sqlite3.Connection, root: Path) -> None:
    """What each training cost: the proxy's parameters, its FLOPs (6 x parameters x tokens) and the
    seconds it held its device (training and evaluation). NULL on older rows: status estimates their
    FLOPs from the plan's spec."""
    for col, decl in (("params", "INTEGER"), ("flops", "REAL"), ("device_seconds", "REAL")):
        db.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")


def _measured_as(db: sqlite3.Connection, root: Path) -> None:
    """Where and how each run trained when that changes its numbers (core.keys.measurement_of), part
    of its key: e.g. 'cuda/bf16-autocast'. NULL: a CPU in float32, as every run before version 7."""
    db.execute("ALTER TABLE runs ADD COLUMN measured_as TEXT")


def _budget_rounds(db: sqlite3.Connection, root: Path) -> None:
    """`mixopt optimize --budget`: one row per finished round (what it trained and why, the budget as
    given, what was spent by then, the verdict, why it stopped). The spent amount is always counted
    again from `runs`; these rows number the rounds and let `status` show the budget."""
    db.execute("CREATE TABLE IF NOT EXISTS budget_rounds (round INTEGER PRIMARY KEY, budget TEXT NOT NULL, "
               "unit TEXT NOT NULL, amount REAL NOT NULL, trained INTEGER NOT NULL, what TEXT NOT NULL, "
               "spent REAL NOT NULL, verdict TEXT, stopped TEXT, created REAL NOT NULL)")


def _measurement_precision(db: sqlite3.Connection, root: Path) -> None:
    """Where and how each measurement was taken (core.keys.measurement_of; NULL: a CPU in float32): a
    measure counts for a run only when taken at the precision the run trained under (as_trained).
    Rows from before version 9 take their run's: the sweep measured each run where and as it trained,
    and re-evaluation before version 9 ran only on CPUs (no GPU ran mixopt before it)."""
    db.execute("ALTER TABLE measurements ADD COLUMN measured_as TEXT")
    db.execute("UPDATE measurements SET measured_as = (SELECT r.measured_as FROM runs r WHERE r.key = measurements.run_key)")


def _round_candidates(db: sqlite3.Connection, root: Path) -> None:
    """What each round's verdict is about: `weights` (JSON, domain -> weight) of the mixture judged,
    `candidate_round` (the round that made it the candidate under verification; NULL: the fit's own
    recommendation, never trained) and `summary` (the verdict in a sentence). NULL on older rows."""
    for col, decl in (("weights", "TEXT"), ("candidate_round", "INTEGER"), ("summary", "TEXT")):
        db.execute(f"ALTER TABLE budget_rounds ADD COLUMN {col} {decl}")


def _optimize_calls(db: sqlite3.Connection, root: Path) -> None:
    """`mixopt optimize --budget`: one row per call that went past its checks (a refused budget and a
    rerun of a finished optimize write none): the budget as given, the round it started at, the round
    it was in when it ended, and how it ended: running (until it ends; a killed call stays so),
    finished, interrupted (Ctrl-C) or failed (an error). `status` shows the latest call's budget."""
    db.execute("CREATE TABLE IF NOT EXISTS optimize_calls (id INTEGER PRIMARY KEY, budget TEXT NOT NULL, "
               "unit TEXT NOT NULL, amount REAL NOT NULL, first_round INTEGER NOT NULL, last_round INTEGER, "
               "state TEXT NOT NULL, started REAL NOT NULL, ended REAL)")


# Store version i+1 is what MIGRATIONS[i] makes of version i; a new store takes every step too.
MIGRATIONS: list[Callable[[sqlite3.Connection, Path], None]] = [_add_run_columns, _relative_checkpoints,
                                                                 _trained_slices, _replicates, _failure_kinds,
                                                                 _compute, _measured_as, _budget_rounds,
                                                                 _measurement_precision, _round_candidates,
                                                                 _optimize_calls]
VERSION = len(MIGRATIONS)

# The one lease condition: a run another live driver holds (running, not ours, not expired, and its
# owner not known dead). Anything not done and not so held may be claimed.
HELD_ELSEWHERE = ("status = 'running' AND lease_owner IS NOT :owner AND COALESCE(lease_expires, 0) > :now "
                  "AND owner_alive(lease_owner)")


@dataclass(frozen=True)
class Run:
    """One row of `runs`."""

    key: str
    context: str
    origin: str
    weights: tuple[float, ...]  # canonical domain order
    domains: tuple[str, ...]
    status: str  # planned | running | done | failed | suspect
    checkpoint: str | None  # relative to the workspace root
    checkpoint_bytes: int | None
    sha256: str | None
    train_loss: float | None
    tokens: int | None
    train_seconds: float | None
    epochs: dict | None  # domain -> epochs over its slice
    error: str | None
    created: float
    finished: float | None
    trainings: int
    lease_owner: str | None
    lease_expires: float | None
    slices: tuple[str, ...] | None  # train slice sha256 per domain, parallel to weights; None: before store v3
    tokenizer: str | None  # sha256 of the tokenizer it trained with; None: before store v3
    replicate: int  # 0: the experiment's seed; k > 0: another seed of the same mixture (store v4)
    failure: str | None  # a failed run's kind: 'nonfinite' or 'error' (store v5; None before, or not failed)
    params: int | None = None  # the proxy's parameters (store v6; None before)
    flops: float | None = None  # 6 x params x tokens of its last training (store v6)
    device_seconds: float | None = None  # training + evaluation seconds on its device (store v6)
    measured_as: str | None = None  # e.g. 'cuda/bf16-autocast' (store v7); None: a CPU in float32

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Run:
        d = {f.name: row[f.name] for f in fields(cls)}
        return cls(**{**d, "weights": tuple(json.loads(d["weights"])), "domains": tuple(json.loads(d["domains"])),
                      "epochs": json.loads(d["epochs"]) if d["epochs"] else None,
                      "slices": tuple(json.loads(d["slices"])) if d["slices"] else None})


class Store:
    def __init__(self, path: Path, readonly: bool | None = None):
        """Open (creating and migrating as needed); `readonly` (default: when the file or its folder
        cannot be written) opens for reading only, which needs a store already at VERSION."""
        self.path, self.root = path, path.parent
        self.readonly = read_only(path) if readonly is None else readonly
        if self.readonly:
            if not path.is_file():
                raise MixoptError(f"no store at {path}, and the workspace is read-only here",
                                  "run `mixopt sweep CONFIG` where the workspace is writable")
            self.db = sqlite3.connect(_read_only_uri(path), uri=True, timeout=LOCK_POLL, isolation_level=None,
                                      factory=_PatientConnection)
        else:
            Workspace(path.parent).claim()  # never a store in a folder of someone else's files
            self.db = sqlite3.connect(path, timeout=LOCK_POLL, isolation_level=None, factory=_PatientConnection)
        try:
            if not self.readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.row_factory = sqlite3.Row
            self.db.create_function("owner_alive", 1, owner_alive)
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.db.close()
            # Asked of SQLite itself, never by opening the file on a second descriptor: closing that
            # would drop this process's POSIX locks on the store (SQLite's documented corruption trap,
            # hit when a heartbeat thread opened a store while the sweep's connection held a lock).
            if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB or "not a database" in str(e):
                raise MixoptError(f"{path} is not an SQLite database (mixopt's store)",
                                  "move it away: a new store is made, and `mixopt sweep` adopts finished runs "
                                  "from their checkpoints") from None
            raise
        except BaseException:
            self.db.close()
            raise

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise MixoptError(f"the store {self.path} was written by a newer mixopt (store version {version}; "
                              f"mixopt {__version__} reads up to {VERSION})", "upgrade mixopt")
        if version == VERSION:
            return
        if self.readonly:
            raise MixoptError(f"the store {self.path} is from an older mixopt (store version {version}) and "
                              f"read-only here", "run any mixopt command once where it is writable to upgrade it")
        if version == 0:
            self.db.executescript(SCHEMA)
        with self._tx():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]  # another driver may have migrated
            for step in MIGRATIONS[version:]:
                step(self.db, self.root)
            self.db.execute(f"PRAGMA user_version = {VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tx(self):
        if self.readonly:
            raise MixoptError(f"the workspace store {self.path} is read-only here",
                              "copy the workspace somewhere writable (`cp -a` keeps it working) or run this where "
                              "it is writable; `mixopt status` and `mixopt check` only read")
        return _Transaction(self.db)

    def add_planned(self, rows: list[dict]) -> None:
        """Insert runs not yet known; known runs keep their state."""
        now = time.time()
        with self._tx():
            self.db.executemany(
                "INSERT OR IGNORE INTO runs (key, context, origin, weights, domains, slices, tokenizer, replicate, "
                "measured_as, status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
                [(r["key"], r["context"], r["origin"], json.dumps(r["weights"]), json.dumps(r["domains"]),
                  json.dumps(r["slices"]) if r.get("slices") is not None else None, r.get("tokenizer"),
                  int(r.get("replicate", 0)), r.get("measured_as") or None, now)
                 for r in rows])

    def rekey(self, moves: list[dict]) -> int:
        """Give runs recorded under an older key scheme their current key, context and slices, with
        their measurements and scores, in one transaction; a move whose new key is already taken is
        skipped (that run stays as it was). Returns how many moved."""
        moved = 0
        with self._tx():
            for m in moves:
                if self.db.execute("SELECT 1 FROM runs WHERE key=?", (m["new"],)).fetchone():
                    continue
                cols = [r["name"] for r in self.db.execute("PRAGMA table_info(runs)")
                        if r["name"] not in ("key", "context", "slices", "tokenizer")]
                self.db.execute(f"INSERT INTO runs (key, context, slices, tokenizer, {', '.join(cols)}) "
                                f"SELECT ?, ?, ?, ?, {', '.join(cols)} FROM runs WHERE key=?",
                                (m["new"], m["context"], json.dumps(m["slices"]), m["tokenizer"], m["old"]))
                for table in ("measurements", "scores"):
                    self.db.execute(f"UPDATE {table} SET run_key=? WHERE run_key=?", (m["new"], m["old"]))
                self.db.execute("DELETE FROM runs WHERE key=?", (m["old"],))
                moved += 1
        return moved

    def add_suite(self, suite: dict) -> None:
        with self._tx():
            self.db.execute("INSERT OR IGNORE INTO suites (key, body, created) VALUES (?, ?, ?)",
                            (suite["key"], json.dumps(suite), time.time()))

    def claim(self, keys: list[str], owner: str, ttl: float, limit: int) -> list[str]:
        """Lease up to `limit` of these runs to `owner`, in order: any not done and not held by
        another live driver (HELD_ELSEWHERE)."""
        now = time.time()
        out = []
        with self._tx():
            for key in keys:
                if len(out) >= limit:
                    break
                cur = self.db.execute(
                    "UPDATE runs SET status='running', lease_owner=:owner, lease_expires=:expires "
                    f"WHERE key=:key AND status != 'done' AND NOT ({HELD_ELSEWHERE})",
                    {"owner": owner, "expires": now + ttl, "key": key, "now": now})
                if cur.rowcount:
                    out.append(key)
        return out

    def held_elsewhere(self, owner: str) -> int:
        """How many runs another live driver holds."""
        return self.db.execute(f"SELECT COUNT(*) FROM runs WHERE {HELD_ELSEWHERE}",
                               {"owner": owner, "now": time.time()}).fetchone()[0]

    def renew(self, owner: str, ttl: float) -> None:
        with self._tx():
            self.db.execute("UPDATE runs SET lease_expires=? WHERE lease_owner=? AND status='running'",
                            (time.time() + ttl, owner))

    def release(self, owner: str) -> None:
        """A driver leaving cleanly gives back what it did not finish."""
        with self._tx():
            self.db.execute("UPDATE runs SET status='planned', lease_owner=NULL, lease_expires=NULL "
                            "WHERE lease_owner=? AND status='running'", (owner,))

    def record_result(self, result: dict, adopted: bool = False) -> bool:
        """A finished run and its evals, in one transaction; False if it was already recorded. A new
        training replaces everything measured on the run's previous checkpoint. `adopted`: the result
        a worker left beside its checkpoint; it is a new training only if the store has not recorded
        that checkpoint (sha256) already (a run sent back to pending, then found whole, was trained once)."""
        rel = relative_checkpoint(result["checkpoint"], self.root)  # a result file may name an old root
        size = (self.root / rel).stat().st_size if (self.root / rel).is_file() else None
        with self._tx():
            row = self.db.execute("SELECT status, sha256 FROM runs WHERE key=?", (result["key"],)).fetchone()
            if row is not None and row["status"] == "done" and row["sha256"] == result["sha256"]:
                return False
            self.db.execute(
                "UPDATE runs SET status='done', checkpoint=?, checkpoint_bytes=?, sha256=?, train_loss=?, tokens=?, "
                "train_seconds=?, epochs=?, error=NULL, failure=NULL, finished=?, lease_owner=NULL, lease_expires=NULL, "
                "params=?, flops=?, device_seconds=?, trainings = trainings + ? WHERE key=?",
                (rel, size, result["sha256"], result["train_loss"], result["tokens"],
                 result["train_seconds"], json.dumps(result["epochs"]), time.time(), result.get("params") or None,
                 6.0 * result["params"] * result["tokens"] if result.get("params") else None,
                 result["train_seconds"] + result.get("eval_seconds", 0.0),
                 0 if adopted and row is not None and row["sha256"] == result["sha256"] else 1, result["key"]))
            self.db.execute("DELETE FROM measurements WHERE run_key=?", (result["key"],))
            self.db.execute("DELETE FROM scores WHERE run_key=?", (result["key"],))
            # measured by the worker that trained it, where and as it trained (work.train_task checks it)
            trained_as = self.db.execute("SELECT measured_as FROM runs WHERE key=?", (result["key"],)).fetchone()
            self._insert_measurements(result["key"], result["measurements"], trained_as[0] if trained_as else None)
        return True

    def record_measurements(self, run_key: str, measurements: dict[str, dict[str, float]],
                            measured_as: str = "") -> None:
        """A stored checkpoint's measurements, taken as `measured_as` says (core.keys.measurement_of)."""
        with self._tx():
            self._insert_measurements(run_key, measurements, measured_as)

    def _insert_measurements(self, run_key: str, measurements: dict[str, dict[str, float]],
                             measured_as: str | None) -> None:
        now = time.time()
        if any(not math.isfinite(float(v)) for ms in measurements.values() for v in ms.values()):
            # the driver records such a run as failed first (RunResult.unusable); never a NaN row
            raise ValueError(f"run {run_key[:12]}: a non-finite measurement cannot be stored")
        self.db.executemany(
            "INSERT OR REPLACE INTO measurements (run_key, eval, metric, value, created, measured_as) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(run_key, e, m, float(v), now, measured_as or None) for e, ms in measurements.items() for m, v in ms.items()])

    def record_scores(self, suite: str, objective: dict[str, float]) -> None:
        """run key -> objective under one suite (rewritten: the same suite gives the same value)."""
        now = time.time()
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO scores (run_key, suite, objective, created) VALUES (?, ?, ?, ?)",
                                [(k, suite, float(v), now) for k, v in objective.items()])

    def mark_suspect(self, keys: list[str], problem: str) -> None:
        """These finished runs' checkpoints are missing or damaged: keep their results, but leave
        them out of fits until a sweep retrains them."""
        with self._tx():
            self.db.executemany("UPDATE runs SET status='suspect', error=? WHERE key=? AND status='done'",
                                [(problem, k) for k in keys])

    def send_back(self, keys: list[str], problem: str) -> None:
        """Back to pending (the next sweep retrains them); their results stay until it does."""
        with self._tx():
            self.db.executemany("UPDATE runs SET status='planned', error=? WHERE key=? AND status IN ('done', "
                                "'suspect')", [(problem, k) for k in keys])

    def drop_planned(self, keys: list[str]) -> int:
        """Forget runs that were planned and never started (what a round planned for a mixture no
        longer wanted); any other state is kept. How many were dropped."""
        with self._tx():
            return sum(self.db.execute("DELETE FROM runs WHERE key=? AND status='planned'", (k,)).rowcount
                       for k in keys)

    def restore(self, keys: list[str]) -> None:
        """Suspect runs whose checkpoint verifies again are done."""
        with self._tx():
            self.db.executemany("UPDATE runs SET status='done', error=NULL WHERE key=? AND status='suspect'",
                                [(k,) for k in keys])

    def start_sweep(self, kind: str) -> int:
        with self._tx():
            return self.db.execute("INSERT INTO sweeps (kind, started) VALUES (?, ?)", (kind, time.time())).lastrowid

    def finish_sweep(self, sweep_id: int, trained: int, evaluated: int) -> None:
        with self._tx():
            self.db.execute("UPDATE sweeps SET finished=?, trained=?, evaluated=? WHERE id=?",
                            (time.time(), trained, evaluated, sweep_id))

    def sweeps(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM sweeps ORDER BY id")]

    def record_round(self, row: dict) -> None:
        """One finished round of `mixopt optimize` (see _budget_rounds)."""
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO budget_rounds (round, budget, unit, amount, trained, what, spent, "
                            "verdict, stopped, weights, candidate_round, summary, created) VALUES (:round, :budget, "
                            ":unit, :amount, :trained, :what, :spent, :verdict, :stopped, :weights, :candidate_round, "
                            ":summary, :created)",
                            {"weights": None, "candidate_round": None, "summary": None, **row,
                             "created": time.time()} | ({"weights": json.dumps(row["weights"])}
                                                        if row.get("weights") is not None else {}))

    def start_call(self, budget: str, unit: str, amount: float, first_round: int) -> int:
        """A call of `mixopt optimize` begins (see _optimize_calls); its id."""
        with self._tx():
            return self.db.execute("INSERT INTO optimize_calls (budget, unit, amount, first_round, state, started) "
                                   "VALUES (?, ?, ?, ?, 'running', ?)",
                                   (budget, unit, amount, first_round, time.time())).lastrowid

    def end_call(self, call: int, state: str, last_round: int) -> None:
        with self._tx():
            self.db.execute("UPDATE optimize_calls SET state=?, last_round=?, ended=? WHERE id=?",
                            (state, last_round, time.time(), call))

    def last_call(self) -> dict | None:
        """The latest call of `mixopt optimize` (None: none since store version 11)."""
        row = self.db.execute("SELECT * FROM optimize_calls ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def rounds(self) -> list[dict]:
        """Every round, in order; `weights` decoded (a dict, or None)."""
        out = [dict(r) for r in self.db.execute("SELECT * FROM budget_rounds ORDER BY round")]
        for r in out:
            r["weights"] = json.loads(r["weights"]) if r.get("weights") else None
        return out

    def record_failure(self, key: str, error: str, nonfinite: bool = False) -> None:
        """A run failed: `nonfinite` when it trained but its result is no number (see _failure_kinds)."""
        with self._tx():
            self.db.execute("UPDATE runs SET status='failed', error=?, failure=?, finished=?, lease_owner=NULL, "
                            "lease_expires=NULL WHERE key=?",
                            (error, "nonfinite" if nonfinite else "error", time.time(), key))

    def runs(self, context: str | None = None, status: str | None = None) -> list[Run]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if context:
            sql, args = sql + " AND context=?", args + [context]
        if status:
            sql, args = sql + " AND status=?", args + [status]
        return [Run.from_row(r) for r in self.db.execute(sql + " ORDER BY created, rowid", args)]

    def measurements(self, as_trained: bool = False) -> dict[str, dict[str, dict[str, float]]]:
        """run key -> evaluation key -> {metric: value}. `as_trained`: only measurements taken at the
        precision their run trained under (a float32 run measured in bf16 is not its measure, and
        `mixopt eval` measures it again as it trained); the device may differ."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for r in self.db.execute("SELECT m.run_key, m.eval, m.metric, m.value, m.measured_as, r.measured_as AS trained "
                                 "FROM measurements m LEFT JOIN runs r ON r.key = m.run_key"):
            if as_trained and precision_of(r["measured_as"]) != precision_of(r["trained"]):
                continue
            out.setdefault(r["run_key"], {}).setdefault(r["eval"], {})[r["metric"]] = r["value"]
        return out

    def scores(self, suite: str) -> dict[str, float]:
        return {r["run_key"]: r["objective"] for r in
                self.db.execute("SELECT run_key, objective FROM scores WHERE suite=?", (suite,))}

    def integrity(self) -> list[str]:
        """SQLite's integrity_check: [] when the database is sound, else its complaints."""
        rows = [r[0] for r in self.db.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

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
        spent = self.db.execute("SELECT COALESCE(SUM(flops), 0), COALESCE(SUM(device_seconds), 0) FROM runs WHERE "
                                "status IN ('done', 'suspect')").fetchone()
        return {"runs": {s: runs.get(s, 0) for s in ("planned", "running", "done", "failed", "suspect")},
                "held_by_live_drivers": self.held_elsewhere(""), "trainings": trainings,
                "compute": {"flops": float(spent[0]), "device_seconds": float(spent[1])},
                "measurements": measured, "suites": suites}


def read_only(path: Path) -> bool:
    """Can this process not write the store (a read-only mount, a teammate's files)?"""
    if path.exists():
        return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))
    return path.parent.exists() and not os.access(path.parent, os.W_OK)


def _read_only_uri(path: Path) -> str:
    """mode=ro needs to create the WAL index (-shm) when none exists, which a read-only folder
    forbids: then open as immutable, which is safe when no write-ahead log is pending."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK) and not (wal.is_file() and wal.stat().st_size):
        uri += "&immutable=1"
    return uri


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


LOCK_POLL = 0.5  # seconds SQLite itself waits on a lock before _PatientConnection says so and waits on


def _lock_patience() -> float:
    """Seconds to wait for another process's lock on the store: MIXOPT_DB_TIMEOUT, default 60."""
    try:
        return max(0.0, float(os.environ.get("MIXOPT_DB_TIMEOUT", "60")))
    except ValueError:
        return 60.0


class _PatientConnection(sqlite3.Connection):
    """A connection that, when another process holds the store's lock, says so once on stderr and
    keeps trying for MIXOPT_DB_TIMEOUT seconds (default 60) before the error reaches the user as
    one line. Python's sqlite3 has no busy-handler hook, so the wait is a retry of the statement."""

    _said = False

    def _patiently(self, call, *args):
        deadline = None
        while True:
            try:
                return call(*args)
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", None) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and \
                        "locked" not in str(e):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + _lock_patience()
                if now >= deadline:
                    raise
                if not self._said:
                    self._said = True
                    import sys

                    print(f"waiting: another process holds the workspace's database lock; waiting up to "
                          f"{_lock_patience():g} s (MIXOPT_DB_TIMEOUT)", file=sys.stderr, flush=True)

    def execute(self, *args):
        return self._patiently(super().execute, *args)

    def executemany(self, *args):
        return self._patiently(super().executemany, *args)

    def executescript(self, *args):
        return self._patiently(super().executescript, *args)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:  # Ctrl-C just after BEGIN ran: __exit__ is not called, so roll back here
            self._close_open()
            raise

    def __exit__(self, exc_type, *_):
        try:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._close_open()

    def _close_open(self) -> None:
        """Ctrl-C (or an error) before COMMIT took effect: a transaction left open would make every later
        one fail ("cannot start a transaction within a transaction", a traceback instead of the
        interrupted line). It is rolled back: the store keeps what was committed before it."""
        if self.db.in_transaction:
            try:
                self.db.rollback()
            except sqlite3.Error:
                pass
