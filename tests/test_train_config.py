"""The training config's model group: the paper configs validate, backbone options are a nested group that
the command line can set, and the backbone's own check on the number of points runs from validate_config."""

import importlib

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest
from absl import flags
from ml_collections import config_flags

from tgmm_jax.models import BACKBONES
from tgmm_jax.models.options import Mamba2Options
from tgmm_jax.train.config import model_group, validate_config


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
