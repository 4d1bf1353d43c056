"""`mixopt eval --watch`: re-evaluate and refit each time the config or its suite file is saved."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mixopt.errors import MixoptError


def watched_files(config: Path) -> list[Path]:
    """The config and, when it names one, its suite file (read fresh: the config may change it)."""
    from mixopt.config.load import load_experiment

    files = [config]
    try:
        exp = load_experiment(config)
    except MixoptError:
        return files
    if exp.evals is not None and exp.evals.path:
        files.append(Path(exp.evals.path))
    return files


def watch(config: Path, step: Callable[[], None], say: Callable[[str], None], interval: float = 1.0,
          max_steps: int | None = None) -> None:
    """Run `step` now and after every change; a bad save is reported and the watch goes on."""
    def stamp():
        return {f: f.stat().st_mtime_ns if f.exists() else None for f in watched_files(config)}

    seen, steps = None, 0
    while max_steps is None or steps < max_steps:
        now = stamp()
        if now != seen:
            seen = now
            steps += 1
            try:
                step()
            except MixoptError as e:
                say(f"error: {e.one_line()}")
            say(f"watching {', '.join(str(f) for f in now)} for changes (Ctrl-C to stop)")
        time.sleep(interval)
