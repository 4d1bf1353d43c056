"""Atomic writes: whole files only, with the mode the user's umask gives."""

import stat
import subprocess
import sys

import pytest

from mixopt.core.workspace import atomic_write_json


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_honours_umask(tmp_path, umask, mode):
    # A fresh process: the umask is read once per process.
    code = "import sys; from pathlib import Path; from mixopt.core.workspace import atomic_write_json; " \
           "atomic_write_json(Path(sys.argv[1]), {'a': 1})"
    out = tmp_path / "sub" / "fit.json"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, umask=umask)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert out.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in out.parent.iterdir()] == ["fit.json"]  # no temp file left


def test_atomic_write_replaces(tmp_path):
    out = tmp_path / "m.json"
    atomic_write_json(out, [1])
    atomic_write_json(out, [2])
    assert out.read_text() == "[\n  2\n]\n"
