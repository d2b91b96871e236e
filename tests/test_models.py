"""TGMM models: config validation, shapes for every backbone x read-out x variant, padding and order
invariance, causality, the official pooling bug, bfloat16, and a real learning test."""

import dataclasses
import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tgmm_jax.losses import compute_loss
from tgmm_jax.models import (
    BACKBONES,
    MODEL_SIZES,
    READOUTS,
    Backbone,
    BackboneOptions,
    ModelConfig,
    TGMMOutput,
    check_num_components,
    make_model,
    model_config,
)
from tgmm_jax.models.gpt2 import TransformerBackbone
from tgmm_jax.models.mamba2 import Mamba2Backbone
from tgmm_jax.models.options import BACKBONE_OPTIONS, Gpt2Options
from tgmm_jax.models.readout import AttentiveReadout
from tgmm_jax.tasks import VARIANTS, GMMTask, TaskSpec

KS = (2, 3)
DIM = 2


def _config(backbone, readout="attentive", **overrides):
    # Smaller than `tiny`, to keep compile times low; mamba2 inner width 4 * 16 = 64 = 4 heads x 16.
    base = {"num_layers": 2, "width": 16, "num_heads": 2, "task_embed_dim": 8}
    options = {"mamba2": {"heads": 4, "chunk": 3}}.get(backbone, {})
    options = {**options, **overrides.pop("backbone_options", {})}
    return model_config(
        "tiny", backbone=backbone, readout=readout, backbone_options=options, **{**base, **overrides}
    )


def _spec(variant="anisotropic", n_max=8):
    return TaskSpec(dim=DIM, ks=KS, n_max=n_max, n_min=5, variant=variant)


@functools.cache
def _task(variant="anisotropic"):
    """B = 4 tasks (K = 2, 2, 3, 3; 8, 6, 5 and 7 real points of 8), drawn with NumPy: the models read only
    points, masks and K, and building the batch by hand saves a sampler compile per test session."""
    rng = np.random.default_rng(0)
    b, n, k_max = 4, 8, max(KS)
    num_components = np.array([2, 2, 3, 3])
    component_mask = np.arange(k_max)[None, :] < num_components[:, None]
    weights = np.sort(rng.uniform(0.2, 0.8, (b, k_max)), axis=-1) * component_mask
    weights /= weights.sum(-1, keepdims=True)
    means = rng.uniform(-5, 5, (b, k_max, DIM)) * component_mask[:, :, None]
    std = 2.0 * np.log1p(np.exp(rng.uniform(-1, 1, (b, k_max, DIM))))  # the sampler's 2 softplus(.) form
    scales = np.where(component_mask[:, :, None] & (variant == "anisotropic"), std, 1.0)
    labels = np.stack([rng.choice(k_max, n, p=w) for w in weights])
    points = np.take_along_axis(means, labels[:, :, None], 1) + np.take_along_axis(
        scales, labels[:, :, None], 1
    ) * (rng.normal(size=(b, n, DIM)))
    return GMMTask(
        points=jnp.asarray(points, jnp.float32),
        point_mask=jnp.asarray(np.arange(n)[None, :] < np.array([8, 6, 5, 7])[:, None]),
        labels=jnp.asarray(labels, jnp.int32),
        weights=jnp.asarray(weights, jnp.float32),
        means=jnp.asarray(means, jnp.float32),
        scales=jnp.asarray(scales, jnp.float32),
        component_mask=jnp.asarray(component_mask),
        num_components=jnp.asarray(num_components, jnp.int32),
    )


def _key(seed):
    # XLA's RngBitGenerator compiles in about half the time of threefry; no test depends on the stream.
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _model_and_params(backbone, readout="attentive", variant="anisotropic"):
    """(model, params, jitted apply, output on _task(variant)); init and the first apply share one compile."""
    model = make_model(_config(backbone, readout), _spec(variant))
    task = _task(variant)

    @jax.jit
    def init_and_apply(key, *args):
        params = model.init(key, *args)
        return params, model.apply(params, *args)

    params, out = init_and_apply(_key(1), task.points, task.point_mask, task.num_components)
    return model, params, jax.jit(model.apply, static_argnames="train"), out


def _assert_same_output(a: TGMMOutput, b: TGMMOutput, atol=1e-5):
    np.testing.assert_allclose(a.weight_logits, b.weight_logits, atol=atol, rtol=1e-5)
    np.testing.assert_allclose(a.means, b.means, atol=atol, rtol=1e-5)
    if a.scales is not None:
        np.testing.assert_allclose(a.scales, b.scales, atol=atol, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Config.


def test_default_config_is_the_paper_model():
    c = ModelConfig()
    assert (c.backbone, c.readout, c.num_layers, c.width, c.num_heads, c.task_embed_dim) == (
        "gpt2",
        "attentive",
        12,
        128,
        4,
        128,
    )
    assert (c.mlp_ratio, c.dtype, c.official_pooling_mask_bug) == (4, "float32", False)
    assert c.backbone_options == Gpt2Options(max_positions=4096)
    m = ModelConfig(backbone="mamba2").backbone_options
    assert (m.heads, m.resolved_head_dim(128), m.state, m.groups, m.expand, m.conv) == (8, 64, 16, 2, 4, 4)
    assert model_config("paper") == c
    assert set(MODEL_SIZES) >= {"tiny", "small", "paper"}
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "field, value",
    [
        ("backbone", "lstm"),
        ("readout", "mean"),
        ("dtype", "float16"),
        ("num_layers", 0),
        ("width", 2.5),
        ("num_heads", 3),  # does not divide width 128
        ("official_pooling_mask_bug", 1),
        ("scan_layers", "yes"),
    ],
)
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


@pytest.mark.parametrize(
    "backbone, options, message",
    [
        ("mamba2", {"head_dim": 32}, "backbone_options.head_dim"),  # 8 x 32 != 4 x 128
        ("mamba2", {"groups": 3}, "backbone_options.groups"),
        ("mamba2", {"chunk": 0}, "backbone_options.chunk"),
        ("gpt2", {"max_positions": 0}, "backbone_options.max_positions"),
        ("set", {"max_positions": 64}, "unknown field"),  # gpt2's option on another backbone
        ("mamba2", Gpt2Options(), "Mamba2Options"),
    ],
)
def test_bad_backbone_options_raise_naming_the_field(backbone, options, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(backbone=backbone, backbone_options=options)


def test_a_new_backbone_is_one_entry_per_registry(monkeypatch):
    """A backbone registered by name alone (its options in the leaf registry, its module in BACKBONES) is
    configured, validated and built by the generic code."""

    @dataclasses.dataclass(frozen=True)
    class ScaleOptions(BackboneOptions):
        factor: float = 2.0

        def validate(self, width, num_heads):
            if self.factor <= 0:
                raise ValueError("backbone_options.factor must be > 0")

    class ScaleBackbone(nn.Module):
        config: ModelConfig

        def __call__(self, tokens_BxNxE, point_mask_BxN):
            return tokens_BxNxE.astype(jnp.float32) * self.config.backbone_options.factor

    monkeypatch.setitem(BACKBONE_OPTIONS, "scale", ScaleOptions)
    monkeypatch.setitem(BACKBONES, "scale", Backbone(ScaleBackbone, ScaleOptions))
    config = model_config("tiny", backbone="scale", backbone_options={"factor": 3.0})
    assert config.backbone_options == ScaleOptions(3.0)
    with pytest.raises(ValueError, match="factor"):
        model_config("tiny", backbone="scale", backbone_options={"factor": -1.0})
    task = _task()
    shapes = jax.eval_shape(
        make_model(config, _spec()).init, _key(0), task.points, task.point_mask, task.num_components
    )
    assert "backbone" not in shapes["params"] and set(shapes["params"]) == {"read_in", "read_out"}


def test_every_backbone_has_its_options_class():
    assert {name: b.options for name, b in BACKBONES.items()} == BACKBONE_OPTIONS


def test_unknown_fields_and_sizes_raise():
    with pytest.raises(ValueError, match="n_layer.*did you mean 'num_layers'"):
        ModelConfig.from_dict({"n_layer": 3})
    with pytest.raises(ValueError, match="huge"):
        model_config("huge")
    with pytest.raises(TypeError, match="TaskSpec"):
        make_model(ModelConfig(), {"dim": 2})


# ---------------------------------------------------------------------------------------------------
# Shapes and values.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.slow
def test_output_shapes_and_types(backbone, readout, variant):
    """Every combination traces (abstractly: no compile) to the documented shapes and dtypes."""
    model = make_model(_config(backbone, readout), _spec(variant))
    task = _task(variant)
    args = (task.points, task.point_mask, task.num_components)
    params = jax.eval_shape(model.init, _key(0), *args)
    out = jax.eval_shape(model.apply, params, *args)
    b, k = task.weights.shape
    assert isinstance(out, TGMMOutput)
    assert out.weight_logits.shape == (b, k) and out.weight_logits.dtype == jnp.float32
    assert out.means.shape == (b, k, DIM) and out.means.dtype == jnp.float32
    assert out.component_mask.shape == (b, k) and out.component_mask.dtype == jnp.bool_
    if variant == "isotropic":
        assert out.scales is None
    else:
        assert out.scales.shape == (b, k, DIM) and out.scales.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "backbone, readout",
    [("gpt2", "attentive"), ("set", "attentive"), ("mamba2", "attentive"), ("gpt2", "naive")],
)
@pytest.mark.slow
def test_outputs_are_finite_and_masked(backbone, readout):
    """Real init, real values, for every backbone, read-out and variant (each model init costs seconds of
    compile, so not all 12 combinations: the naive read-out is the same module on every backbone).
    The attentive models run the anisotropic variant, the naive one isotropic."""
    variant = "anisotropic" if readout == "attentive" else "isotropic"
    *_, out = _model_and_params(backbone, readout, variant)
    task = _task(variant)
    for leaf in jax.tree.leaves(out):
        assert np.all(np.isfinite(leaf))
    np.testing.assert_array_equal(out.component_mask, task.component_mask)
    est = out.to_params()
    np.testing.assert_allclose(np.sum(est.weights, axis=-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(est.weights)[~np.asarray(task.component_mask)] == 0.0)
    assert np.all(np.asarray(out.means)[~np.asarray(task.component_mask)] == 0.0)
    assert (out.scales is None) == (variant == "isotropic")
    if out.scales is not None:
        assert np.all(np.asarray(out.scales) > 0)


def _pad(points, mask, where):
    """Adds 3 padded points holding garbage (NaN, huge values) at the front, middle or end."""
    b, n, d = points.shape
    junk = 1e3 * jax.random.normal(jax.random.key(2), (b, 3, d))
    junk = junk.at[:, 0, 0].set(jnp.nan)
    cut = {"front": 0, "middle": n // 2, "end": n}[where]
    new_points = jnp.concatenate([points[:, :cut], junk, points[:, cut:]], axis=1)
    new_mask = jnp.concatenate([mask[:, :cut], jnp.zeros((b, 3), bool), mask[:, cut:]], axis=1)
    return new_points, new_mask


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.slow
def test_padded_points_do_not_change_the_estimate(backbone):
    _, params, apply, ref = _model_and_params(backbone)
    task = _task()
    for where in ("front", "middle", "end"):
        points, mask = _pad(task.points, task.point_mask, where)
        _assert_same_output(apply(params, points, mask, task.num_components), ref)


@pytest.mark.slow
def test_naive_readout_ignores_padding():
    _, params, apply, ref = _model_and_params("gpt2", "naive", "isotropic")
    task = _task("isotropic")
    points, mask = _pad(task.points, task.point_mask, "middle")
    _assert_same_output(apply(params, points, mask, task.num_components), ref)


@pytest.mark.slow
def test_set_backbone_is_invariant_to_point_order_and_gpt2_is_not():
    task = _task()
    perm = np.random.default_rng(0).permutation(task.points.shape[1])
    outs = {}
    for backbone in ("set", "gpt2"):
        _, params, apply, ref = _model_and_params(backbone)
        outs[backbone] = (
            ref,
            apply(params, task.points[:, perm], task.point_mask[:, perm], task.num_components),
        )
    _assert_same_output(*outs["set"])
    assert not np.allclose(outs["gpt2"][0].means, outs["gpt2"][1].means, atol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.slow
def test_causal_backbones_do_not_look_ahead(backbone):
    """Changing token t leaves states before t unchanged (gpt2, mamba2) and changes them for `set`."""
    config = _config(backbone)
    if backbone == "mamba2":
        module = Mamba2Backbone(config)
    else:
        module = TransformerBackbone(config, causal=backbone == "gpt2", positions=backbone == "gpt2")
    _, params, *_ = _model_and_params(backbone)
    backbone_params = {"params": params["params"]["backbone"]}  # the trained-model init, reused
    tokens = jax.random.normal(jax.random.key(0), (2, 9, config.width))
    t = 5
    changed = tokens.at[:, t].add(jax.random.normal(jax.random.key(1), (2, config.width)))
    mask = jnp.ones((2, 9), bool)
    before, after = jax.jit(jax.vmap(module.apply, in_axes=(None, 0, None)))(
        backbone_params, jnp.stack([tokens, changed]), mask
    )
    if backbone == "set":
        assert not np.allclose(before[:, :t], after[:, :t], atol=1e-4)
    else:
        np.testing.assert_allclose(before[:, :t], after[:, :t], atol=1e-6)
    assert not np.allclose(before[:, t:], after[:, t:], atol=1e-4)


@pytest.mark.slow
def test_scanned_and_unrolled_layers_compute_the_same():
    """models/stack.py serves both backbones; checked on gpt2."""
    config = _config("gpt2", scan_layers=False)
    _, params, *_ = _model_and_params("gpt2")
    unrolled = dict(params["params"]["backbone"])  # a copy: the params are shared by other tests
    layers = [unrolled.pop(f"blocks_{i}") for i in range(config.num_layers)]
    scanned = {**unrolled, "blocks": jax.tree.map(lambda *a: jnp.stack(a), *layers)}
    tokens = jax.random.normal(jax.random.key(0), (2, 7, config.width))
    mask = jnp.arange(7)[None, :] < jnp.array([[7], [4]])
    outs = []
    for scan, p in ((False, params["params"]["backbone"]), (True, scanned)):
        module = TransformerBackbone(
            dataclasses.replace(config, scan_layers=scan), causal=True, positions=True
        )
        outs.append(jax.jit(module.apply)({"params": p}, tokens, mask))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_mamba2_estimate_does_not_depend_on_the_chunk_length():
    _, params, _, ref = _model_and_params("mamba2")  # chunk 3: N = 8 is 3 + 3 + 2 (a padded tail)
    task = _task()
    one_chunk = make_model(_config("mamba2", backbone_options={"chunk": 64}), _spec())
    _assert_same_output(
        jax.jit(one_chunk.apply)(params, task.points, task.point_mask, task.num_components), ref
    )


@pytest.mark.slow
def test_unknown_num_components_gives_nan_and_the_eager_check_raises():
    _, params, apply, _ = _model_and_params("set")
    task = _task()
    bad_k = task.num_components.at[0].set(4)
    out = apply(params, task.points, task.point_mask, bad_k)
    assert np.all(np.isnan(out.means[0])) and np.all(np.isnan(out.weight_logits[0]))
    assert np.all(np.isnan(out.scales[0]))
    assert np.all(np.isfinite(out.means[1:]))
    check_num_components(task.num_components, _spec())
    with pytest.raises(ValueError, match=r"\[4\]"):
        check_num_components(bad_k, KS)


def test_bad_input_shapes_raise():
    model, params, *_ = _model_and_params("set")
    task = _task()
    with pytest.raises(ValueError, match="points"):
        model.apply(params, task.points[..., :1], task.point_mask, task.num_components)
    with pytest.raises(ValueError, match="point_mask"):
        model.apply(params, task.points, task.point_mask[:, :3], task.num_components)
    with pytest.raises(ValueError, match="num_components"):
        model.apply(params, task.points, task.point_mask, task.num_components[:2])
    with pytest.raises(ValueError, match="max_positions"):
        small = make_model(_config("gpt2", backbone_options={"max_positions": 4}), _spec())
        jax.eval_shape(small.init, _key(0), task.points, task.point_mask, task.num_components)


# ---------------------------------------------------------------------------------------------------
# The official pooling-mask bug.


@pytest.mark.slow
def test_official_pooling_bug_reads_only_the_padded_tokens():
    readout = AttentiveReadout(num_ks=1, k_max=3, dim=2, anisotropic=False)
    tokens = jax.random.normal(jax.random.key(0), (2, 6, 8))
    mask = jnp.array([[True] * 4 + [False] * 2, [True] * 6])
    k_index = jnp.zeros((2,), jnp.int32)
    moved = tokens.at[0, :4].add(5.0)

    @jax.jit
    def pool(key):
        params = readout.init(key, tokens, mask, k_index)
        return (
            readout.apply(params, tokens, mask, k_index, True),  # buggy
            readout.apply(params, moved, mask, k_index, True),  # buggy, real tokens of task 0 moved
            readout.apply(params, tokens, jnp.zeros_like(mask), k_index, False),  # all masked: uniform
            readout.apply(params, tokens, mask, k_index, False),  # correct
        )

    (_, buggy, _), (_, buggy_moved, _), (_, uniform, _), (_, correct, _) = pool(_key(1))
    # Task 0: the buggy pooling ignores its real tokens; only the padded tail matters.
    np.testing.assert_allclose(buggy[0], buggy_moved[0], atol=1e-5)
    assert not np.allclose(buggy[0], correct[0], atol=1e-3)
    # Task 1 (no padding): every score is ~ -1e9, so the pooling is a plain mean over its tokens.
    np.testing.assert_allclose(buggy[1], uniform[1], atol=1e-4)


@pytest.mark.slow
def test_pooling_bug_applies_in_training_only():
    _, params, _, ref = _model_and_params("gpt2")
    task = _task()
    buggy = make_model(dataclasses.replace(_config("gpt2"), official_pooling_mask_bug=True), _spec())

    @jax.jit
    def eval_and_train(params):
        args = (params, task.points, task.point_mask, task.num_components)
        return buggy.apply(*args), buggy.apply(*args, train=True)

    at_eval, in_training = eval_and_train(params)
    _assert_same_output(at_eval, ref)
    assert not np.allclose(in_training.means, ref.means, atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Precision and learning.


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_outputs():
    _, params, _, ref = _model_and_params("gpt2")
    task = _task()
    bf16 = make_model(dataclasses.replace(_config("gpt2"), dtype="bfloat16"), _spec())
    out = jax.jit(bf16.apply)(params, task.points, task.point_mask, task.num_components)
    assert out.means.dtype == jnp.float32 and out.weight_logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_allclose(out.means, ref.means, atol=0.1, rtol=0.05)


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    """A real learning test: the est loss above its floor (the targets' entropy) falls by 10x (at this
    seed about 100x; 3e-4 after 200 steps)."""
    task = _task()
    model, params, *_ = _model_and_params("set")  # the `set` model's init, shared with the other tests
    optimizer = optax.adam(3e-3)

    def excess_loss(p):
        loss, terms = compute_loss(
            "est", model.apply(p, task.points, task.point_mask, task.num_components), task
        )
        return loss - (terms["weights_ce"] - terms["weights_kl"])  # minus the entropy floor

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            grads = jax.grad(excess_loss)(p)
            updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (trained, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=150)
        return excess_loss(params), excess_loss(trained)

    before, after = map(float, train(params))
    assert np.isfinite(after) and after < before / 10, (before, after)
