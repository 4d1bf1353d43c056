import numpy as np
import pytest

from mixopt.config.load import load_experiment
from mixopt.core.mixtures import domain_bounds
from mixopt.errors import MixoptError
from mixopt.sweep.design import design_mixtures


def _exp(make_config, **kw):
    return load_experiment(make_config(**kw))


PRIOR = np.array([0.6, 0.3, 0.1])
AVAILABLE = [6e6, 3e6, 1e6]


def test_bounds_seeds_and_distinctness(make_config):
    exp = _exp(make_config, design={"runs": 30, "min_weight": 0.01, "min_distance": 0.05},
               optimum={"target_tokens": 1e7, "max_epochs": 2})
    b = domain_bounds(exp, AVAILABLE)
    assert b.upper.tolist() == [1.0, 0.6, 0.2] and b.upper_reason == ("none", "repetition", "repetition")
    designed = design_mixtures(exp, PRIOR, b)
    mixes = [m for m in designed if m.replicate == 0]
    reps = [m for m in designed if m.replicate]
    # default seed replicates: the prior and the design mixture farthest from it, seeds 1 and 2: 4 extra
    # proxies, within 15% of the 32
    assert [(m.origin, m.replicate) for m in reps] == [("replicate:prior:1", 1), ("replicate:prior:2", 2),
                                                       (f"replicate:{reps[2].origin.split(':', 1)[1].rsplit(':', 1)[0]}:1", 1),
                                                       (reps[3].origin, 2)]
    assert reps[0].weights == mixes[0].weights and len(reps) <= 0.15 * len(mixes)
    assert not reps[2].origin.startswith("replicate:vertex")  # single-domain mixtures are not replicated
    W = np.array([m.weights for m in mixes])
    assert np.allclose(W.sum(1), 1) and (W >= 0).all()
    assert (W <= b.upper + 1e-9).all()  # the repetition limit holds for every mixture
    assert not ((W > 0) & (W < 0.01)).any()  # min_weight zeroes small weights
    origins = [m.origin for m in mixes]
    assert origins[:2] == ["prior", "vertex:code"]  # vertices the bounds forbid are left out
    assert "vertex:prose" not in origins and len(mixes) == 32
    d = np.abs(W[:, None] - W[None]).sum(-1) + np.eye(len(W)) * 9
    assert d.min() >= 0.05  # near-duplicates rejected
    again = design_mixtures(exp, PRIOR, b)
    assert [m.weights for m in again] == [m.weights for m in designed]  # seeded: identical
    other = design_mixtures(_exp(make_config, seed=7, design={"runs": 30}), PRIOR, b)
    assert [m.weights for m in other][4:] != [m.weights for m in mixes][4:]


def test_lower_bounds_and_user_mixtures(make_config, corpora):
    path = make_config(design={"runs": 10, "mixtures": [{"code": 0.5, "prose": 0.5}]})
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg["domains"][2]["min"] = 0.2
    cfg["domains"][0]["max"] = 0.5
    path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(path)
    b = domain_bounds(exp, AVAILABLE)
    mixes = design_mixtures(exp, PRIOR, b)
    W = np.array([m.weights for m in mixes if m.origin.startswith("random")])
    assert (W[:, 2] >= 0.2 - 1e-9).all() and (W[:, 0] <= 0.5 + 1e-9).all()
    assert any(m.origin == "user:0" and m.weights == (0.5, 0.5, 0.0) for m in mixes)
    # min 0.2 on legal forbids the other vertices; max 0.5 on code forbids its own
    assert [m.origin for m in mixes if m.origin.startswith("vertex")] == ["vertex:legal"]


def test_impossible_designs_fail_clearly(make_config):
    exp = _exp(make_config, optimum={"target_tokens": 1e9, "max_epochs": 1})
    with pytest.raises(MixoptError, match="upper bounds .* sum to 0.010 < 1"):
        domain_bounds(exp, AVAILABLE)
    exp = _exp(make_config, design={"runs": 50, "min_distance": 1.9})
    with pytest.raises(MixoptError, match="design.runs is 50 but at most about 0 distinct mixtures fit"):
        design_mixtures(exp, PRIOR, domain_bounds(exp, AVAILABLE))


def test_default_runs_grow_with_the_domains(make_config, corpora):
    """design.runs unset: 4 random mixtures per domain, at least 32 (Olmix: the swarm grows with m)."""
    from mixopt.sweep.design import random_runs

    assert random_runs(_exp(make_config, design={})) == 32  # 3 domains: the floor
    many = [{"name": f"d{i}", "sources": [{"path": str(corpora / "code.parquet")}]} for i in range(12)]
    exp = _exp(make_config, domains=many, design={"min_distance": 0.0}, fit={"model": "auto"})
    assert random_runs(exp) == 48
    prior = np.full(12, 1 / 12)
    mixes = design_mixtures(exp, prior, domain_bounds(exp, [1e6] * 12))
    assert sum(m.origin.startswith("random:") for m in mixes) == 48


FIVE = np.array([0.35, 0.25, 0.2, 0.1885, 0.0115])  # the fifth: a small new domain (issue 28's prior)


def _five_domains(make_config, corpora, runs: int, mode: str):
    cfg = make_config(design={"runs": runs, "min_weight": 0.01, "replicates": None, "after_change": mode})
    import yaml

    doc = yaml.safe_load(cfg.read_text())
    doc["domains"] += [{"name": "more", "sources": [{"path": str(corpora / "legal")}]},
                       {"name": "new", "sources": [{"path": str(corpora / "code.parquet")}]}]
    cfg.write_text(yaml.safe_dump(doc))
    return load_experiment(cfg)


@pytest.mark.parametrize("mode", ["reuse", "extend"])
@pytest.mark.parametrize("runs, scratch", [(11, 17), (12, 18), (23, 29)])
def test_a_change_trains_at_most_40_percent_of_a_scratch_design_and_varies_the_new_domain(
        make_config, corpora, runs, scratch, mode):
    """Adding one small domain to a finished design of 4: the planner's new runs are at most 0.4 of
    what a five-domain design from scratch plans (16- to 28-run base designs), and every random one
    gives the new domain weight (the prior's Dirichlet would put it at 0 in most)."""
    from mixopt.core.mixtures import Bounds
    from mixopt.sweep.change import Change

    exp = _five_domains(make_config, corpora, runs, mode)
    free = Bounds(np.zeros(5), np.ones(5), ("none",) * 5)
    assert len(design_mixtures(exp, FIVE, free)) == scratch
    four = FIVE[:4] / FIVE[:4].sum()
    before = exp.model_copy(update={"domains": exp.domains[:4]})  # the design before 'new' was added
    base = [(m.origin, (*m.weights, 0.0)) for m in design_mixtures(before, four, Bounds(
        np.zeros(4), np.ones(4), ("none",) * 4))]
    change = Change(mode, (4,), (0, 1, 2, 3), tuple(base), 0,
                    tuple(four) if mode == "reuse" else None, "the token prior")
    new = design_mixtures(exp, FIVE, free, change)[len(base):]
    assert len(new) / scratch <= 0.4, (len(new), scratch)
    random = np.array([m.weights for m in new if ":random:" in m.origin])
    assert len(random) >= 2 and (random[:, 4] >= 0.01).all()
    assert np.ptp(random[:, 4]) > 0.1  # drawn over a range, not one value
    if mode == "reuse":  # still on the reuse plane: the old domains at the virtual proportions
        u = random[:, :4]
        assert np.allclose(u / u.sum(1, keepdims=True), four, atol=1e-6)


