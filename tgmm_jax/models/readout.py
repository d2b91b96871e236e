"""Read-outs: token states [B, N, E] -> raw (weight logits [B, K], means [B, K, D], scale params [B, K, D] | None).

One read-out per K in the task set, parameters stacked on a leading axis [S, ...] (S = len(ks)) and
gathered per task by ``k_index_B``. Each returns K_max rows; the caller masks the padded components.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tgmm_jax.models.readin import torch_linear_init, torch_uniform_init

# Masked pooling scores: exp underflows to exactly 0 in float32, and a task with no real point stays finite.
_MASKED_SCORE = -1e30


def _split_rows(rows_BxKxO: jax.Array, k_max: int, dim: int, anisotropic: bool):
    logits_BxK = jnp.mean(rows_BxKxO[:, :, :k_max], axis=1)
    means_BxKxD = rows_BxKxO[:, :, k_max : k_max + dim]
    scales_BxKxD = rows_BxKxO[:, :, k_max + dim :] if anisotropic else None
    return logits_BxK, means_BxKxD, scales_BxKxD


class AttentiveReadout(nn.Module):
    """The official AttentivePooling, one per K: K_max learned queries attend over the tokens.

    O = K_max + D (+ D anisotropic) output columns; scores[b, j, n] = q_j . (W_k h_bn) with no 1/sqrt(O)
    scaling (as the official code, kept for every backbone so read-outs compare like for like), softmax over
    the real tokens n, rows[b, j] = sum_n p[b, j, n] W_v h_bn. Weight logits are the mean over the K_max rows
    of the first K_max columns; row j's next D columns are mean j, the last D its scale parameters.
    Init as the official code: queries N(0, 1); W_k, W_v PyTorch default U(+-1/sqrt(E)), no bias.

    ``official_mask_bug`` reproduces the official training-time mask
    (docs/official_differences.md §7): 1e9 is subtracted from
    the scores of the *real* tokens, so pooling attends to the padded tail (or, with no padding, all tokens
    equally). The padded tokens must then hold genuine points, as the official sampler's do.
    """

    num_ks: int
    k_max: int
    dim: int
    anisotropic: bool

    @nn.compact
    def __call__(self, tokens_BxNxE, point_mask_BxN, k_index_B, official_mask_bug: bool = False):
        width = tokens_BxNxE.shape[-1]
        out = self.k_max + self.dim * (2 if self.anisotropic else 1)
        init = torch_linear_init(fan_in_axis=1, batch_axis=(0,))
        queries_SxKxO = self.param("queries", nn.initializers.normal(1.0), (self.num_ks, self.k_max, out))
        w_key_SxExO = self.param("key", init, (self.num_ks, width, out))
        w_value_SxExO = self.param("value", init, (self.num_ks, width, out))

        keys_BxNxO = jnp.einsum("bne,beo->bno", tokens_BxNxE, w_key_SxExO[k_index_B])
        values_BxNxO = jnp.einsum("bne,beo->bno", tokens_BxNxE, w_value_SxExO[k_index_B])
        scores_BxKxN = jnp.einsum("bko,bno->bkn", queries_SxKxO[k_index_B], keys_BxNxO)
        if official_mask_bug:
            scores_BxKxN = scores_BxKxN - 1e9 * point_mask_BxN[:, None, :].astype(scores_BxKxN.dtype)
        else:
            scores_BxKxN = jnp.where(point_mask_BxN[:, None, :], scores_BxKxN, _MASKED_SCORE)
        probs_BxKxN = jax.nn.softmax(scores_BxKxN, axis=-1)
        rows_BxKxO = jnp.einsum("bkn,bno->bko", probs_BxKxN, values_BxNxO)
        return _split_rows(rows_BxKxO, self.k_max, self.dim, self.anisotropic)


class NaiveReadout(nn.Module):
    """The decoder ablation: the last real token's state -> one linear map per K (PyTorch default init).

    Not order invariant, even on the `set` backbone (the last token is a particular point).
    """

    num_ks: int
    k_max: int
    dim: int
    anisotropic: bool

    @nn.compact
    def __call__(self, tokens_BxNxE, point_mask_BxN, k_index_B, official_mask_bug: bool = False):
        del official_mask_bug  # the bug lives in the attentive pooling only
        width = tokens_BxNxE.shape[-1]
        per_row = self.dim * (2 if self.anisotropic else 1)
        out = self.k_max + self.k_max * per_row
        w_SxExO = self.param(
            "kernel", torch_linear_init(fan_in_axis=1, batch_axis=(0,)), (self.num_ks, width, out)
        )
        b_SxO = self.param("bias", torch_uniform_init(width), (self.num_ks, out))

        last_B = jnp.maximum(jnp.sum(point_mask_BxN, axis=-1) - 1, 0)  # real points are a prefix
        last_BxE = jnp.take_along_axis(tokens_BxNxE, last_B[:, None, None], axis=1)[:, 0, :]
        flat_BxO = jnp.einsum("be,beo->bo", last_BxE, w_SxExO[k_index_B]) + b_SxO[k_index_B]
        logits_BxK = flat_BxO[:, : self.k_max]
        rows_BxKxR = flat_BxO[:, self.k_max :].reshape(-1, self.k_max, per_row)
        means_BxKxD = rows_BxKxR[:, :, : self.dim]
        scales_BxKxD = rows_BxKxR[:, :, self.dim :] if self.anisotropic else None
        return logits_BxK, means_BxKxD, scales_BxKxD
