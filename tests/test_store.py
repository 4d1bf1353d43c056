"""The store alone: leases, migrations, relative checkpoint paths, results never deleted, read-only."""

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mixopt.core.workspace import relative_checkpoint
from mixopt.errors import MixoptError
from mixopt.sweep import store as store_module
from mixopt.sweep.store import SCHEMA, VERSION, Run, Store

from conftest import store_at_version

HOST = socket.gethostname()
ALIVE = f"{HOST}:{os.getpid()}:a"  # this process: alive


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _store(tmp_path, n=1) -> tuple[Store, list[str]]:
    s = Store(tmp_path / "mixopt.db")
    keys = [f"k{i}" for i in range(n)]
    s.add_planned([{"key": k, "context": "c", "origin": "prior", "weights": [0.5, 0.5], "domains": ["a", "b"]}
                   for k in keys])
    return s, keys


def _result(tmp_path, key, sha="s1", size=10, metrics=None) -> dict:
    ckpt = tmp_path / "checkpoints" / f"{key}.safetensors"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(b"x" * size)
    return {"key": key, "checkpoint": str(ckpt), "sha256": sha, "train_loss": 1.0, "tokens": 100,
            "train_seconds": 1.0, "epochs": {"a": 0.1, "b": 0.2},
            "measurements": metrics or {"e1": {"loss": 2.0, "bpb": 1.0}}}


def test_live_owners_unexpired_lease_is_not_taken(tmp_path):
    s, [k] = _store(tmp_path)
    assert s.claim([k], ALIVE, ttl=100, limit=5) == [k]
    assert s.claim([k], f"{HOST}:{os.getpid()}:b", ttl=100, limit=5) == []
    assert s.claim([k], "elsewhere:1:c", ttl=100, limit=5) == []
    assert s.claim([k], ALIVE, ttl=100, limit=5) == [k]  # its own lease: re-claimed
    assert s.held_elsewhere("elsewhere:1:c") == 1 and s.held_elsewhere(ALIVE) == 0


def test_expired_lease_is_taken_over(tmp_path):
    s, [k] = _store(tmp_path)
    assert s.claim([k], "otherhost:1:a", ttl=-1, limit=5) == [k]  # expired the moment it was taken
    assert s.claim([k], ALIVE, ttl=100, limit=5) == [k]
    assert s.runs()[0].lease_owner == ALIVE


def test_dead_owner_on_this_host_loses_its_lease(tmp_path):
    s, [k] = _store(tmp_path)
    dead = f"{HOST}:{_dead_pid()}:a"
    assert s.claim([k], dead, ttl=1000, limit=5) == [k]
    assert s.claim([k], ALIVE, ttl=100, limit=5) == [k]


def test_renewal_keeps_a_lease(tmp_path):
    s, [k] = _store(tmp_path)
    owner = "otherhost:1:a"
    s.claim([k], owner, ttl=-1, limit=5)
    s.renew(owner, 100)
    assert s.runs()[0].lease_expires > 0 and s.claim([k], ALIVE, ttl=100, limit=5) == []


def test_release_gives_back_what_is_unfinished(tmp_path):
    s, keys = _store(tmp_path, 3)
    owner = "otherhost:1:a"
    assert s.claim(keys, owner, ttl=100, limit=2) == keys[:2]
    assert s.record_result(_result(tmp_path, keys[0]))
    s.release(owner)
    assert [r.status for r in s.runs()] == ["done", "planned", "planned"]
    assert s.claim(keys, ALIVE, ttl=100, limit=5) == keys[1:]  # done runs are never claimed


def test_ctrl_c_as_a_claim_commits_leaves_no_open_transaction(tmp_path, monkeypatch):
    """Ctrl-C landing while a claim's COMMIT is under way (CI saw it: the sweep then died on
    'cannot start a transaction within a transaction' in its release, a traceback instead of the
    interrupted line): the claim is rolled back, and the release and later claims work."""
    s, keys = _store(tmp_path, 2)
    owner = "otherhost:1:a"
    real = store_module._PatientConnection._patiently

    def interrupted(self, call, *args):
        if args and args[0] == "COMMIT":
            monkeypatch.setattr(store_module._PatientConnection, "_patiently", real)
            raise KeyboardInterrupt  # the signal, before the COMMIT ran
        return real(self, call, *args)

    monkeypatch.setattr(store_module._PatientConnection, "_patiently", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.claim(keys, owner, ttl=100, limit=2)
    assert not s.db.in_transaction
    s.release(owner)
    assert [r.status for r in s.runs()] == ["planned", "planned"] and all(r.lease_owner is None for r in s.runs())
    assert s.claim(keys, ALIVE, ttl=100, limit=5) == keys


def test_typed_rows_and_relative_checkpoints(tmp_path):
    s, [k] = _store(tmp_path)
    s.claim([k], ALIVE, 100, 1)
    assert s.record_result(_result(tmp_path, k, size=37))
    assert not s.record_result(_result(tmp_path, k, size=37))  # the same checkpoint: recorded once
    [run] = s.runs(context="c", status="done")
    assert isinstance(run, Run) and run.weights == (0.5, 0.5) and run.domains == ("a", "b")
    assert run.checkpoint == f"checkpoints/{k}.safetensors" and run.checkpoint_bytes == 37
    assert run.epochs == {"a": 0.1, "b": 0.2} and run.trainings == 1
    with pytest.raises(Exception):
        run.status = "planned"  # frozen


def test_suspect_keeps_results_until_a_new_training_replaces_them(tmp_path):
    s, [k] = _store(tmp_path)
    s.record_result(_result(tmp_path, k, metrics={"old": {"loss": 3.0}, "e1": {"loss": 2.0}}))
    s.record_scores("suite", {k: 2.0})
    s.mark_suspect([k], "checkpoint missing")
    assert s.runs()[0].status == "suspect" and s.runs(status="done") == []
    assert s.measurements() == {k: {"old": {"loss": 3.0}, "e1": {"loss": 2.0}}} and s.scores("suite") == {k: 2.0}
    assert s.claim([k], ALIVE, 100, 1) == [k]  # a sweep retrains it
    s.record_result(_result(tmp_path, k, sha="s2", metrics={"e1": {"loss": 1.5}}))
    run = s.runs()[0]
    assert (run.status, run.sha256, run.trainings) == ("done", "s2", 2)
    assert s.measurements() == {k: {"e1": {"loss": 1.5}}} and s.scores("suite") == {}


@pytest.mark.parametrize("columns", ["all", "oldest"])
def test_version_0_store_migrates_keeping_data(tmp_path, columns):
    """A store of mixopt 0.1 (user_version 0, absolute paths under another root) opens and migrates."""
    old_root = "/home/someone/experiments/ws"
    ws = tmp_path / "copied-ws"
    ws.mkdir()
    schema = SCHEMA
    if columns == "oldest":  # before retraining counts and leases
        schema = "\n".join(x for x in SCHEMA.splitlines() if not x.lstrip().startswith(("trainings", "lease_")))
        schema = schema.replace("error TEXT, created REAL NOT NULL, finished REAL,",
                                "error TEXT, created REAL NOT NULL, finished REAL")
    db = sqlite3.connect(ws / "mixopt.db")
    db.executescript(schema)
    db.execute("INSERT INTO runs (key, context, origin, weights, domains, status, checkpoint, sha256, created) "
               "VALUES ('k', 'c', 'prior', '[1.0]', '[\"a\"]', 'done', ?, 'abc', 1.0)",
               (f"{old_root}/checkpoints/k.safetensors",))
    db.execute("INSERT INTO measurements VALUES ('k', 'e', 'loss', 2.5, 1.0)")
    db.execute("INSERT INTO scores VALUES ('k', 'suite', 2.5, 1.0)")
    db.commit()
    db.close()
    (ws / "checkpoints").mkdir()
    (ws / "checkpoints" / "k.safetensors").write_bytes(b"y" * 12)
    with Store(ws / "mixopt.db") as s:
        [run] = s.runs()
        assert run.checkpoint == "checkpoints/k.safetensors" and run.checkpoint_bytes == 12
        assert (run.status, run.sha256, run.trainings) == ("done", "abc", 0)
        assert s.measurements() == {"k": {"e": {"loss": 2.5}}} and s.scores("suite") == {"k": 2.5}
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
    with Store(ws / "mixopt.db") as s:  # opening again changes nothing
        assert s.runs() == [run]


def test_newer_store_asks_for_an_upgrade(tmp_path):
    Store(tmp_path / "mixopt.db").close()
    with sqlite3.connect(tmp_path / "mixopt.db") as db:
        db.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(MixoptError, match="newer mixopt.*upgrade mixopt"):
        Store(tmp_path / "mixopt.db")


def test_read_only_store_reads_and_refuses_writes(tmp_path, monkeypatch):
    s, [k] = _store(tmp_path)
    s.record_result(_result(tmp_path, k))
    s.close()
    # As if on a read-only mount: the folder cannot be written, so the store opens immutable.
    monkeypatch.setattr(store_module.os, "access", lambda p, mode: False)
    assert store_module.read_only(tmp_path / "mixopt.db")
    before = sorted(p.name for p in tmp_path.iterdir())
    with Store(tmp_path / "mixopt.db") as ro:
        assert ro.readonly and [r.key for r in ro.runs(status="done")] == [k]
        assert ro.summary()["runs"]["done"] == 1
        with pytest.raises(MixoptError, match="read-only"):
            ro.record_scores("suite", {k: 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even a -shm


def test_relative_checkpoint():
    root = Path("/a/ws")
    assert relative_checkpoint("/a/ws/checkpoints/x.safetensors", root) == "checkpoints/x.safetensors"
    assert relative_checkpoint("/old/checkpoints/ws/checkpoints/x.safetensors", root) == "checkpoints/x.safetensors"
    assert relative_checkpoint("checkpoints/x.safetensors", root) == "checkpoints/x.safetensors"
    assert relative_checkpoint("/elsewhere/x.safetensors", root) == "/elsewhere/x.safetensors"


def test_result_file_from_an_old_root_is_recorded_relative(tmp_path):
    """An adopted result file (written before the workspace was copied) names the old root."""
    s, [k] = _store(tmp_path)
    result = _result(tmp_path, k, size=21)
    result["checkpoint"] = f"/old/ws/checkpoints/{k}.safetensors"
    s.record_result(result)
    run = s.runs()[0]
    assert (run.checkpoint, run.checkpoint_bytes) == (f"checkpoints/{k}.safetensors", 21)


def test_a_store_locked_by_another_process_waits_saying_so_then_gives_up(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mixopt.db"
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    monkeypatch.setenv("MIXOPT_DB_TIMEOUT", "1")
    with Store(db) as s, pytest.raises(sqlite3.OperationalError):
        s.start_sweep("sweep")
    err = capsys.readouterr().err
    assert err.count("waiting: another process holds the workspace's database lock") == 1
    holder.execute("ROLLBACK")
    holder.close()


def test_a_store_lock_released_while_waiting_lets_the_work_go_on(tmp_path, monkeypatch):
    import threading
    import time

    db = tmp_path / "mixopt.db"
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setenv("MIXOPT_DB_TIMEOUT", "600")
    box: dict = {}

    def work():
        with Store(db) as s:
            box["store"] = s
            box["sweep"] = s.start_sweep("sweep")

    t = threading.Thread(target=work)
    t.start()
    while not getattr(box.get("store"), "db", None) or not box["store"].db._said:  # it has said it waits
        assert t.is_alive()
        time.sleep(0.01)
    holder.execute("COMMIT")
    t.join()
    assert box["sweep"] >= 1
    holder.close()


def test_version_6_store_opens_keeping_every_row(tmp_path):
    """A store of version 6 (before runs recorded where they trained) migrates to 7: every run, measurement
    and score is kept, and its runs read as trained on a CPU in float32 (measured_as None), the setting
    their keys were computed under."""
    db = store_at_version(tmp_path, 6)
    for i in range(3):
        db.execute("INSERT INTO runs (key, context, origin, weights, domains, slices, tokenizer, status, created, "
                   "params, flops) VALUES (?, 'c', 'prior', '[0.5, 0.5]', '[\"a\", \"b\"]', '[\"s1\", \"s2\"]', 't', "
                   "'done', 1.0, 10, 6e3)", (f"k{i}",))
        db.execute("INSERT INTO measurements VALUES (?, 'e', 'loss', 2.5, 1.0)", (f"k{i}",))
        db.execute("INSERT INTO scores VALUES (?, 'suite', 2.5, 1.0)", (f"k{i}",))
    db.commit()
    db.close()
    with Store(tmp_path / "mixopt.db") as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == VERSION == 11
        runs = s.runs()
        assert [r.key for r in runs] == ["k0", "k1", "k2"]
        assert all(r.status == "done" and r.measured_as is None and r.params == 10 for r in runs)
        assert set(s.measurements()) == {"k0", "k1", "k2"} and len(s.scores("suite")) == 3
        s.add_planned([{"key": "g", "context": "c", "origin": "prior", "weights": [1.0], "domains": ["a"],
                        "measured_as": "cuda/bf16-autocast"}])
        assert s.runs()[-1].measured_as == "cuda/bf16-autocast"
