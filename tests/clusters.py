"""Real cluster engines for the tests, on 127.0.0.1, each private to the test that starts it: a
one-node SLURM (Debian's slurmctld, slurmd and munge) and a two-node Ray (`ray start` head + worker).

Nothing machine-wide is touched: SLURM and munge read a config, key and socket in a temp folder
(SLURM_CONF points there), listen on free ports, and are stopped by the process ids we started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_missing() -> str | None:
    """Why a real SLURM cannot run here, or None."""
    for exe in (*SLURM_DAEMONS, "sbatch", "sinfo", "squeue"):
        if shutil.which(exe) is None:
            return f"{exe} not installed (Debian: apt-get install slurmctld slurmd slurm-client munge; .ci/run does)"
    if os.geteuid() != 0:
        return "slurmd runs jobs as their owner and needs root to start here"
    return None


class Slurm:
    """slurmctld + slurmd + munged, started in a temp folder; `env` submits to them."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))  # short: socket paths are < 108 bytes
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname().split(".")[0]
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf = d / "slurm.conf"
        self.conf.write_text("\n".join([
            "ClusterName=mixopt-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={d / 'munge.sock'}",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            # No slurmdbd: job accounting is off, as on many small clusters (sacct fails; see the README).
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "ReturnToService=2", "KillWait=5", "SchedulerType=sched/backfill", "SlurmdTimeout=30", "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 90) -> Slurm:
        d = self.dir
        self._spawn(["munged", "--foreground", "--force", f"--key-file={d / 'munge.key'}",
                     f"--socket={d / 'munge.sock'}", f"--pid-file={d / 'munged.pid'}",
                     f"--log-file={d / 'log' / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"])
        self._wait(lambda: (d / "munge.sock").exists(), timeout, "munged did not create its socket")
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(lambda: self.node_state() == "idle", timeout, "the SLURM node did not become idle")
        return self

    def node_state(self) -> str:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env,
                           timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ""

    def _spawn(self, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{cmd[0]}.out", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"{what}; logs:\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                         for f in sorted((self.dir / "log").iterdir()))

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged: each by the id we started
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray not installed (pip install 'mixopt[ray]'; `make test` does)"
    return None


class RayCluster:
    """A head and `workers` worker nodes started with `ray start` on 127.0.0.1, one CPU each. Every
    process they start inherits MIXOPT_TEST_RAY=<its temp dir>, which is how `stop` finds exactly
    them (Ray renames its processes, and `ray stop` would stop every Ray on the machine)."""

    def __init__(self, workers: int = 1):
        import sys

        self.dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths are < 108 bytes
        self.workers = workers
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HOME": self.dir, "RAY_TMPDIR": self.dir,
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "MIXOPT_TEST_RAY": self.dir}

    def start(self) -> RayCluster:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(100 << 20)]
        self._ray(["start", "--head", "--port", str(self.port), "--disable-usage-stats",
                   "--include-dashboard", "false", *common])
        for _ in range(self.workers):
            self._ray(["start", "--address", self.address, *common])
        return self

    def _ray(self, args: list[str]) -> None:
        r = subprocess.run([self.ray, *args], capture_output=True, text=True, env=self.env, timeout=180)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {r.stderr[-2000:]}")

    def processes(self) -> list[int]:
        marker = f"MIXOPT_TEST_RAY={self.dir}".encode()
        out = []
        for p in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in p.read_bytes().split(b"\0"):
                    out.append(int(p.parent.name))
            except OSError:
                pass
        return [pid for pid in out if pid != os.getpid()]

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while self.processes() and time.time() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)
