"""Every config key has a declared type and range (runner/preflight/schema.py), checked before heavy work."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runner.preflight.config import compose_config
from runner.preflight.errors import ConfigError
from runner.preflight.schema import GROUPS, check_config, declared_defaults
from runner.preflight.validate import group_options, validate_config


@pytest.mark.parametrize("group", ["task", "model", "adapter", "method", "logger", "prune", "experiment"])
def test_every_shipped_option_fits_the_schema(group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        check_config(compose_config(overrides, output_dir="/tmp/unused"))


def test_a_schema_for_every_group_of_the_composed_config():
    cfg = compose_config(["method=safe", "prune=hies"], output_dir="/tmp/unused")
    groups = {k for k, v in cfg.items() if hasattr(v, "keys")}
    assert groups <= set(GROUPS), groups - set(GROUPS)


def test_every_default_is_declared_once_in_the_schema():
    """conf/ starts each group from runner.preflight.schema's declared defaults and sets nothing more: the composed
    defaults are the dataclasses', for every option that shares a schema."""
    cfg = compose_config(["method=safe", "prune=hies"], output_dir="/tmp/unused")
    declared = declared_defaults()
    for group, key in (("trainer", "trainer/schema"), ("safe", "safe/schema"), ("prune", "prune/schema_hies"),
                       ("adapter", "adapter/schema_lora"), ("logger", "logger/schema_wandb")):
        assert OmegaConf.to_container(cfg[group]) == declared[key], group
    for option in ("bottleneck", "none"):
        assert OmegaConf.to_container(compose_config([f"adapter={option}"]).adapter) == declared[f"adapter/schema_{option}"]
    assert OmegaConf.to_container(compose_config(["logger=none"]).logger) == declared["logger/schema_none"]
    assert OmegaConf.to_container(compose_config([]).prune) == declared["prune/schema_none"]
    for criterion in ("his", "entropy", "random", "magnitude"):  # every criterion: HIES's settings, its own name
        assert OmegaConf.to_container(compose_config([f"prune={criterion}"]).prune) == {**declared["prune/schema_hies"],
                                                                                       "name": criterion}
    # the measured SAFE defaults docs/safe.md gives (its "Defaults and why")
    assert (cfg.safe.threshold, cfg.safe.t_w, cfg.safe.t_f, cfg.safe.importance) == (0.2, 0.3, 0.8, "own")
    assert cfg.safe.seed == cfg.prune.seed == cfg.seed  # both follow the run's seed unless set


def test_a_default_changed_in_the_schema_is_the_one_that_runs(monkeypatch):
    """One edit: what runner.preflight.schema declares is what Hydra composes and what SAFE receives (here the
    declaration is replaced as an edit of SafeSettings' threshold would replace it)."""
    from runner.preflight import config, schema
    from runner.safe.method import SafeMethod

    real = schema.declared_defaults()
    # what register_config hands Hydra: runner.preflight.config reads the schema's declarations
    monkeypatch.setattr(config, "declared_defaults", lambda: {**real, "safe/schema": {**real["safe/schema"], "threshold": 0.35}})
    cfg = compose_config(["method=safe"], output_dir="/tmp/unused")
    assert cfg.safe.threshold == 0.35 and SafeMethod(cfg).settings.threshold == 0.35
    monkeypatch.undo()
    assert compose_config(["method=safe"], output_dir="/tmp/unused").safe.threshold == 0.2


CASES = [
    (["+trainer.lrr=1e-3"], "trainer.lrr is not a setting; did you mean trainer.lr?"),
    (["+task.max_train_sample=8"], "task.max_train_sample is not a setting; did you mean task.max_train_samples?"),
    (["+adapter.rank=4"], "adapter.rank is not a setting; valid: _target_, name, r, alpha, dropout, target_modules, merge_on_freeze, head_modules"),
    (["+sed=1"], "sed is not a setting; did you mean seed?"),
    (["trainer.epochs=2.5"], "trainer.epochs must be a positive integer, got 2.5"),
    (["trainer.batch_size=true"], "trainer.batch_size must be an integer, got True"),
    (["trainer.cpu=1"], "trainer.cpu must be true or false, got 1"),
    (["trainer.lr=inf"], "trainer.lr must be a positive number, got inf"),
    (["trainer.weight_decay=-0.1"], "trainer.weight_decay must be a finite number >= 0, got -0.1"),
    (["trainer.num_workers=-1"], "trainer.num_workers must be 0 or a positive integer, got -1"),
    (["trainer.sharpness.iters=0"], "trainer.sharpness.iters must be a positive integer, got 0"),
    (["trainer.sharpness.tol=nan"], "trainer.sharpness.tol must be a positive number, got nan"),
    (["adapter.target_modules=query"], "adapter.target_modules=query is not a list of modules nor one of auto, all-linear; "
                                       "e.g. adapter.target_modules=auto or '[query,value]'"),
    (["adapter=bottleneck", "adapter.activation=swish"], "adapter.activation must be one of gelu, relu, tanh, silu, got 'swish'"),
    (["adapter=bottleneck", "adapter.init_scale=0"], "adapter.init_scale must be a positive number, got 0"),
    (["model.pooling=max"], "model.pooling must be one of auto, cls, mean, last, got 'max'"),
    (["model.dtype=float8"], "model.dtype must be one of float32, bfloat16, float16, got 'float8'"),
    (["task.metrics=accuracy"], "task.metrics must be a list of strings, got 'accuracy'"),
    (["task.is_regression=maybe"], "task.is_regression must be true or false, got 'maybe'"),
    (["resume=maybe"], "resume must be one of false, true, auto, got 'maybe'"),
    (["method=safe", "safe.probe_size=abc"], "safe.probe_size (examples in the probe batch) must be an integer, got 'abc'"),
    (["method=safe", "safe.importance=mine"], "safe.importance must be one of drift, own, got 'mine'"),
    (["method=safe", "safe.schedule_unit=steps"], "safe.schedule_unit must be one of fraction, epoch, got 'steps'"),
    (["method=safe", "safe.t_w=-0.1"], "safe.t_w (warm-up end, in safe.schedule_unit) must be a finite number >= 0, got -0.1"),
    (["prune=hies", "prune.calib_samples=1.5"], "prune.calib_samples must be a positive integer, got 1.5"),
    (["logger.tags=[1,2]"], "logger.tags must be a list of strings, got [1, 2]"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[c[0][-1] for c in CASES])
def test_a_bad_value_of_any_key_fails_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        validate_config(compose_config(overrides, output_dir="/tmp/unused"))
    assert str(exc.value) == message


