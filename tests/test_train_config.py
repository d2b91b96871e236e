"""The training config: the typed TrainConfig is the schema of default_config and round-trips through config.json,
unknown fields fail with a "did you mean", bad values are named; the model group: the paper configs validate,
backbone options are a nested group that the command line can set, and the backbone's own check on the number
of points runs from validate_config."""

import dataclasses
import importlib
import json

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest
from absl import flags
from ml_collections import config_flags

from tests import train_config
from tgmm_jax.models import BACKBONES
from tgmm_jax.models.options import Mamba2Options
from tgmm_jax.train.config import (
    EvalConfig,
    OptimConfig,
    TrainConfig,
    default_config,
    model_group,
    validate_config,
)


@pytest.mark.parametrize("name", ["paper", "mamba2", "tiny", "lik", "anisotropic"])
def test_paper_configs_validate(name):
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    _, model_config = validate_config(config)
    assert model_config.backbone == {"mamba2": "mamba2", "tiny": "set"}.get(name, "gpt2")
    if name == "mamba2":
        assert model_config.backbone_options == Mamba2Options()  # 8 heads of 64, state 16, 2 groups


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_model_group_round_trips_every_backbone(backbone):
    config = importlib.import_module("experiments.configs.paper").get_config()
    config.model = model_group("tiny", backbone=backbone)
    assert validate_config(config)[1].backbone_options == BACKBONES[backbone].options()


def test_command_line_sets_common_fields_and_backbone_options():
    argv = [
        "prog",
        "--config=experiments/configs/mamba2.py",
        "--config.model.num_layers=2",
        "--config.model.width=32",
        "--config.model.backbone_options.heads=4",
        "--config.model.backbone_options.head_dim=32",
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)  # as experiments/train.py
    values(argv)
    _, model_config = validate_config(values.config)
    assert (model_config.num_layers, model_config.width) == (2, 32)
    assert model_config.backbone_options == Mamba2Options(heads=4, head_dim=32)


def test_the_backbone_checks_the_number_of_points():
    config = importlib.import_module("experiments.configs.paper").get_config()
    config.model.backbone_options.max_positions = 64  # n_max is 128
    with pytest.raises(ValueError, match=r"config\.model: backbone_options\.max_positions=64"):
        validate_config(config)
    config.task.n_max = 64
    validate_config(config)
    config.eval.n = 65
    with pytest.raises(ValueError, match="max_positions"):
        validate_config(config)


def test_options_of_another_backbone_are_refused_with_a_hint():
    config = importlib.import_module("experiments.configs.paper").get_config()
    config.model.backbone = "set"  # the group still holds gpt2's max_positions
    with pytest.raises(
        ValueError, match=r"config\.model: .*unknown field\(s\) \['max_positions'\].*model_group"
    ):
        validate_config(config)


@pytest.mark.slow
def test_cluster_config_validates_and_checks_its_new_fields():
    config = importlib.import_module("experiments.configs.cluster").get_config()
    spec, model_config = validate_config(config)
    assert model_config.dimension_free and model_config.readout == "cluster"
    assert (model_config.slot_init, config.eval.slot_init) == (
        "farthest+greedy",
        "farthest+greedy+smooth3+smooth12",
    )
    assert (
        importlib.import_module("experiments.configs.cluster").get_config("init=learned").eval.slot_init
        is None
    )
    assert tuple(config.train_dims) == (2, 8, 32) and config.resp_weight == 1.0
    assert spec.cos_filter_max_k is None  # the filter on every K unless cos_max_k says otherwise
    k8 = importlib.import_module("experiments.configs.cluster").get_config("ks=2/3/4/5/6/7/8,cos_max_k=5")
    assert validate_config(k8)[0].cos_filter_max_k == 5
    from tgmm_jax.train.config import train_specs

    assert [s.dim for s in train_specs(spec, config)] == [2, 8, 32]

    fixed = importlib.import_module("experiments.configs.cluster").get_config()
    fixed.model.readin = "raw"
    with pytest.raises(ValueError, match="train_dims.*dimension-free"):
        validate_config(fixed)
    attentive = importlib.import_module("experiments.configs.cluster").get_config("dims=,eval_init=")
    attentive.model.readout = "attentive"
    with pytest.raises(ValueError, match="resp_weight.*cluster"):
        validate_config(attentive)
    impossible = importlib.import_module("experiments.configs.cluster").get_config("dims=1/8")
    with pytest.raises(ValueError, match=r"D=1, K=3"):
        validate_config(impossible)
    bad = importlib.import_module("experiments.configs.cluster").get_config()
    bad.train_dims = (2, 0)
    with pytest.raises(ValueError, match="train_dims"):
        validate_config(bad)


def test_eval_slot_init_reseeds_only_a_seeded_cluster_readout():
    from tgmm_jax.train.config import eval_model_config
    from tgmm_jax.train.restore import upgrade_saved_config

    config = importlib.import_module("experiments.configs.cluster").get_config("init=farthest,eval_init=")
    assert config.eval.slot_init is None
    _, model_config = validate_config(config)
    assert eval_model_config(model_config, config.eval) is model_config  # None: evaluated as trained
    config.eval.slot_init = "farthest+greedy+smooth3"
    _, model_config = validate_config(config)
    evaluated = eval_model_config(model_config, config.eval)
    assert evaluated.slot_init == "farthest+greedy+smooth3" and model_config.slot_init == "farthest"
    assert evaluated == type(model_config)(**{**model_config.to_dict(), "slot_init": evaluated.slot_init})
    for model_changes, slot_init, message in [
        ({"slot_init": "learned"}, "farthest", "different parameters"),  # a learned start has no seed_embed
        ({}, "learned", "different parameters"),
        ({}, "farthest+kmeans", "not a seeding"),
        ({"readout": "attentive"}, "farthest", "clustering read-out"),
    ]:
        bad = importlib.import_module("experiments.configs.cluster").get_config("dims=,resp=0.0")
        bad.model.update(model_changes)
        bad.eval.slot_init = slot_init
        with pytest.raises(ValueError, match=rf"config.eval.slot_init: .*{message}"):
            validate_config(bad)
    # checkpoints saved before the field existed are read as "evaluate as trained"
    assert upgrade_saved_config({"eval": {"tasks_per_k": 4}})["eval"] == {"tasks_per_k": 4, "slot_init": None}


def test_typed_config_is_the_schema_of_default_config():
    config = default_config()
    typed = TrainConfig.from_config(config)
    assert typed == TrainConfig() and TrainConfig.from_config(typed) is typed
    assert TrainConfig.from_dict(typed.to_dict()) == typed
    saved = json.loads(config.to_json())  # what config.json held: n_min None follows n_max
    assert typed.to_dict() == {**saved, "task": {**saved["task"], "n_min": typed.task.n_max // 2}}
    assert TrainConfig.from_dict(saved) == typed


@pytest.mark.parametrize(
    "where, field, guess",
    [
        ("", "learning_rate", "optim.learning_rate"),  # a field of a group, given at the top level
        ("", "total_step", "total_steps"),
        ("optim.", "learnig_rate", "learning_rate"),
        ("eval.", "baseline", "baselines"),
        ("task.", "n_mx", "n_max"),
        ("model.", "n_layers", "num_layers"),
    ],
)
def test_unknown_fields_fail_with_did_you_mean(where, field, guess):
    config = default_config()
    group = config
    for name in where.split(".")[:-1]:
        group = group[name]
    group[field] = 3
    with pytest.raises(
        ValueError,
        match=rf"config\.?{where[:-1]}: .*unknown field\(s\) \['{field}'\].*did you mean '{guess}'",
    ):
        TrainConfig.from_config(config)


def test_missing_and_bad_fields_are_named():
    fields = TrainConfig().to_dict()
    del fields["optim"]["b2"]
    with pytest.raises(ValueError, match=r"config\.optim is missing field\(s\) \['b2'\]"):
        TrainConfig.from_dict(fields)
    for field, value, message in [
        ("seed", True, r"config\.seed must be an integer >= 0, got True"),
        ("eval_every", -1, r"config\.eval_every must be an integer >= 0"),
        ("lik_weight", float("nan"), r"config\.lik_weight must be a finite number >= 0"),
        ("tensorboard", 1, r"config\.tensorboard must be a bool"),
        ("train_dims", 8, r"config\.train_dims must be a tuple of integers"),
    ]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(TrainConfig(), **{field: value})
    with pytest.raises(ValueError, match=r"config\.optim\.b1 must be a finite number in \[0\.0, 1\.0\]"):
        OptimConfig(b1=1.5)
    with pytest.raises(ValueError, match=r"config\.optim\.warmup_steps .*total_steps"):
        TrainConfig(total_steps=10, optim=OptimConfig(warmup_steps=11))
    with pytest.raises(ValueError, match=r"config\.eval\.n must be None or an integer >= 1"):
        EvalConfig(n=0)


def test_the_trainer_setup_takes_the_typed_config_without_checking_it_again(monkeypatch):
    from tgmm_jax.train import sharding
    from tgmm_jax.train import state as state_lib

    typed = TrainConfig.from_config(train_config.get_config())

    def refuse(*args):
        raise AssertionError("checked twice")

    monkeypatch.setattr(TrainConfig, "__post_init__", refuse)
    training = state_lib.build_training(typed, sharding.make_mesh())
    assert training.spec is typed.task and training.model_config is typed.model
