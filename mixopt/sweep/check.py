"""`mixopt check`: is the store sound and is every recorded checkpoint the one recorded? And the
cheap form a sweep runs first: does each finished run's checkpoint exist, at its recorded size?"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mixopt.config.schema import Experiment
from mixopt.core.keys import file_sha256
from mixopt.core.workspace import Workspace
from mixopt.errors import MixoptError
from mixopt.sweep.plan import Plan, Say
from mixopt.sweep.store import Run, Store


@dataclass(frozen=True)
class Problem:
    key: str
    status: str  # the run's status when checked
    problem: str


@dataclass
class CheckReport:
    workspace: str
    database: list[str] = field(default_factory=list)  # integrity_check's complaints; [] when sound
    checked: int = 0  # runs whose checkpoint was verified
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        """Nothing wrong is left: the database is sound and every problem found was repaired."""
        return not self.database and (not self.problems or self.repaired)

    def to_json(self) -> dict:
        return {"workspace": self.workspace, "database": self.database or "ok", "checked": self.checked,
                "problems": [asdict(p) for p in self.problems], "repaired": self.repaired, "ok": self.ok}


def checkpoint_problem(path: Path, run: Run, full: bool = True) -> str | None:
    """What is wrong with a run's checkpoint file, or None. `full` hashes it; else only exists and size."""
    if run.checkpoint is None or not path.is_file():
        return "checkpoint missing"
    size = path.stat().st_size
    if run.checkpoint_bytes is not None and size != run.checkpoint_bytes:
        return f"checkpoint is {size} bytes, {run.checkpoint_bytes} recorded (truncated or replaced)"
    if full and file_sha256(path) != run.sha256:
        return "checkpoint's sha256 differs from the one recorded (damaged or replaced)"
    return None


def check_workspace(exp: Experiment, repair: bool = False) -> CheckReport:
    """Verify the store and the sha256 of every run's checkpoint; `repair` sends runs with a bad
    checkpoint back to pending (their results stay until retrained) and marks suspect runs whose
    checkpoint verifies done again."""
    ws = Workspace(exp.workspace_dir)
    report = CheckReport(workspace=str(ws.root))
    if not ws.db_path.is_file():
        raise MixoptError(f"no store in workspace {ws.root}", "run `mixopt sweep CONFIG` first")
    try:
        store = Store(ws.db_path, readonly=False if repair else None)
    except sqlite3.DatabaseError as e:
        report.database = [f"cannot open the store: {e}"]
        return report
    with store:
        try:
            report.database = store.integrity()
        except sqlite3.DatabaseError as e:
            report.database = [str(e)]
        if report.database:
            return report
        bad, good_again = [], []
        for run in store.runs():
            if run.status not in ("done", "suspect"):
                continue
            report.checked += 1
            problem = checkpoint_problem(ws.root / (run.checkpoint or ""), run)
            if problem:
                bad.append(run.key)
                report.problems.append(Problem(run.key, run.status, problem))
            elif run.status == "suspect":
                good_again.append(run.key)
                report.problems.append(Problem(run.key, run.status, f"marked suspect ({run.error}), but its "
                                                                     "checkpoint verifies"))
        if repair and report.problems:
            store.send_back(bad, "sent back by `mixopt check --repair`: checkpoint failed verification")
            store.restore(good_again)
            report.repaired = True
    return report


def flag_damaged(plan: Plan, store: Store, say: Say) -> list[str]:
    """Mark suspect this design's finished runs whose checkpoint is missing or not its recorded
    size: a stat each, no hashing, so a sweep can afford it and retrains them."""
    bad = []
    for run in plan.runs(store, "done"):
        problem = checkpoint_problem(plan.workspace.root / (run.checkpoint or ""), run, full=False)
        if problem:
            store.mark_suspect([run.key], problem)
            say(f"run {run.key[:12]}: {problem}; marked suspect and retrained")
            bad.append(run.key)
    return bad
