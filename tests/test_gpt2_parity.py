"""Our `gpt2` backbone against Hugging Face's ``transformers.GPT2Model``, the paper's backbone, with the same
weights copied in: the hidden states agree to 1e-5 in float32, padding and the causal mask included.

Needs torch and transformers (the ``[bench]`` extra); skipped without them.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tgmm_jax.models import BACKBONES, ModelConfig

WIDTH, HEADS, LAYERS = 32, 4, 3
B, N = 3, 24
LENGTHS = (N, 17, 5)  # real points per task, at the front (padding at the end, as TGMM lays tasks out)
TOL = 1e-5


def _backbone(scan_layers: bool):
    config = ModelConfig(
        backbone="gpt2", num_layers=LAYERS, width=WIDTH, num_heads=HEADS, scan_layers=scan_layers
    )
    return BACKBONES["gpt2"].module(config), config


def _inputs():
    rng = np.random.default_rng(0)
    tokens_BxNxE = rng.normal(size=(B, N, WIDTH)).astype(np.float32)
    point_mask_BxN = np.arange(N)[None, :] < np.asarray(LENGTHS)[:, None]
    return tokens_BxNxE, point_mask_BxN


def _perturbed(params, key):
    """Every parameter moved by N(0, 0.05^2): nonzero biases and LayerNorm shifts, so each one is tested."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return treedef.unflatten(moved)


def _hf_state_dict(params, scanned: bool) -> dict:
    """Our parameter tree as a GPT2Model state dict (HF's Conv1D weights are [in, out], as Flax's kernels)."""

    def block(i):
        return jax.tree.map(lambda x: x[i], params["blocks"]) if scanned else params[f"blocks_{i}"]

    state = {"wpe.weight": params["positions"], "ln_f.weight": params["ln_f"]["scale"]}
    state["ln_f.bias"] = params["ln_f"]["bias"]
    for i in range(LAYERS):
        p = block(i)
        for norm in ("ln_1", "ln_2"):
            state[f"h.{i}.{norm}.weight"] = p[norm]["scale"]
            state[f"h.{i}.{norm}.bias"] = p[norm]["bias"]
        for (group, ours), theirs in (
            (("attn", "qkv"), "attn.c_attn"),
            (("attn", "out"), "attn.c_proj"),
            (("mlp", "fc"), "mlp.c_fc"),
            (("mlp", "out"), "mlp.c_proj"),
        ):
            state[f"h.{i}.{theirs}.weight"] = p[group][ours]["kernel"]
            state[f"h.{i}.{theirs}.bias"] = p[group][ours]["bias"]
    return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}


def _hf_model(params, config, scanned: bool, attn_implementation: str):
    hf_config = transformers.GPT2Config(
        vocab_size=1,  # tokens come in as inputs_embeds
        bos_token_id=0,
        eos_token_id=0,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=config.backbone_options.max_positions,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    model = transformers.GPT2Model(hf_config).eval()
    assert model.config._attn_implementation == attn_implementation
    missing, unexpected = model.load_state_dict(_hf_state_dict(params, scanned), strict=False)
    # every weight of the model but the unused word table comes from ours
    assert [k for k in missing if k != "wte.weight" and not k.endswith("attn.bias")] == [] and not unexpected
    return model


def _hf_states(model, tokens_BxNxE, point_mask_BxN) -> np.ndarray:
    with torch.no_grad():
        out = model(
            inputs_embeds=torch.from_numpy(tokens_BxNxE),
            attention_mask=torch.from_numpy(point_mask_BxN.astype(np.int64)),
        )
    return out.last_hidden_state.numpy()


@pytest.mark.slow
@pytest.mark.parametrize(("scanned", "attn_implementation"), [(False, "eager"), (True, "sdpa")])
def test_gpt2_backbone_equals_hugging_face_gpt2model(scanned, attn_implementation):
    backbone, config = _backbone(scanned)
    tokens_BxNxE, point_mask_BxN = _inputs()
    init = backbone.init(jax.random.key(0), jnp.asarray(tokens_BxNxE), jnp.asarray(point_mask_BxN))
    params = _perturbed(init["params"], jax.random.key(1))
    hf = _hf_model(params, config, scanned, attn_implementation)

    ours_BxNxE = np.asarray(backbone.apply({"params": params}, tokens_BxNxE, point_mask_BxN))
    theirs_BxNxE = _hf_states(hf, tokens_BxNxE, point_mask_BxN)
    assert ours_BxNxE.dtype == np.float32 and theirs_BxNxE.dtype == np.float32
    for b, n in enumerate(LENGTHS):  # real tokens; padded ones feed nothing downstream
        np.testing.assert_allclose(ours_BxNxE[b, :n], theirs_BxNxE[b, :n], rtol=0, atol=TOL)

    # The causal mask: changing a later token changes no earlier state, in either model, and the
    # states from there on still agree.
    j = 9
    changed_BxNxE = tokens_BxNxE.copy()
    # a random change: a constant added to a token would vanish in the LayerNorms
    noise = np.random.default_rng(1).normal(size=changed_BxNxE[:, j:].shape)
    changed_BxNxE[:, j:] += noise.astype(np.float32)
    ours_changed = np.asarray(backbone.apply({"params": params}, changed_BxNxE, point_mask_BxN))
    theirs_changed = _hf_states(hf, changed_BxNxE, point_mask_BxN)
    np.testing.assert_allclose(ours_changed[:, :j], ours_BxNxE[:, :j], rtol=0, atol=1e-6)
    np.testing.assert_allclose(theirs_changed[:, :j], theirs_BxNxE[:, :j], rtol=0, atol=1e-6)
    moved_N = np.abs(ours_changed[0, j:] - ours_BxNxE[0, j:]).max(axis=-1)
    assert moved_N.min() > 1e-2  # every later state moved
    np.testing.assert_allclose(ours_changed[0], theirs_changed[0], rtol=0, atol=TOL)
