"""Progress on stderr: on a terminal, bars (one for the whole job, one per task in flight);
elsewhere (logs, CI), one line per finished task."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def clock(seconds: float) -> str:
    """1m05s, 2h03m, 42s: elapsed times and ETAs on progress lines."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Bars:
    def __init__(self, total: int, enabled: bool | str, desc: str = "sweep", unit: str = "run",
                 step_unit: str = "step"):
        """enabled: True for bars, "lines" for a line per finished task, False for nothing."""
        self.lines = enabled == "lines" and total > 0
        self.enabled = enabled is True and total > 0
        self.total, self.done, self.desc, self.unit = total, 0, desc, unit
        self.step_unit = step_unit
        self.t0 = time.monotonic()
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
            print(f"{self.desc}: {self.unit} {key[:12]} finished ({self.done}/{self.total}) {self.timing()}",
                  file=sys.stderr, flush=True)
        bar = self.tasks.pop(key, None)
        if bar is not None:
            bar.close()
        if self.enabled:
            self.job.update(1)

    def timing(self) -> str:
        """'1m05s elapsed, ETA 3m10s': the ETA assumes the tasks left take what the finished ones took."""
        elapsed = time.monotonic() - self.t0
        left = self.total - self.done
        eta = clock(elapsed / self.done * left) if self.done and left > 0 else "0s"
        return f"{clock(elapsed)} elapsed, ETA {eta}"

    def close(self) -> None:
        for bar in self.tasks.values():
            bar.close()
        self.job.close()
