"""The model families the fit chooses from, one class per module, registered here by name.

To add a family: write one module here with one MixtureModel subclass (base.py says what it
implements; its `kind` is its name), add it to CLASSES, and add the name to config/schema.py's
MODELS. The config is the lowest layer and cannot import fit, so the schema keeps its own list of
the names (it checks `fit.model` while the YAML loads, with the line of a bad value);
tests/test_fit_models.py checks that the schema's names, the CLI's `--model` choices and this
registry agree. The CLI takes its choices from NAMES: the registry names its classes by module so
that reading the names imports nothing (the families import numpy, and every `mixopt` command
would pay for it); FAMILIES imports them on first use.
"""

from __future__ import annotations

import importlib
from functools import cache

from mixopt.errors import MixoptError

# name -> "module.Class" in this package, in the order auto cross-validates them (on a tie in
# every other respect, the earlier wins)
CLASSES = {
    "linear": "linear.Linear",
    "loglinear": "loglinear.LogLinear",
    "law": "law.Law",
    "quadratic": "quadratic.Quadratic",
    "logweight": "logweight.LogWeight",
    "multitask": "multitask.Multitask",
    "gp": "gp.GPModel",
    "gbm": "gbm.BoostedTrees",
    "ensemble": "ensemble.Ensemble",
}
NAMES: tuple[str, ...] = tuple(CLASSES)


@cache
def _families() -> dict[str, type]:
    out = {}
    for name, path in CLASSES.items():
        module, cls = path.rsplit(".", 1)
        out[name] = getattr(importlib.import_module(f"mixopt.fit.families.{module}"), cls)
    return out


def __getattr__(attr: str):
    if attr == "FAMILIES":  # FAMILIES: dict[str, type[MixtureModel]], name -> class, in CLASSES' order
        return _families()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def family(name: str) -> type:
    """The family registered as `name`."""
    if name not in CLASSES:
        raise MixoptError(f"no model family '{name}'", f"use one of: {', '.join(NAMES)} (or auto)")
    return _families()[name]
