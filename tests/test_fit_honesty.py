"""Fits that tell the truth on tables they were not tuned on: the target-column collision, the
log-weight family, auto judged by nested cross-validation, and the warnings a weak or odd fit earns."""

import subprocess
import sys

import numpy as np
from conftest import write_csv


def test_a_target_named_like_a_weight_column_is_refused(tmp_path):
    """RegMix-style files name a domain's weight and its loss alike: the join would keep the weight."""
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(3), 20)
    runs = write_csv(tmp_path / "runs.csv", ["id", "Pile-CC", "web", "code"], [[i, *x] for i, x in enumerate(X)])
    scores = write_csv(tmp_path / "scores.csv", ["id", "Pile-CC"],
                       [[i, 3.0 - x[0] + 0.01 * rng.normal()] for i, x in enumerate(X)])
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", "fit", "--runs", runs, "--scores", scores, "--key", "id",
                        "--target", "Pile-CC", "--bootstrap", "0", "--no-plots"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "--target Pile-CC names a column of both" in lines[0] and "rename the score column" in lines[0]
