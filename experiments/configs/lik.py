"""The objective switch (the rebuttal's TGMM(lik)): ``:objective=lik`` (default), ``est``, ``est_matched``,
``est+lik``; other args as paper.py, e.g. ``--config=experiments/configs/lik.py:objective=est+lik,d=8``."""

from experiments.configs import paper


def get_config(arg: str | None = None):
    args = dict(kv.split("=", 1) for kv in arg.split(",")) if arg else {}
    objective = args.pop("objective", "lik")
    config = paper.get_config(",".join(f"{k}={v}" for k, v in args.items()) or None)
    config.objective = objective
    return config
