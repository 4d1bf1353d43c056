"""How and where work runs, as one value the CLI builds: not part of what is computed, so the same
config gives the same results on a laptop, a GPU box or a cluster, except where the device type and
the precision change the numbers: those enter run keys (core.keys.measurement_of)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

BACKENDS = ("local", "ray", "slurm")
COMPILE = ("auto", "on", "off")
PRECISION = ("auto", "fp32", "bf16")  # proxy.train.PRECISIONS (config cannot import proxy)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class Runtime:
    backend: str = "local"  # local | ray | slurm
    workers: int = 1  # local: worker processes; ray/slurm: proxies (or batches) in flight
    device: str = "auto"  # auto (a GPU where the worker sees one) | cpu | cuda | cuda:N
    batch_proxies: int | str = "auto"  # proxies trained together per task, or auto
    compile: str = "auto"  # torch.compile the training forward: auto (where it pays, measured) | on | off
    # training precision: auto (bf16 autocast on a GPU with bf16 in hardware, else float32) | fp32 | bf16;
    # unlike the rest, it changes the numbers, so it enters each run's key (core.keys.measurement_of)
    precision: str = "auto"
    progress: bool | str = False  # on stderr: True bars, "lines" one line per finished run, False nothing
    say: Callable[[str], None] = field(default=_say, compare=False)  # one-line notices
    ray_address: str | None = None  # join this Ray cluster (auto or HOST:PORT); default: a local Ray
    slurm_partition: str | None = None  # overrides the config's slurm.partition
    slurm_cluster: str | None = None  # submitit's cluster: slurm, local, debug

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"device {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.batch_proxies != "auto" and not (isinstance(self.batch_proxies, int) and self.batch_proxies >= 1):
            raise ValueError(f"batch_proxies {self.batch_proxies!r} is not auto or a positive integer")
        if self.compile not in COMPILE:
            raise ValueError(f"compile {self.compile!r} is not one of {', '.join(COMPILE)}")
        if self.precision not in PRECISION:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISION)}")
