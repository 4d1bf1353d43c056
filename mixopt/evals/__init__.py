"""Eval suites (suites.py) and measuring a proxy on them (measure.py); `mixopt eval --watch` (watch.py)."""
