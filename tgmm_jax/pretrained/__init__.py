"""Pretrained TGMM checkpoints shipped inside the package: ``load_pretrained(name)`` never touches the network.

A checkpoint is a directory ``tgmm_jax/pretrained/NAME/`` (or anywhere, for ``load_exported(path)``) holding
  params.msgpack   the parameter pytree (``flax.serialization.msgpack_serialize``), float32
  config.json      {"format": 1, "model": ModelConfig.to_dict(), "task": TaskSpec fields, "step", "source"}
  MODEL_CARD.md    config, steps, device, wall time, evaluation table (written by experiments/export_pretrained.py)
``save_exported`` writes one; ``experiments/export_pretrained.py`` calls it on an orbax workdir. The default
checkpoint of ``TGMMEstimator`` is ``DEFAULT`` (the dimension-free clustering model, which serves every d).

A checkpoint that cannot be read raises ``CheckpointLoadError`` (a ValueError) naming the file, and
``$TGMM_CHECKPOINT_DIR`` when that is where the path came from. Every loader returns a ``Checkpoint``
(``tgmm_jax.trained``), the record ``train.restore.load_run`` returns too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import numpy as np
from flax import serialization

from tgmm_jax import export_cache
from tgmm_jax.models import TGMM, ModelConfig, make_model
from tgmm_jax.tasks import TaskSpec
from tgmm_jax.trained import Checkpoint

DEFAULT = "cluster"
ENV_CHECKPOINT = "TGMM_CHECKPOINT_DIR"  # the user's own workdir, used for checkpoint="pretrained" when set
FORMAT = 1
PARAMS_FILE, CONFIG_FILE, CARD_FILE = "params.msgpack", "config.json", "MODEL_CARD.md"
_HERE = os.path.dirname(os.path.abspath(__file__))


class CheckpointLoadError(ValueError):
    """A checkpoint is missing or unreadable; the message names the file (and ``$TGMM_CHECKPOINT_DIR``
    when the path came from it)."""


def available() -> list[str]:
    """Names of the checkpoints shipped in this package."""
    return sorted(
        n
        for n in os.listdir(_HERE)
        if os.path.isfile(os.path.join(_HERE, n, CONFIG_FILE)) and n != "__pycache__"
    )


def pretrained_path(name: str) -> str:
    """The directory of the shipped checkpoint ``name`` (ValueError naming the shipped ones if absent)."""
    names = available()
    if name not in names:
        raise ValueError(f"no pretrained checkpoint named {name!r} in {_HERE}; shipped: {names or 'none'}")
    return os.path.join(_HERE, name)


def load_pretrained(name: str = DEFAULT) -> Checkpoint:
    """The shipped checkpoint ``name`` (see ``available()``), read from the package directory only."""
    return load_exported(pretrained_path(name), name=name)


def fitting(k: int) -> list[str]:
    """Shipped dimension-free checkpoints trained on ``k`` components (read from their config.json only): what
    an error or warning about an untrained K can suggest."""
    names = []
    for name in available():
        meta = _read_config(os.path.join(_HERE, name, CONFIG_FILE))
        if ModelConfig.from_dict(meta["model"]).dimension_free and int(k) in meta["task"].get("ks", ()):
            names.append(name)
    return names


def _spec_from(fields: dict) -> TaskSpec:
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    return TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known})


def load_exported(directory: str, name: str | None = None) -> Checkpoint:
    """A checkpoint directory written by ``save_exported``; parameters are checked against the model's tree."""
    config_path, params_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, PARAMS_FILE)
    if not (os.path.isfile(config_path) and os.path.isfile(params_path)):
        raise CheckpointLoadError(
            f"{directory} is not an exported checkpoint (needs {CONFIG_FILE} and {PARAMS_FILE})"
        )
    meta = _read_config(config_path)
    try:
        model_config = ModelConfig.from_dict(meta["model"])
        spec = _spec_from(meta["task"])
        model = make_model(model_config, spec)
    except Exception as e:  # a config that parses as JSON but describes no model: name the file
        raise CheckpointLoadError(f"{config_path}: invalid checkpoint config ({_describe(e)})") from e
    try:
        with open(params_path, "rb") as f:
            restored = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises ValueError/TypeError/its own errors on truncated or foreign data
        raise CheckpointLoadError(
            f"{params_path}: cannot read the parameters, the file is truncated or not a msgpack checkpoint "
            f"({_describe(e)})"
        ) from e
    got_paths = {
        jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(restored)
    }
    want_paths = _param_shapes(model, spec)
    if got_paths != want_paths:
        diff = sorted(set(got_paths.items()) ^ set(want_paths.items()))[:5]
        raise CheckpointLoadError(
            f"{params_path} does not match the model its config describes; first differences: {diff}"
        )
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), restored)
    return Checkpoint(name or directory, model_config, spec, model, params, meta.get("step"))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _read_config(config_path: str) -> dict:
    try:
        with open(config_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise CheckpointLoadError(f"{config_path}: cannot read the checkpoint config ({_describe(e)})") from e
    if not isinstance(meta, dict):
        raise CheckpointLoadError(f"{config_path}: the checkpoint config is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointLoadError(
            f"{config_path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})"
        )
    for key in ("model", "task"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointLoadError(f"{config_path}: the checkpoint config has no {key!r} object")
    return meta


def _param_shapes(model: TGMM, spec: TaskSpec) -> dict[str, tuple[int, ...]]:
    """The parameter shapes the model expects ({key path: shape}), from an abstract init (tracing the model:
    ~0.5 s); kept by ``tgmm_jax.export_cache`` when it is on (``experiments.fit``), keyed by the model."""

    def compute():
        expected = _abstract_params(model, spec)
        return {
            jax.tree_util.keystr(p): list(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(expected)
        }

    shapes = export_cache.memo_json("param_shapes", [repr(model), repr(spec)], compute)
    return {path: tuple(shape) for path, shape in shapes.items()}


def _abstract_params(model: TGMM, spec: TaskSpec):
    k = spec.k_max
    points = jax.ShapeDtypeStruct((1, k, spec.dim), np.float32)
    mask = jax.ShapeDtypeStruct((1, k), bool)
    num = jax.ShapeDtypeStruct((1,), np.int32)
    return jax.eval_shape(lambda p, m, n: model.init(jax.random.key(0), p, m, n)["params"], points, mask, num)


def save_exported(
    directory: str,
    model_config: ModelConfig,
    spec: TaskSpec,
    params,
    *,
    step: int | None = None,
    source: str | None = None,
    card: str | None = None,
) -> str:
    """Writes ``params`` (float32) + config.json (+ MODEL_CARD.md when ``card`` is given) into ``directory``."""
    meta = {
        "format": FORMAT,
        "model": model_config.to_dict(),
        "task": dataclasses.asdict(spec),
        "step": step,
        "source": source,
    }
    return write_files(directory, params, meta, card)


def write_files(
    directory: str,
    params,
    meta: dict,
    card: str | None = None,
    params_file: str = PARAMS_FILE,
    config_file: str = CONFIG_FILE,
) -> str:
    """Writes ``params`` (float32 msgpack), ``meta`` (JSON) and, when given, the model card into ``directory``:
    the files of a shipped network (``save_exported``; the K posterior's, under its own file names)."""
    os.makedirs(directory, exist_ok=True)
    params = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), params)
    with open(os.path.join(directory, params_file), "wb") as f:
        f.write(serialization.msgpack_serialize(params))
    with open(os.path.join(directory, config_file), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    if card is not None:
        with open(os.path.join(directory, CARD_FILE), "w") as f:
            f.write(card)
    return directory


# ----------------------------------------------------------------------------------------------------
# Checkpoints: "pretrained" (TGMM_CHECKPOINT_DIR or the shipped default), a shipped name, or a path.


def load_checkpoint(checkpoint="pretrained") -> Checkpoint:
    """``"pretrained"``: the workdir in ``$TGMM_CHECKPOINT_DIR`` if set, else the shipped ``DEFAULT``;
    a shipped name (``available()``); or a path: an orbax training workdir or an exported directory."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be 'pretrained', a shipped name or a path, got {checkpoint!r}")
    if checkpoint == "pretrained":
        env = os.environ.get(ENV_CHECKPOINT)
        if not env:
            return _load_shipped(DEFAULT)
        try:
            return _load_path(env)
        except ValueError as e:
            raise CheckpointLoadError(f"${ENV_CHECKPOINT}={env!r} (checkpoint='pretrained'): {e}") from e
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        return _load_path(path)
    if path in available():
        return _load_shipped(path)
    raise ValueError(f"checkpoint {path!r} is neither a directory nor a shipped checkpoint ({available()})")


@functools.lru_cache(maxsize=8)
def _load_shipped(name: str) -> Checkpoint:
    return load_pretrained(name)


def _load_path(path: str) -> Checkpoint:
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, PARAMS_FILE)):
        stamp = os.path.getmtime(os.path.join(path, PARAMS_FILE))
    elif os.path.isdir(os.path.join(path, "checkpoints")):
        stamp = os.path.getmtime(os.path.join(path, "checkpoints"))
    else:
        raise CheckpointLoadError(
            f"{path} is neither a training workdir (no checkpoints/) nor an exported checkpoint"
        )
    return _load_path_cached(path, stamp)


@functools.lru_cache(maxsize=8)
def _load_path_cached(path: str, stamp: float) -> Checkpoint:
    del stamp  # part of the cache key: a workdir that saved a new checkpoint is read again
    if os.path.isfile(os.path.join(path, PARAMS_FILE)):
        return load_exported(path)
    from tgmm_jax.train.restore import load_run  # orbax only for training workdirs

    try:
        return load_run(path)
    except Exception as e:  # orbax/our restore: an empty checkpoints/, a half-written step, a foreign config
        raise CheckpointLoadError(f"{path}: cannot restore the training workdir ({_describe(e)})") from e
