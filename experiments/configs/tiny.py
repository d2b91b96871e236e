"""CPU-sized default: trains in a few minutes on 2 cores at d=2 and is compared with EM and spectral.

Set-transformer backbone (2 layers, width 64) and the permutation-matched loss (est_matched), Adam 2e-3,
16 tasks per K, N in [16, 32], 4000 steps: the recipe of a retired prototype (commit 91173fa), which
measured aligned l2 0.63 / 0.92 / 1.07 against EM-official's 1.27 / 1.29 / 1.45 at K = 3 / 4 / 5 on d=2
(results/prototype_matched_loss.json). Arguments for the CPU-scale
studies (experiments/study.py): ``:d=8,n=128,steps=3000``.
"""

from experiments.configs import args
from tgmm_jax.train.config import default_config, model_group


def get_config(arg: str | None = None):
    a = args.parse(arg, dict(d=2, n=32, steps=4000))
    config = default_config()
    config.seed = 0
    config.total_steps = a["steps"]
    config.tasks_per_k = 16
    config.log_every = 100
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.objective = "est_matched"
    config.task.dim = a["d"]
    config.task.n_max = a["n"]
    # the retired prototype's model: small size, set backbone, 2 layers
    config.model = model_group("small", backbone="set", num_layers=2)
    config.optim.learning_rate = 2e-3
    config.eval.tasks_per_k = 128
    config.eval.baselines = ("em", "em_kmeanspp", "spectral")
    return config
