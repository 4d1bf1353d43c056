"""`mixopt optimize CONFIG --budget B` (fit/rounds.py, sweep/budget.py): budget parsing, accounting
counted from the store, resume after kill -9, and the stop on a decided verdict."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import small_config, write_config
from mixopt.errors import MixoptError
from mixopt.sweep.budget import parse_budget


def mixopt(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "mixopt.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"mixopt {args} exited {r.returncode}: {r.stderr[-3000:]}")
    return r


def test_budget_parses_proxies_flops_and_device_hours():
    assert (parse_budget("40").unit, parse_budget("40").amount) == ("proxies", 40)
    assert (parse_budget("3e12flops").unit, parse_budget("3e12flops").amount) == ("flops", 3e12)
    assert (parse_budget("0.5h").unit, parse_budget("0.5h").amount) == ("seconds", 1800)
    for bad, why in (("abc", "not a number"), ("0", "above 0"), ("40.5", "whole number"), ("1e999flops", "finite"),
                     ("-2", "not a number"), ("5m", "not a number")):
        with pytest.raises(MixoptError, match=why):
            parse_budget(bad)


def test_bad_budget_is_one_line_exit_2_and_writes_nothing(corpora, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws"))
    r = mixopt("optimize", cfg, "--budget", "lots", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: --budget 'lots'")
    assert "e.g. --budget 40" in r.stderr and not (tmp_path / "ws").exists()


def _spent(cfg) -> dict:
    return json.loads(mixopt("status", cfg, "--format", "json").stdout)


def test_rounds_never_spend_more_than_the_budget(corpora, tmp_path):
    """12 proxies for a design of 10: round 1 trains it, then proposals cut to what is left."""
    cfg = write_config(tmp_path / "c.yaml", small_config(corpora, tmp_path / "ws", design__runs=6))
    mixopt("sample", cfg)
    r = mixopt("optimize", cfg, "--budget", "12", "--no-progress")
    print(r.stdout, r.stderr[-3000:])
    assert "round 1: trained 10 proxies (the design at tiny)" in r.stdout
