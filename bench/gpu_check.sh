#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (`make gpu-check`), in <= 8 minutes on one GPU:
#   1. the tests marked `gpu` (batched vs sequential on CUDA under bf16 autocast, evaluation on CUDA,
#      memory per proxy vs the estimate, resume equality, bf16 vs fp32 parity),
#   2. bench/trainer.py for every size, with MFU,
#   3. a 16-run mini sweep with --batch-proxies auto (the choice and both rates are recorded),
#   4. Ray's device visibility (bench/ray_devices.py): what tasks asking 0, 0.5 and 1 GPU see, and the
#      device mixopt's task then trains on,
# then writes bench/results/gpu.json. Without a CUDA GPU it says so in one line, writes a gpu.json
# that says "skipped", and exits 0: CI runs this path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_OUT:-bench/results}
mkdir -p "$OUT"
T0=$(date +%s)

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  why=$("$PY" -c 'import torch; print("torch %s, built with CUDA: %s, GPUs seen: 0" % (torch.__version__, torch.version.cuda or "no"))' 2>/dev/null || echo "torch not importable")
  echo "gpu-check: skipped: no CUDA GPU visible ($why); nothing was measured"
  "$PY" - "$OUT/gpu.json" "$why" <<'PYEOF'
import json, sys
json.dump({"skipped": True, "reason": f"no CUDA GPU visible ({sys.argv[2]})"}, open(sys.argv[1], "w"), indent=2)
PYEOF
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mixopt-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "gpu-check: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)')"

# 1. GPU tests (each writes its figures to $MIXOPT_GPU_RECORD).
export MIXOPT_GPU_RECORD="$WORK/tests.jsonl"
set +e
timeout 180 "$PY" -m pytest -q -p no:xdist -m gpu tests/test_gpu.py --junitxml "$WORK/gpu-tests.xml" 2>&1 | tail -15
TESTS_RC=${PIPESTATUS[0]}
# 2. The trainer, every size, with MFU.
timeout 240 "$PY" bench/trainer.py --sizes tiny,1m,5m,15m,30m --steps 10 --no-auto --out "$WORK/trainer.json" > "$WORK/trainer.log" 2>&1
TRAINER_RC=$?
tail -3 "$WORK/trainer.log"
# 3. A 16-run mini sweep with --batch-proxies auto, on corpora of this interpreter's own files.
timeout 150 "$PY" bench/gpu_sweep.py --work "$WORK/sweep" --out "$WORK/sweep.json" 2>&1 | tail -5
SWEEP_RC=${PIPESTATUS[0]}
# 4. Ray: CUDA_VISIBLE_DEVICES / torch.cuda.device_count() per task, and mixopt's device there.
timeout 90 "$PY" bench/ray_devices.py --out "$WORK/ray_devices.json" > "$WORK/ray.log" 2>&1
RAY_RC=$?
tail -2 "$WORK/ray.log"
set -e

"$PY" - "$WORK" "$OUT/gpu.json" "$TESTS_RC" "$TRAINER_RC" "$SWEEP_RC" "$RAY_RC" "$T0" <<'PYEOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
import torch
work, out = Path(sys.argv[1]), Path(sys.argv[2])
rc = dict(zip(("tests", "trainer", "sweep", "ray_devices"), map(int, sys.argv[3:7])))
def load(name):
    p = work / name
    return json.loads(p.read_text()) if p.is_file() else None
tests = {}
if (work / "gpu-tests.xml").is_file():
    s = ET.parse(work / "gpu-tests.xml").getroot()
    s = s if s.tag == "testsuite" else s[0]
    tests = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
records = [json.loads(l) for l in (work / "tests.jsonl").read_text().splitlines()] if (work / "tests.jsonl").is_file() else []
result = {"skipped": False, "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
          "exit_codes": rc, "gpu_tests": tests, "gpu_test_records": records, "trainer": load("trainer.json"),
          "mini_sweep": load("sweep.json"), "ray_devices": load("ray_devices.json"),
          "seconds": round(time.time() - float(sys.argv[7]), 1)}
out.write_text(json.dumps(result, indent=2) + "\n")
print(f"gpu-check: wrote {out} ({result['seconds']} s; exit codes {rc})")
sys.exit(1 if any(rc.values()) else 0)
PYEOF
