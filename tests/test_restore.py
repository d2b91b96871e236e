"""Checkpoints saved before the backbone registry (flat max_positions / mamba_* model fields) still load and
give the outputs recorded when they were saved (tests/data/pre_registry_checkpoints, made at fdeec3c)."""

import json
import os

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np
import pytest

from tgmm_jax.train.restore import load_run, upgrade_saved_config

DATA = os.path.join(os.path.dirname(__file__), "data", "pre_registry_checkpoints")


@pytest.mark.parametrize("backbone", ["gpt2", "mamba2"])
@pytest.mark.slow
def test_checkpoint_of_the_flat_config_layout_loads_and_gives_the_saved_outputs(backbone):
    with open(os.path.join(DATA, backbone, "config.json")) as f:
        assert "backbone_options" not in json.load(f)["model"]  # the fixture really is the old layout
    run = load_run(os.path.join(DATA, backbone))
    assert run.step == 2 and run.model_config.backbone == backbone
    ref = np.load(os.path.join(DATA, f"{backbone}_outputs.npz"))
    out = run.model.apply({"params": run.params}, ref["points"], ref["point_mask"], ref["num_components"])
    np.testing.assert_allclose(out.weight_logits, ref["weight_logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.means, ref["means"], rtol=1e-5, atol=1e-6)


def test_upgrade_moves_the_flat_fields_of_the_backbone_and_drops_the_others():
    flat = {
        "max_positions": 64,
        "mamba_heads": 4,
        "mamba_head_dim": None,
        "mamba_state": 8,
        "mamba_groups": 2,
        "mamba_expand": 4,
        "mamba_conv": 4,
        "mamba_chunk": 16,
    }
    saved = {"seed": 1, "model": {"backbone": "mamba2", "width": 16, **flat}}
    upgraded = upgrade_saved_config(saved)
    assert upgraded == {
        "seed": 1,
        "resp_weight": 0.0,  # fields added since: the values that reproduce the older runs
        "train_dims": (),
        "grad_accum_steps": 1,
        "init_from": "",
        "target_pool": "",
        "missing_rate_max": 0.0,
        "model": {
            "readin": "raw",
            "project_rank": 6,
            "cluster_iters": 3,
            "slot_attention": True,
            "em_logits": True,
            "slot_init": "learned",
            "cluster_correction": False,
            "noise": "unit",
            "readin_mask": False,
            "backbone": "mamba2",
            "width": 16,
            "backbone_options": {
                "heads": 4,
                "head_dim": None,
                "state": 8,
                "groups": 2,
                "expand": 4,
                "conv": 4,
                "chunk": 16,
            },
        },
    }
    assert saved["model"]["mamba_heads"] == 4  # the input is not changed
    added = {
        k: upgraded["model"][k]
        for k in (
            "readin",
            "project_rank",
            "cluster_iters",
            "slot_attention",
            "em_logits",
            "slot_init",
            "cluster_correction",
            "noise",
            "readin_mask",
        )
    }
    gpt2 = upgrade_saved_config({"model": {"backbone": "gpt2", **flat}})
    assert gpt2["model"] == {**added, "backbone": "gpt2", "backbone_options": {"max_positions": 64}}
    assert upgrade_saved_config({"model": {"backbone": "set", **flat}})["model"] == {
        **added,
        "backbone": "set",
        "backbone_options": {},
    }
    assert upgrade_saved_config(upgraded) == upgraded  # today's layout passes through
    # a task saved before cos_filter_max_k: every K filtered, as then
    task = upgrade_saved_config({"task": {"dim": 2, "cos_threshold": 0.8}})["task"]
    assert task == {"cos_filter_max_k": None, "dim": 2, "cos_threshold": 0.8}
