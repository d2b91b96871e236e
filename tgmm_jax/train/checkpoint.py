"""Orbax checkpoints of the train state, with the resolved config saved beside every step."""

from __future__ import annotations

import json
from typing import Self

import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, empty or unreadable."""


class Checkpoints:
    """``workdir/checkpoints``: save every n steps (async), keep the last k, restore the latest."""

    def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3, read_only: bool = False):
        path = epath.Path(directory)
        self.directory = path if "://" in str(directory) else path.resolve()  # local paths made absolute
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else save_every,
            max_to_keep=None if read_only else keep,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,  # drop half-written steps left by a killed run
            enable_async_checkpointing=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, config: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
        return self.manager.save(step, args=args, force=force)

    def _step_or_latest(self, step):
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no finished checkpoint in {self.directory}")
        return step

    def restore(self, target_state, step: int | None = None):
        """Restores the state at ``step`` (default: latest) into the structure and shardings of ``target_state``."""
        step = self._step_or_latest(step)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_state))
            )
        except Exception as e:  # orbax raises many types for truncated or foreign files
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory}: {type(e).__name__}: {e}"
            ) from e
        return restored.state

    def restore_config(self, step: int | None = None) -> dict:
        step = self._step_or_latest(step)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"cannot read the config of step {step} in {self.directory}: {e}") from e
        config = restored.config
        return json.loads(config) if isinstance(config, str) else dict(config)

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
