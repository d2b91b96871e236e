"""The training loop: ``train_and_evaluate(config, workdir, baselines=...)``.

Rerunning the same command on the same workdir resumes from the latest checkpoint; the data stream
depends on (seed, step) only, so a resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from etils import epath

from tgmm_jax import scoring
from tgmm_jax.models import make_model
from tgmm_jax.tasks import sample_tasks
from tgmm_jax.train import checkpoint, restore, sharding
from tgmm_jax.train import config as config_lib
from tgmm_jax.train import state as state_lib
from tgmm_jax.train.writer import MetricWriter

# Config fields that may differ between the saved run and a resumed one: schedules of logging and saving,
# the budget, and what periodic evaluation runs (none of them changes the trained parameters).
_RESUMABLE_CHANGES = {
    "total_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "eval",
    "grad_accum_steps",  # the same batch and gradient, summed in pieces: changes parameters by rounding only
}


class NonFiniteLossError(FloatingPointError):
    pass


class _PreemptionFlag:
    """Set by SIGTERM (what schedulers and TPU maintenance send) so the loop saves and exits cleanly.

    Not installed with several processes: JAX's preemption sync manager owns SIGTERM there and names one
    step at which every process saves (``Checkpoints.reached_preemption``); a Python handler would replace
    its handler, and a process that stopped alone would leave the others waiting in a collective.
    """

    def __init__(self, install: bool = True):
        self.raised = False
        self._install = install
        self._previous = None

    def __enter__(self):
        if not self._install:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_same_run(saved: dict, config: config_lib.TrainConfig, workdir: str) -> None:
    """``saved`` (the checkpoint's config, upgraded to today's layout) trains the same parameters as ``config``;
    both are compared as typed configs, so a default written out (n_min = n_max // 2) equals one left None."""
    try:
        saved = config_lib.TrainConfig.from_dict(saved).to_dict()
    except ValueError as err:
        raise ValueError(
            f"{workdir} holds a run whose config no longer validates ({err}); use a new --workdir"
        ) from None
    current = config.to_dict()
    changed = sorted(
        k for k in set(saved) | set(current) if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        raise ValueError(
            f"{workdir} holds a run with a different config (fields {changed}); "
            "use a new --workdir, or restore the original values to resume"
        )


def _record_environment(workdir_path, start_step: int) -> None:
    """Appends where this (re)start ran to ``environment.json``: reports say which device trained a model."""
    path = workdir_path / "environment.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    devices = jax.devices()
    starts.append(
        dict(
            start_step=start_step,
            time=time.strftime("%Y-%m-%dT%H:%M:%S"),
            jax=jax.__version__,
            backend=jax.default_backend(),
            device_kind=devices[0].device_kind,
            device_count=len(devices),
            process_count=jax.process_count(),
        )
    )
    path.write_text(json.dumps(starts, indent=1))


class PeriodicEvaluator:
    """TGMM and the baselines on the same evaluation tasks (their own key stream), every eval round.

    With ``eval.fresh_tasks`` (the official protocol) each round draws new tasks from fold_in(key, step),
    so the tail mean over the last 10 rounds covers 10x the tasks; otherwise the tasks stay fixed and the
    baselines are scored once. With a ``reference`` (a name among ``baselines``), the model's entries gain
    ``learned_gain``: its paired l2 difference to the reference on the same tasks (``scoring.paired_gain``).
    """

    def __init__(
        self, model, spec, eval_config, key, baselines: Mapping[str, scoring.Method], reference=None
    ):
        self.model = scoring.model_method(model)
        self.spec = config_lib.eval_spec_from(spec, eval_config)
        self.task_key, self.method_key = jax.random.split(key)
        self.tasks_per_k = eval_config.tasks_per_k
        self.fresh = eval_config.fresh_tasks
        names = config_lib.eval_baseline_names(eval_config) + ((reference,) if reference else ())
        self.baselines = {name: baselines[name] for name in dict.fromkeys(names)}
        self.reference = reference
        self._cached: dict | None = None

    def __call__(self, params, step: int) -> dict[str, dict]:
        key = jax.random.fold_in(self.task_key, step) if self.fresh else self.task_key
        task = sample_tasks(key, self.spec, self.tasks_per_k)
        per_task = {scoring.MODEL_METHOD: self._score(self.model, params, task)}
        if self.fresh or self._cached is None:
            self._cached = {name: self._score(fn, None, task) for name, fn in self.baselines.items()}
        per_task.update(self._cached)
        summaries = {
            name: scoring.summarize(values, task.num_components) for name, values in per_task.items()
        }
        if self.reference:
            scoring.attach_gains(
                summaries, per_task, {scoring.MODEL_METHOD: self.reference}, task.num_components
            )
        return summaries

    def _score(self, fn, params, task):
        return scoring.score_method(fn, params, self.method_key, task)[0]


def _eval_record(summaries: dict) -> dict:
    """Flat {method/K=k/metric: mean} for metrics.jsonl and TensorBoard."""
    record = {}
    for method, summary in summaries.items():
        for k, entry in summary.items():
            for metric in ("l2", "l2_means", "l2_weights", "cluster_acc", "oracle_gap", "l2_official"):
                record[f"{method}/K={k}/{metric}"] = entry[metric]["mean"]
            record[f"{method}/K={k}/not_applicable"] = entry["not_applicable"]
            if "learned_gain" in entry:
                record[f"{method}/K={k}/learned_gain"] = entry["learned_gain"]["mean"]
    return record


def _window_means(state) -> tuple[dict, float]:
    sums = jax.device_get(state.metric_sums)
    n = int(jax.device_get(state.window_steps))
    means = {name: float(v) / n for name, v in sums.items() if name != state_lib._NONFINITE}
    return means, float(sums[state_lib._NONFINITE])


def _warm_start(state, config: config_lib.TrainConfig, tx, mesh):
    """The train state at step 0 with ``config.init_from``'s parameters (same parameter shapes, except the
    K-indexed tables when the config's ks extend the checkpoint's: ``state.warm_started``)."""
    from tgmm_jax.pretrained import load_checkpoint  # imported here: the loader imports the trainer's modules

    source = load_checkpoint(config.init_from)
    return state_lib.warm_started(
        state, source.params, config.init_from, tx, mesh, source.spec.ks, tuple(config.task.ks)
    )


def train_and_evaluate(
    config: config_lib.TrainConfig | ml_collections.ConfigDict,
    workdir: str,
    *,
    baselines: Mapping[str, scoring.Method] | None = None,
    reference: str | None = None,
    distributed: str = "auto",
) -> dict:
    """Trains (resuming from ``workdir`` if it holds checkpoints); returns the last evaluation summaries.

    ``config`` is a ``TrainConfig``, or the ConfigDict of the command line, checked here once.

    ``baselines`` ({name: method}, see ``tgmm_jax.scoring``) must hold every name of ``config.eval.baselines``
    when periodic evaluation is on; ``experiments/methods.py`` builds them from the baselines registry.
    ``reference``, a name among ``baselines``, is the parameter-free method the model's learned gain is
    measured against in every evaluation (``experiments.methods.reference_for``).
    """
    config = config_lib.as_train_config(config)
    spec = config.task
    if config.eval_every:
        config_lib.check_eval_baselines(config.eval, baselines or {})
        if reference is not None and reference not in (baselines or {}):
            raise ValueError(f"reference {reference!r} is not among the baselines {sorted(baselines or {})}")
    sharding.maybe_initialize_distributed(distributed)
    mesh = sharding.make_mesh()
    sharding.check_divisible(spec.batch_size(config.tasks_per_k), mesh, config.grad_accum_steps)
    is_main = jax.process_index() == 0

    workdir_path = epath.Path(workdir)  # local path or an object store such as gs://
    workdir_path.mkdir(parents=True, exist_ok=True)
    config_json = config.to_dict()
    ckpts = checkpoint.Checkpoints(
        workdir_path / "checkpoints", save_every=config.checkpoint_every, keep=config.keep_checkpoints
    )
    try:  # the orbax manager's threads are closed on every way out, errors included
        if ckpts.latest_step() is not None:
            _check_same_run(restore.upgrade_saved_config(ckpts.restore_config()), config, workdir)
        if is_main:
            (workdir_path / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))
            _record_environment(workdir_path, ckpts.latest_step() or 0)

        training = state_lib.build_training(config, mesh)
        state, step_fns, eval_key = training.state, training.step_fns, training.eval_key
        writer = MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard)

        start_step = 0
        if ckpts.latest_step() is not None:
            state = ckpts.restore(state)
            start_step = int(jax.device_get(state.step))
            writer.truncate_after(start_step)
            writer.message(f"resumed from step {start_step} in {ckpts.directory}")
        elif config.init_from:
            state = _warm_start(state, config, training.tx, mesh)
            writer.message(f"step 0 starts from the parameters of {config.init_from}")

        evaluator = (
            PeriodicEvaluator(
                make_model(config.eval_model_config(), spec),
                spec,
                config.eval,
                eval_key,
                baselines or {},
                reference,
            )
            if config.eval_every
            else None
        )
        data_key = training.data_key
        summaries: dict = {}

        def stop_if_nonfinite(step):
            means, nonfinite = _window_means(state)
            if nonfinite or not np.isfinite(means["loss"]):
                ckpts.wait()
                writer.close()
                raise NonFiniteLossError(
                    f"non-finite loss in steps {step - int(jax.device_get(state.window_steps)) + 1}..{step}; "
                    f"stopping without saving (the last good checkpoint, step {ckpts.latest_step()}, is intact)"
                )
            return means

        step = start_step
        multi_process = jax.process_count() > 1
        with _PreemptionFlag(install=not multi_process) as preemption:
            window_start, window_step0 = time.perf_counter(), start_step
            for step in range(start_step + 1, config.total_steps + 1):
                state = step_fns[(step - 1) % len(step_fns)](state, data_key)
                last = step == config.total_steps
                record = {}
                if step % config.log_every == 0 or last:
                    means = stop_if_nonfinite(step)
                    now = time.perf_counter()
                    steps_per_sec = (step - window_step0) / max(now - window_start, 1e-9)
                    window_start, window_step0 = now, step
                    record.update(train=means, steps_per_sec=steps_per_sec)
                    writer.progress(step, config.total_steps, means["loss"], steps_per_sec)
                if evaluator is not None and (step % config.eval_every == 0 or last):
                    summaries = evaluator(state.params, step)
                    record["eval"] = _eval_record(summaries)
                if record:
                    writer.write(step, record)
                # host-local checks, no device sync: a flag, and the sync manager's agreed step
                preempted = preemption.raised or (multi_process and ckpts.reached_preemption(step))
                if step % config.checkpoint_every == 0 or last or preempted:
                    stop_if_nonfinite(step)
                    ckpts.save(step, state, config_json, force=True)
                if preempted:
                    writer.message(
                        f"preempted at step {step}: checkpoint saved, exiting; rerun the command to resume"
                    )
                    break
        ckpts.wait()
    finally:
        ckpts.close()
    if evaluator is not None and not summaries:  # nothing left to train: evaluate the restored state
        summaries = evaluator(state.params, step)
    writer.close()
    return summaries
