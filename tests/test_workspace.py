"""Atomic writes (whole files only, with the mode the user's umask gives) and folder ownership."""

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mixopt.core.workspace import (
    MARKER,
    Workspace,
    atomic_write_json,
    check_folder,
    claim_folder,
    make_dirs,
    owns,
    read_json,
)
from mixopt.errors import MixoptError


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_honours_umask(tmp_path, umask, mode):
    # A fresh process: the umask is read once per process.
    code = "import sys; from pathlib import Path; from mixopt.core.workspace import atomic_write_json; " \
           "atomic_write_json(Path(sys.argv[1]), {'a': 1})"
    out = tmp_path / "sub" / "fit.json"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, umask=umask)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert out.read_text() == '{\n  "a": 1\n}\n'
    # no temp file left; the folder it made carries mixopt's marker
    assert sorted(p.name for p in out.parent.iterdir()) == [MARKER, "fit.json"]


def test_atomic_write_replaces(tmp_path):
    out = tmp_path / "m.json"
    atomic_write_json(out, [1])
    atomic_write_json(out, [2])
    assert out.read_text() == "[\n  2\n]\n"


def test_make_dirs_marks_every_folder_it_creates_and_only_those(tmp_path):
    (tmp_path / "mine").mkdir()
    make_dirs(tmp_path / "mine" / "a" / "b")
    assert not owns(tmp_path / "mine")  # it existed: not mixopt's
    assert owns(tmp_path / "mine" / "a") and owns(tmp_path / "mine" / "a" / "b")


def test_claim_refuses_a_folder_of_someone_elses_files(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(MixoptError, match=r"holds files mixopt did not write \(todo.txt\)"):
        claim_folder(tmp_path / "notes", "--save folder")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]  # untouched
    (tmp_path / "f").write_text("x")
    with pytest.raises(MixoptError, match="is a file, not a folder"):
        check_folder(tmp_path / "f", "the workspace")


def test_claim_makes_adopts_empty_and_legacy_workspaces(tmp_path):
    Workspace(tmp_path / "new").claim()
    assert owns(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    Workspace(tmp_path / "empty").claim()
    assert owns(tmp_path / "empty")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "mixopt.db").write_bytes(b"")  # written by a mixopt from before markers
    Workspace(tmp_path / "old").claim()
    assert owns(tmp_path / "old")


def test_read_json_names_a_truncated_file(tmp_path):
    (tmp_path / "m.json").write_text('{"a": ')
    with pytest.raises(MixoptError, match="m.json: truncated or not JSON"):
        read_json(tmp_path / "m.json")


def test_one_owner_names_a_fit_folder(tmp_path):
    """fits/<first 16 hex digits of the fit key>/, built by Workspace.fit_dir alone."""
    from pathlib import Path

    import mixopt

    key = "0123456789abcdef" * 4
    assert Workspace(tmp_path).fit_dir(key) == tmp_path / "fits" / "0123456789abcdef"
    root = Path(mixopt.__file__).parent
    builders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "fits_dir" in p.read_text()]
    assert builders == ["core/workspace.py"]


def test_a_workspace_under_a_file_or_where_no_folder_can_be_made_is_one_line(corpora, tmp_path):
    """`workspace:` under a file (a typo'd path, /proc/version/ws) is refused before any work; one that
    cannot be made (sysfs: no folders there, even for root) is one line too; nothing is left behind."""
    from conftest import small_config, write_config

    (tmp_path / "afile").write_text("mine\n")
    cases = [(tmp_path / "afile" / "sub" / "ws", "is under"), (Path("/proc/version/ws"), "is under")]
    if Path("/sys").is_dir():
        cases.append((Path("/sys/mixopt-test-ws/sub"), "cannot make the folder"))
    for ws, said in cases:
        cfg = write_config(tmp_path / "c.yaml", small_config(corpora, ws))
        r = subprocess.run([sys.executable, "-m", "mixopt.cli", "sample", str(cfg)], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert said in r.stderr and "Traceback" not in r.stderr
        assert not ws.exists()
    assert (tmp_path / "afile").read_text() == "mine\n" and not Path("/sys/mixopt-test-ws").exists()
