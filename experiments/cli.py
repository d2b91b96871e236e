"""Console-script entry points (``[project.scripts]`` in pyproject.toml) for the command-line tools.

Each one runs its module's absl ``main`` exactly as ``python -m experiments.<module>`` does:
``tgmm-train`` is ``python -m experiments.train``, ``tgmm-evaluate`` is ``python -m experiments.evaluate``,
``tgmm-fit`` is ``python -m experiments.fit`` and ``tgmm-export`` is ``python -m experiments.export_pretrained``.
The module is imported only when its command runs, so one command defines only its own flags.
"""

from __future__ import annotations

from absl import app


def train() -> None:
    from experiments import train as module

    app.run(module.main)


def evaluate() -> None:
    from experiments import evaluate as module

    app.run(module.main)


def fit() -> None:
    from experiments import fit as module

    app.run(module.main_and_exit, flags_parser=module._parse_flags)  # one-line usage errors, fast exit


def export() -> None:
    from experiments import export_pretrained as module

    app.run(module.main)
