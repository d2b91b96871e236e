"""Meta-trains TGMM: ``python -m experiments.train --config=experiments/configs/tiny.py --workdir=runs/tiny``.

``--config=FILE:arg`` passes ``arg`` to the file's ``get_config``; ``--config.field=value`` overrides any
field. Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.methods import train
from tgmm_jax.train.config import TrainConfig

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and metrics.jsonl.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize(): auto-detect multi-host, force, or skip.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO; our progress goes to stdout
    config = TrainConfig.from_config(_CONFIG.value)  # checked once, here; the trainer takes the typed config
    train(config, _WORKDIR.value, distributed=_DISTRIBUTED.value)


if __name__ == "__main__":
    app.run(main)
