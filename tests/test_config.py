import math

import pytest

from mixopt.config.load import load_experiment
from mixopt.config.validate import check_weights
from mixopt.errors import MixoptError


def test_defaults_and_paths_resolve_against_the_config(make_config, tmp_path):
    exp = load_experiment(make_config())
    assert exp.domain_names == ["code", "prose", "legal"]  # config order is the canonical order
    assert exp.fit.cv_folds == 4 and exp.optimum.max_epochs == 4.0
    assert exp.resolve("x/y") == (tmp_path / "x" / "y").resolve()
    assert exp.optimal_path == tmp_path / "small.optimal.yaml"


@pytest.mark.parametrize("override, message", [
    ({"design": {"rnus": 3}}, "unknown key 'design.rnus'; did you mean 'runs'?"),
    ({"proxy": {"size": "huge"}}, "'proxy.size'"),
    ({"sample": {"val_tokens": -5}}, "'sample.val_tokens'"),
])
def test_bad_keys_and_values_are_named(make_config, override, message):
    with pytest.raises(MixoptError) as e:
        load_experiment(make_config(**override))
    assert message in e.value.one_line()


def test_infeasible_bounds_are_rejected(make_config, corpora):
    path = make_config()
    import yaml

    cfg = yaml.safe_load(path.read_text())
    for d in cfg["domains"]:
        d["min"] = 0.4
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(MixoptError, match="minimums sum to 1.2 > 1"):
        load_experiment(path)


@pytest.mark.parametrize("weights, message", [
    ({"a": float("nan"), "b": 1.0}, "not a finite number"),
    ({"a": -0.5, "b": 1.5}, "negative"),
    ({"a": 0.5, "b": 0.4}, "sum to 0.9, not 1"),
    ({"a": 0.5, "c": 0.5}, "unknown domain 'c'"),
])
def test_bad_weights(weights, message):
    with pytest.raises(MixoptError, match=message):
        check_weights(weights, ["a", "b"], "here")


def test_weights_within_tolerance_are_normalized():
    w = check_weights({"a": 0.5004, "b": 0.5}, ["a", "b"], "here")
    assert math.isclose(sum(w), 1.0) and w[0] > w[1]
