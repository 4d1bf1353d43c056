"""Progress on stderr: on a terminal, bars (one for the whole job, one per task in flight);
elsewhere (logs, CI), one line per finished task."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Bars:
    def __init__(self, total: int, enabled: bool | str, desc: str = "sweep", unit: str = "run",
                 step_unit: str = "step"):
        """enabled: True for bars, "lines" for a line per finished task, False for nothing."""
        self.lines = enabled == "lines" and total > 0
        self.enabled = enabled is True and total > 0
        self.total, self.done, self.desc, self.unit = total, 0, desc, unit
        self.step_unit = step_unit
        self.job = tqdm(total=total, desc=desc, unit=unit, position=0, disable=not self.enabled)
        self.tasks: dict[str, tqdm] = {}

    def step(self, key: str, step: int, total: int, loss: float | None = None) -> None:
        if not self.enabled:
            return
        bar = self.tasks.get(key)
        if bar is None:
            used = {b.pos for b in self.tasks.values()}
            pos = next(i for i in range(1, len(used) + 2) if i not in used)
            bar = self.tasks[key] = tqdm(total=total, desc=f"run {key[:8]}", unit=self.step_unit, position=pos,
                                         leave=False)
        bar.update(step - bar.n)
        if loss:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def finish(self, key: str) -> None:
        self.done += 1
        if self.lines:
            print(f"{self.desc}: {self.unit} {key[:12]} finished ({self.done}/{self.total})", file=sys.stderr,
                  flush=True)
        bar = self.tasks.pop(key, None)
        if bar is not None:
            bar.close()
        if self.enabled:
            self.job.update(1)

    def close(self) -> None:
        for bar in self.tasks.values():
            bar.close()
        self.job.close()
