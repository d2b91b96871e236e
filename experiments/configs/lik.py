"""The objective switch (the rebuttal's TGMM(lik)): ``:objective=lik`` (default), ``est``, ``est_matched``,
``est+lik``; other args as paper.py, e.g. ``--config=experiments/configs/lik.py:objective=est+lik,d=8``."""

from experiments.configs import args, paper


def get_config(arg: str | None = None):
    a = args.parse(arg, dict(objective="lik", d=8, n=128))
    config = paper.get_config(f"d={a['d']},n={a['n']}")
    config.objective = a["objective"]
    return config
