"""Made the fixtures beside this file: 2 training steps of a tiny gpt2 and a tiny mamba2 model, and their outputs.

Ran once at commit fdeec3c, before the backbone registry, when ModelConfig still had the flat ``max_positions``
and ``mamba_*`` fields: the checkpoints hold that old config layout, which tests/test_restore.py loads with
today's code. Rerunning it now writes the new layout and so would no longer test the converter.

    python tests/data/pre_registry_checkpoints/make.py
"""

import os
import shutil

import numpy as np

from tests import train_config
from tgmm_jax.train import train_and_evaluate
from tgmm_jax.train.config import model_group
from tgmm_jax.train.restore import load_run

HERE = os.path.dirname(os.path.abspath(__file__))
# Options away from their defaults, so a converter that dropped one would fail to restore the parameters.
MODELS = {
    "gpt2": {"backbone": "gpt2", "max_positions": 16},
    "mamba2": {"backbone": "mamba2", "mamba_heads": 4, "mamba_state": 4, "mamba_groups": 2, "mamba_chunk": 4},
}


def reference_input():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3, 8, 2)).astype(np.float32)
    point_mask = np.arange(8)[None, :] < np.array([8, 6, 5])[:, None]
    return points, point_mask, np.array([2, 3, 2], np.int32)


def main():
    for name, overrides in MODELS.items():
        config = train_config.get_config()
        config.total_steps = 2
        config.log_every = 1
        config.eval_every = 0
        config.checkpoint_every = 2
        config.keep_checkpoints = 1
        config.model = model_group("tiny", num_layers=1, width=16, num_heads=2, task_embed_dim=8, **overrides)
        workdir = os.path.join(HERE, name)
        shutil.rmtree(workdir, ignore_errors=True)
        train_and_evaluate(config, workdir)
        run = load_run(workdir)
        points, point_mask, num_components = reference_input()
        out = run.model.apply({"params": run.params}, points, point_mask, num_components)
        np.savez(
            os.path.join(HERE, f"{name}_outputs.npz"),
            points=points,
            point_mask=point_mask,
            num_components=num_components,
            weight_logits=np.asarray(out.weight_logits),
            means=np.asarray(out.means),
        )


if __name__ == "__main__":
    main()
