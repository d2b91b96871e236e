"""Trains ``KPosterior`` (tgmm_jax/models/k_posterior.py), a learned P(K | X), by the cross-entropy of the true K.

    python -m experiments.train_k_posterior --workdir=runs/k_posterior --steps=6000

The project trainer (tgmm_jax/train/) is built around the parameter-estimation model (its state, losses,
periodic evaluation against baselines), so this is a compact loop of its own: AdamW with a warmup + cosine
schedule (``tgmm_jax.train.state.make_optimizer``), one jitted step that samples its batch from
(seed, step) alone, orbax checkpoints through ``tgmm_jax.train.checkpoint.Checkpoints`` and
``metrics.jsonl`` through ``MetricWriter``. Rerunning the same command resumes from the latest checkpoint
and, since the data depend on (seed, step) only, continues exactly as an uninterrupted run would.
``--init_from=WORKDIR`` starts from another run's latest parameters, or from an exported K posterior such as the
shipped ``tgmm_jax/pretrained/k_posterior`` (a fresh optimizer and schedule), e.g. to fine-tune on more
dimensions (use another ``--seed`` so the data stream differs from that run's). A larger ``--num_layers`` than
the source's grows the backbone: the new blocks start as the identity (``merge_params``).

Task prior (``task_spec``): ``TaskSpec(dim, ks=(1..k_max), n_max, n_min, cos_threshold=1.0)``: Algorithm 1
(weights sort(U[0.2, 0.8]^K) normalised, means U[-5, 5]^D, unit isotropic noise) without the cosine filter
of the means, which cannot place 8 means at D = 2; N ~ U{n_min..n_max}; every batch holds ``tasks_per_k``
tasks of each K (so K is uniform on 1..k_max); D cycles over ``--dims`` by step.
"""

from __future__ import annotations

import json
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath

from tgmm_jax.models.k_posterior import KPosterior, k_cross_entropy, k_posterior_config
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.train.checkpoint import Checkpoints
from tgmm_jax.train.state import make_optimizer
from tgmm_jax.train.writer import MetricWriter

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs as a command, so importing this module defines none)."""
    flags.DEFINE_string("workdir", None, "Checkpoints, config.json and metrics.jsonl go here.")
    flags.DEFINE_integer("steps", 6000, "Total training steps.")
    flags.DEFINE_string("size", "small", "Model size (tgmm_jax.models.MODEL_SIZES).")
    flags.DEFINE_integer("num_layers", 0, "Override the size's number of layers (0: keep).")
    flags.DEFINE_integer("k_max", 8, "Largest K of the prior and the output.")
    flags.DEFINE_list("dims", ["2", "8"], "Data dimensions, cycled by step.")
    flags.DEFINE_integer("n_min", 32, "Smallest number of points per task.")
    flags.DEFINE_integer("n_max", 128, "Largest number of points per task.")
    flags.DEFINE_integer("tasks_per_k", 8, "Tasks of each K per batch.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
    flags.DEFINE_integer("warmup_steps", 200, "Linear warmup steps.")
    flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
    flags.DEFINE_integer("seed", 0, "Seed of the parameters and the data stream.")
    flags.DEFINE_integer("log_every", 50, "Steps between metrics.jsonl lines.")
    flags.DEFINE_integer("checkpoint_every", 250, "Steps between checkpoints.")
    flags.DEFINE_integer(
        "evidence_restarts",
        0,
        "> 0: the network also reads the likelihood evidence (tgmm_jax/k_evidence.py: the best of this many "
        "tied-spherical EM fits per K); 0: the set network alone.",
    )
    flags.DEFINE_integer("evidence_steps", 30, "EM iterations of each evidence fit.")
    flags.DEFINE_bool(
        "evidence_geometry",
        False,
        "With --evidence_restarts: also read the geometry of each K's fit (separation, smallest count, "
        "variance; tgmm_jax.models.k_posterior.fit_geometry).",
    )
    flags.DEFINE_bool(
        "noise_head",
        False,
        "With --evidence_restarts: a zero-initialised head that reads each K's fitted variance against the "
        "known noise variance (the prior's, 1), for n_components='auto' with a known noise_variance.",
    )
    flags.DEFINE_bool(
        "train_noise_head_only",
        False,
        "With --noise_head and --init_from: train the noise head alone (every other parameter frozen), so the "
        "model without a known noise answers as the source.",
    )
    flags.DEFINE_string(
        "init_from",
        "",
        "Start from the parameters of this run's latest checkpoint, or of an exported K posterior (a "
        "directory with k_posterior.json, e.g. tgmm_jax/pretrained/k_posterior) (same model; a fresh "
        "optimizer and schedule): fine-tuning, e.g. on more dimensions.",
    )


_RESUMABLE = ("steps", "log_every")  # may change on resume (the cosine schedule follows ``steps``)


def task_spec(
    dim: int, k_max: int = 8, n_max: int = 128, n_min: int = 32, variable_n: bool = True
) -> TaskSpec:
    """The prior over tasks (module docstring)."""
    return TaskSpec(
        dim=dim,
        ks=tuple(range(1, k_max + 1)),
        n_max=n_max,
        n_min=n_min,
        cos_threshold=1.0,
        variable_n=variable_n,
    )


def run_config() -> dict:
    if FLAGS.evidence_geometry and FLAGS.evidence_restarts < 1:
        raise app.UsageError("--evidence_geometry reads the evidence's fits: give --evidence_restarts >= 1")
    if FLAGS.noise_head and FLAGS.evidence_restarts < 1:
        raise app.UsageError("--noise_head reads the evidence's fits: give --evidence_restarts >= 1")
    if FLAGS.train_noise_head_only and not (FLAGS.noise_head and FLAGS.init_from):
        raise app.UsageError("--train_noise_head_only needs --noise_head and an --init_from to freeze")
    return {
        "size": FLAGS.size,
        "num_layers": FLAGS.num_layers,
        "k_max": FLAGS.k_max,
        "dims": [int(d) for d in FLAGS.dims],
        "n_min": FLAGS.n_min,
        "n_max": FLAGS.n_max,
        "tasks_per_k": FLAGS.tasks_per_k,
        "learning_rate": FLAGS.learning_rate,
        "warmup_steps": FLAGS.warmup_steps,
        "weight_decay": FLAGS.weight_decay,
        "seed": FLAGS.seed,
        "steps": FLAGS.steps,
        **({"init_from": FLAGS.init_from} if FLAGS.init_from else {}),  # absent: runs saved before it resume
        **(
            {"evidence_restarts": FLAGS.evidence_restarts, "evidence_steps": FLAGS.evidence_steps}
            if FLAGS.evidence_restarts
            else {}
        ),
        **({"evidence_geometry": True} if FLAGS.evidence_geometry else {}),
        **({"noise_head": True} if FLAGS.noise_head else {}),
        **({"train_noise_head_only": True} if FLAGS.train_noise_head_only else {}),
    }


def build_model(cfg: dict) -> KPosterior:
    overrides = {"num_layers": cfg["num_layers"]} if cfg.get("num_layers") else {}
    return KPosterior(
        k_posterior_config(cfg["size"], cfg["k_max"], **overrides),
        cfg["k_max"],
        evidence_restarts=cfg.get("evidence_restarts", 0),
        evidence_steps=cfg.get("evidence_steps", 30),
        evidence_geometry=bool(cfg.get("evidence_geometry", False)),
        noise_head=bool(cfg.get("noise_head", False)),
    )


def is_noise_head(path) -> bool:
    """Whether a parameter (its key path) belongs to the noise head (``KPosterior._noise_logits``)."""
    return jax.tree_util.keystr(path).startswith("['params']['noise_")


_BACKBONE_BLOCK = re.compile(r"\['backbone'\]\['blocks_(\d+)'\]")
_RESIDUAL_OUT = re.compile(r"\['(attn|mlp)'\]\['out'\]\['(kernel|bias)'\]$")


def merge_params(params_from, params_init, source: str):
    """``params_init`` with every leaf of ``params_from`` (same path, same shape) put in, so the merged model
    answers as ``source`` did. Two kinds of layers may be new, and both start as no-ops:
      * the evidence's and the noise head's layers (a run of the set network starts one that also reads the
        evidence, or one with the evidence starts one with the noise head; their output layers are
        zero-initialised);
      * backbone blocks beyond the source's (a deeper network grown from a shallower one): their two residual
        output projections are set to zero, so each new block is the identity until training moves it.
    Any other difference is an error naming the paths."""
    got = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params_from)}
    want = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params_init)}
    bad = sorted(p for p in got if p not in want or np.shape(got[p]) != np.shape(want[p]))
    new = sorted(p for p in want if p not in got)
    source_blocks = {int(m.group(1)) for p in got if (m := _BACKBONE_BLOCK.search(p))}
    grown = {
        p
        for p in new
        if (m := _BACKBONE_BLOCK.search(p)) and int(m.group(1)) > max(source_blocks, default=-1)
    }
    if bad or any("evidence_" not in p and "['noise_" not in p and p not in grown for p in new):
        raise ValueError(
            f"--init_from={source!r} holds another model: parameters it has that this one lacks or shapes "
            f"differently: {bad[:5]}; parameters of this one it lacks: {new[:5]}"
        )

    def pick(path, init_value):
        key = jax.tree_util.keystr(path)
        if key in got:
            return got[key]
        if key in grown and _RESIDUAL_OUT.search(key):
            return jnp.zeros_like(init_value)
        return init_value

    return jax.tree_util.tree_map_with_path(pick, params_init)


def make_tx(cfg: dict):
    optim = ml_collections.ConfigDict(
        dict(
            learning_rate=cfg["learning_rate"],
            schedule="cosine",
            warmup_steps=cfg["warmup_steps"],
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=cfg["weight_decay"],
            grad_clip_norm=1.0,
        )
    )
    return make_optimizer(optim, cfg["steps"])


def init_state(cfg: dict, model: KPosterior, tx) -> dict:
    """Step 0: fresh parameters, or (``init_from``) those of another run of the same model."""
    dim = cfg["dims"][0]
    params = model.init(
        jax.random.PRNGKey(cfg["seed"]), jnp.zeros((1, cfg["n_max"], dim)), jnp.ones((1, cfg["n_max"]), bool)
    )
    if cfg.get("init_from"):
        params = merge_params(load_source(cfg["init_from"])[1], params, cfg["init_from"])
    return {"step": jnp.int32(0), "params": params, "opt_state": tx.init(params)}


def make_step(cfg: dict, model: KPosterior, tx, spec: TaskSpec):
    """state -> (state, loss, accuracy) on the batch of step ``state['step']`` (sampled from (seed, step))."""
    data_key = jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 1)
    frozen = bool(cfg.get("train_noise_head_only", False))

    @jax.jit
    def step_fn(state):
        task = sample_tasks(jax.random.fold_in(data_key, state["step"]), spec, cfg["tasks_per_k"])

        def loss_fn(params):
            # the prior's noise variance is 1: a model with the noise head is trained knowing it
            noise_B = jnp.ones(task.points.shape[:1]) if model.noise_head else None
            log_probs = model.apply(params, task.points, task.point_mask, noise_B)
            acc = jnp.mean(jnp.argmax(log_probs, -1) + 1 == task.num_components)
            return k_cross_entropy(log_probs, task.num_components), acc

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        if frozen:  # neither the gradient (nor its clipping norm) nor AdamW's weight decay touches them
            grads = jax.tree_util.tree_map_with_path(
                lambda p, g: g if is_noise_head(p) else jnp.zeros_like(g), grads
            )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        if frozen:
            updates = jax.tree_util.tree_map_with_path(
                lambda p, u: u if is_noise_head(p) else jnp.zeros_like(u), updates
            )
        params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, loss, acc

    return step_fn


def train(workdir: str, cfg: dict, checkpoint_every: int = 250, stop_after: int | None = None) -> dict:
    """Runs (or resumes) to ``cfg['steps']`` (or stops, checkpointed, after step ``stop_after``); returns the state."""
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    model, tx = build_model(cfg), make_tx(cfg)
    state = init_state(cfg, model, tx)
    writer = MetricWriter(workdir, tensorboard=False)
    with Checkpoints(str(workdir_path / "checkpoints"), save_every=checkpoint_every, keep=2) as ckpt:
        start = ckpt.latest_step()
        if start is not None:
            saved = ckpt.restore_config(start)
            changed = sorted(k for k in cfg if k not in _RESUMABLE and saved.get(k) != cfg[k])
            if changed:
                raise ValueError(
                    f"{workdir} holds a different run (fields {changed} differ); use a new workdir"
                )
            state = ckpt.restore(state, start)
            writer.truncate_after(start)
            writer.message(f"resumed at step {start}")
        (workdir_path / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
        dims = cfg["dims"]
        steps = {
            d: make_step(cfg, model, tx, task_spec(d, cfg["k_max"], cfg["n_max"], cfg["n_min"])) for d in dims
        }
        losses, accs, t0, t_log = [], [], time.time(), time.time()
        step = int(state["step"])
        first = step
        end = cfg["steps"] if stop_after is None else min(stop_after, cfg["steps"])
        while step < end:
            state, loss, acc = steps[dims[step % len(dims)]](state)
            step += 1
            losses.append(loss)
            accs.append(acc)
            if step % cfg.get("log_every", 50) == 0 or step == cfg["steps"]:
                loss_v, acc_v = float(np.mean(jax.device_get(losses))), float(np.mean(jax.device_get(accs)))
                if not np.isfinite(loss_v):
                    raise FloatingPointError(f"non-finite loss at step {step}")
                now = time.time()
                rate = len(losses) / max(now - t_log, 1e-9)
                writer.write(
                    step, {"loss": loss_v, "k_accuracy": acc_v, "steps_per_sec": rate, "wall_s": now - t0}
                )
                writer.progress(step, cfg["steps"], loss_v, rate)
                losses, accs, t_log = [], [], now
            ckpt.save(step, state, cfg, force=step == end)
        ckpt.wait()
        writer.message(f"trained steps {first}..{step} in {time.time() - t0:.0f} s")
    writer.close()
    return state


def load_source(source: str):
    """(model, params) of a training run's latest checkpoint, or of an exported K posterior (a directory
    holding ``k_posterior.json`` and ``k_posterior.msgpack``, e.g. the shipped tgmm_jax/pretrained/k_posterior,
    whose training runs are not kept): what ``--init_from`` names."""
    from tgmm_jax.number_of_components import CONFIG_FILE, load_k_posterior

    if (epath.Path(source) / CONFIG_FILE).exists():
        ckpt = load_k_posterior(source)
        return ckpt.model, ckpt.params
    model, params, _ = load(source)
    return model, params


def load(workdir: str, step: int | None = None):
    """(model, params, config) of a trained run."""
    with Checkpoints(str(epath.Path(workdir) / "checkpoints"), read_only=True) as ckpt:
        cfg = ckpt.restore_config(step)
        model, tx = build_model(cfg), make_tx(cfg)
        state = ckpt.restore(init_state({**cfg, "init_from": ""}, model, tx), step)
    return model, state["params"], cfg


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    train(FLAGS.workdir, {**run_config(), "log_every": FLAGS.log_every}, FLAGS.checkpoint_every)


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
