"""A seconds-sized training config for trainer tests (``--config=tests/train_config.py``)."""

from tgmm_jax.train.config import default_config, model_group


def get_config(arg=None):
    del arg
    c = default_config()
    c.seed = 1
    c.total_steps = 12
    c.tasks_per_k = 4
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 5
    c.keep_checkpoints = 2
    c.objective = "est_matched"
    c.tensorboard = False
    c.task.dim = 2
    c.task.ks = (2, 3)
    c.task.n_max = 8
    c.model = model_group("tiny", backbone="set", num_layers=1, width=16, num_heads=2, task_embed_dim=8)
    c.eval.tasks_per_k = 4
    c.eval.baselines = ()
    return c
