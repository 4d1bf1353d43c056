import math
import re
from pathlib import Path

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


@pytest.mark.parametrize("text,message", [
    ("name: a\nseed: 1\nseed: 2\n", "line 3: key 'seed' is given twice"),
    ("name: a\nproxy: {lr: .inf}\n", "'proxy.lr': Input should be a finite number"),
    ("name: a\noptimum: {kl_weight: .nan}\n", "'optimum.kl_weight': Input should be a finite number"),
    ("name: a\ndesign: {concentration: [0.1, .inf]}\n", "'design.concentration.1': Input should be a finite number"),
    ("name: a\nseed: -1\n", "'seed': Input should be greater than or equal to 0"),
    ("name: a\nproxy: {tokens: 1e30}\n", "'proxy.tokens'"),
])
def test_config_numbers_and_keys_are_checked_when_read(tmp_path, text, message):
    doms = "domains:\n  - {name: x, sources: [a]}\n  - {name: y, sources: [b]}\n"
    path = tmp_path / "c.yaml"
    path.write_text(text + doms)
    with pytest.raises(MixoptError, match=re.escape(message)):
        load_experiment(path)


def test_config_encoding_and_rounding_messages(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: a\n# caf\xe9\n")
    with pytest.raises(MixoptError, match="not UTF-8 text"):
        load_experiment(path)
    path.write_bytes("\ufeffname: a\ndomains:\n  - {name: x, sources: [a], max: 0.33333333}\n"
                     "  - {name: y, sources: [b], max: 0.33333333}\n  - {name: z, sources: [c], max: 0.33333333}\n"
                     .encode())  # a BOM is fine; maximums summing to 0.99999999 are not
    with pytest.raises(MixoptError, match=r"maximums sum to 0\.99999999 < 1"):
        load_experiment(path)


def test_errors_are_all_reported_with_their_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nseed: -1\nproxy:\n  lr: .inf\ndomains:\n  - {name: x, sources: [a]}\n"
                    "  - {name: y, sources: [b], max: 2}\ndesign: {temperature: 0}\n")
    with pytest.raises(MixoptError) as e:
        load_experiment(path)
    line = e.value.one_line()
    assert "4 problems: line 2: 'seed'" in line
    assert "line 4: 'proxy.lr': Input should be a finite number" in line
    assert "line 7: 'domains.1.max'" in line and "line 8: 'design.temperature'" in line
    assert line.index("line 2:") < line.index("line 4:") < line.index("line 7:") < line.index("line 8:")


def test_json_schema_accepts_configs_and_rejects_what_the_loader_rejects(make_config):
    import json
    import subprocess
    import sys

    import yaml
    jsonschema = pytest.importorskip("jsonschema")

    r = subprocess.run([sys.executable, "-m", "mixopt.cli", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(r.stdout)
    assert "base_dir" not in schema["properties"] and "config_path" not in schema["properties"]
    cfg = yaml.safe_load(make_config().read_text())
    cfg["domains"][0]["sources"] = "short/form.parquet"  # a bare path, as the loader accepts
    cfg["evals"] = "suite.yaml"
    jsonschema.validate(cfg, schema)
    for section, key, bad in (("proxy", "lr", -1), ("design", "rnus", 3), ("optimum", "kl_weight", "x")):
        wrong = {**cfg, section: {**cfg.get(section, {}), key: bad}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    # One model per eval kind: each kind's keys, inline or in a suite file (the demo's), and no other's.
    suite = {"evaluations": [{"name": "h", "kind": "heldout", "domain": "prose"},
                             {"name": "t", "kind": "text", "sources": "t.txt", "max_tokens": 100},
                             {"name": "c", "kind": "choice", "dataset": "allenai/ai2_arc", "preset": "arc", "k": 2},
                             {"name": "q", "kind": "lm_eval", "task": "qa", "metric": "acc", "trust_task_code": True}]}
    jsonschema.validate({**cfg, "evals": suite}, schema)
    demo = yaml.safe_load((Path(__file__).parent.parent / "mixtures" / "demo-suite.yaml").read_text())
    jsonschema.validate({**cfg, "evals": demo}, schema)
    for wrong in ({"name": "h", "kind": "heldout", "domain": "prose", "path": "x"}, {"name": "h", "domain": "prose"},
                  {"name": "h", "kind": "heldot", "domain": "prose"}, {"name": "t", "kind": "text"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**cfg, "evals": {"evaluations": [wrong]}}, schema)


def test_command_line_overrides_keep_what_loading_set(tmp_path):
    """fit's flags over the config change the fit and optimum sections only: a pool's domains keep the
    selector mixopt gave them (not part of any dump of the config), a model_config alias survives."""
    from mixopt.config.load import load_experiment, override_experiment

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.txt").write_text("some text " * 50)
    (tmp_path / "c.yaml").write_text(
        "name: t\ndomains:\n  - {name: a, sources: [{path: a}]}\n  - {name: b, sources: [{path: b}]}\n")
    exp = load_experiment(tmp_path / "c.yaml")
    pooled = exp.model_copy(update={"domains": [exp.domains[0].model_copy(update={"select": {"field": "f", "value": 1}}),
                                                exp.domains[1]]})
    new = override_experiment(pooled, [("--cv-folds", ("fit", "cv_folds"), 3)], {"cv-folds": "3"})
    assert new.fit.cv_folds == 3 and new.overrides == {"cv-folds": "3"}
    assert new.domains[0].select == {"field": "f", "value": 1} and new.domains == pooled.domains
    from mixopt.errors import MixoptError

    with pytest.raises(MixoptError, match="^--cv-folds: "):
        override_experiment(pooled, [("--cv-folds", ("fit", "cv_folds"), 0)], {"cv-folds": "0"})
