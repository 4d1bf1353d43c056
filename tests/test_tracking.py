"""--track wandb / --track mlflow through the real CLI: W&B in offline mode (its run files read
back), MLflow in a local store (read back with its client)."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import small_config, write_config

wandb = pytest.importorskip("wandb", reason="the `track` extra (wandb) is not installed")
mlflow = pytest.importorskip("mlflow", reason="the `track` extra (mlflow) is not installed")


def run(*args, env):
    return subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def wandb_records(path):
    """The records of an offline W&B run file (LevelDB-style log of protobuf Records after a 7-byte
    header); read here so the test checks what W&B itself stored."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding to the end of a block
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            yield r


def wandb_run(path) -> dict:
    out = {"config": {}, "history": [], "summary": {}, "files": []}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["job_type"] = r.run.display_name, r.run.job_type
            out["config"] = {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
        elif kind == "files":
            out["files"] += [f.path for f in r.files.files]
    return out


@pytest.mark.slow
def test_sweep_and_fit_log_to_wandb_offline_and_a_local_mlflow_store(corpora, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join(sys.path)}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
        env.pop(var, None)
    ws = tmp_path / "ws"
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, ws, design__runs=4))
    assert run("sample", cfg, env=env).returncode == 0
    r = run("sweep", cfg, "--workers", "2", "--no-progress", "--track", "wandb,mlflow", env=env)
    assert r.returncode == 0, r.stderr
    runs = json.loads(run("export", cfg, "--format", "json", env=env).stdout)
    n = len(runs)
    assert f"tracking: {n} runs logged to wandb" in r.stderr and f"tracking: {n} runs logged to mlflow" in r.stderr
    r = run("fit", cfg, "--track", "wandb", "--track", "mlflow", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)  # stdout is still the JSON alone
    assert "tracking: fit" in r.stderr and "runs logged" not in r.stderr  # every run was logged by the sweep

    # W&B: one offline run per proxy with its loss curve and measurements, and one for the fit.
    logged = [wandb_run(p) for p in sorted(glob.glob(str(ws / "wandb" / "offline-run-*" / "run-*.wandb")))]
    proxies = [x for x in logged if x["job_type"] == "proxy"]
    fits = [x for x in logged if x["job_type"] == "fit"]
    assert len(proxies) == n and len(fits) == 1
    by_key = {x["config"]["key"]: x for x in proxies}
    for row in runs:
        x = by_key[row["key"]]
        side = json.loads(next((ws / "checkpoints").glob(row["key"][:24] + ".json")).read_text())
        curve = [h["train/loss"] for h in x["history"] if "train/loss" in h]
        assert curve == pytest.approx(side["losses"]) and len(curve) > 10
        assert x["summary"]["objective"] == pytest.approx(row["objective"])
        assert x["summary"]["heldout/prose/bpb"] == pytest.approx(row["heldout/prose/bpb"])
        assert x["config"]["weights"] == pytest.approx({d: row[d] for d in ("code", "prose", "legal")})
    fit = fits[0]
    assert fit["summary"]["weight/prose"] == pytest.approx(rec["weights"]["prose"])
    assert fit["summary"]["cv_spearman"] == pytest.approx(rec["cv"]["spearman"])
    assert any(k.startswith("cv") for h in fit["history"] for k in h)  # the CV table
    assert any(k.startswith("plots/") for h in fit["history"] for k in h)  # the plots

    # MLflow: the same, read back from the local store with MLflow's own client.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("small")
    found = client.search_runs([exp.experiment_id], max_results=1000)
    proxies = {r.data.params["key"]: r for r in found if r.data.tags["mixopt.kind"] == "proxy"}
    fits = [r for r in found if r.data.tags["mixopt.kind"] == "fit"]
    assert len(proxies) == n and len(fits) == 1 and all(r.info.status == "FINISHED" for r in found)
    row = runs[0]
    m = proxies[row["key"]]
    history = client.get_metric_history(m.info.run_id, "train/loss")
    side = json.loads(next((ws / "checkpoints").glob(row["key"][:24] + ".json")).read_text())
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(side["losses"])
    assert m.data.metrics["objective"] == pytest.approx(row["objective"])
    assert json.loads(m.data.params["weights"]) == pytest.approx({d: row[d] for d in ("code", "prose", "legal")})
    f = fits[0]
    assert f.data.metrics["weight/prose"] == pytest.approx(rec["weights"]["prose"])
    arts = {a.path for a in client.list_artifacts(f.info.run_id)} | {
        a.path for a in client.list_artifacts(f.info.run_id, "plots")}
    assert {"cv.json", "recommendation.json", "config.json", "small.optimal.yaml", "fit.json"} <= arts, arts
    assert any(a.startswith("plots/") and a.endswith(".png") for a in arts)

    # Nothing is logged twice; a tracker whose package is missing is one line before any work.
    r = run("fit", cfg, "--track", "wandb", env=env)
    assert r.returncode == 0 and "tracking:" not in r.stderr
    r = run("sweep", cfg, "--track", "neptune", env=env)
    assert r.returncode == 2 and "error: --track neptune: unknown tracker" in r.stderr
