"""What a sweep of this config trains: the sample it reads, the proxy spec, the bounds, the
design's mixtures and their run keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mixopt.config.schema import Experiment
from mixopt.config.validate import check_seq_len
from mixopt.core.keys import content_hash
from mixopt.core.mixtures import Bounds, Mixture, domain_bounds
from mixopt.core.workspace import Workspace
from mixopt.data.sample import sample_key
from mixopt.errors import MixoptError
from mixopt.evals.suites import Suite, resolve_suite
from mixopt.proxy.model import ProxySpec, proxy_spec
from mixopt.proxy.train import TRAINER_VERSION
from mixopt.sweep.design import design_mixtures

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What a sweep of this config trains, and what its results are compared against."""

    workspace: Workspace
    manifest: dict
    spec: ProxySpec
    bounds: Bounds
    prior: np.ndarray
    available: list[int]
    context: str  # hash of everything but the weights
    suite: Suite
    mixtures: list[Mixture]
    keys: list[str]


def load_plan(exp: Experiment, extra: list[Mixture] | tuple = (), design: bool = True) -> Plan:
    """The design's mixtures (unless design=False) plus `extra` ones (proposed, verification)."""
    ws = Workspace(exp.workspace_dir)
    manifest = ws.read_manifest()
    if manifest.get("key") != sample_key(exp):
        raise MixoptError(f"the sample in {ws.root} is stale (config or corpus changed since)",
                          "run `mixopt sample CONFIG` again")
    names = exp.domain_names
    available = [manifest["domains"][n]["tokens"] for n in names]
    prior = np.array([manifest["domains"][n]["prior"] for n in names])
    spec = proxy_spec(exp.proxy, manifest["vocab_size"])
    check_seq_len(spec.seq_len, {n: manifest["domains"][n].get("train_tokens") for n in names})
    bounds = domain_bounds(exp, available)
    context = content_hash({
        "trainer": TRAINER_VERSION, "seed": exp.seed, "spec": spec.to_dict(), "domains": names,
        "slices": {n: manifest["domains"][n]["train_sha256"] for n in names},
        "tokenizer": manifest["tokenizer_sha256"],
    })
    mixtures, keys = [], []
    for m in (design_mixtures(exp, prior, bounds) if design else []) + list(extra):
        key = run_key(context, m.weights)
        if key not in keys:
            mixtures.append(m)
            keys.append(key)
    suite = resolve_suite(exp, manifest, ws)
    return Plan(ws, manifest, spec, bounds, prior, available, context, suite, mixtures, keys)


def run_key(context: str, weights) -> str:
    return content_hash({"context": context, "weights": list(weights)})
