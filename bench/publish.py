"""Copy benchmark JSON into docs/results/, the committed folder the docs' benchmark tables are rendered
from (docs/hooks.py, `<!-- generated: published -->` on the benchmarks page). Each copy is stamped with
the day its file was written and the command that wrote it (`--command`, else the file's own
`command`, else `make bench`), since a checkout's file times say nothing."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def publish(path: Path, command: str | None, out: Path = OUT) -> Path:
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise SystemExit(f"error: {path}: not a benchmark JSON object; rerun its bench script")
    day = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d")
    stamped = {"measured": doc.get("measured", day), "command": command or doc.get("command", "make bench"),
               **{k: v for k, v in doc.items() if k not in ("measured", "command")}}
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(stamped, f, indent=1)
        f.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out / path.name)
    return out / path.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--command", help="the command that wrote the files (default: their own, else `make bench`)")
    args = ap.parse_args()
    for f in args.files:
        print(publish(f, args.command))


if __name__ == "__main__":
    main()
