"""The PyTorch reference of ``benchmarks.train_step``: the official code's model, eager, on the same batch.

Read-in ``Linear(D + E_task -> E)`` on concat(point, embed(K)), Hugging Face ``GPT2Model`` (same width, depth and
heads, ``n_positions = N``, dropout 0, GELU-tanh) on ``inputs_embeds`` with the key-padding mask, and the
official attentive pooling read-out (one per K, parameters stacked [S, ...] and gathered per task, as ours),
the est loss (soft-target cross-entropy on the weights + masked squared error on the means), ``torch.optim.AdamW``.
Imported only when torch is installed (the ``[bench]`` extra); nothing in ``tgmm_jax`` imports it.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from torch import nn


class TorchTGMM(nn.Module):
    def __init__(self, dim, ks, width, layers, heads, task_embed, n_positions, attn_implementation=None):
        super().__init__()
        self.k_max = max(ks)
        out = self.k_max + dim
        self.embed = nn.Embedding(len(ks), task_embed)
        self.read_in = nn.Linear(dim + task_embed, width)
        config = transformers.GPT2Config(
            vocab_size=1,  # tokens come in as inputs_embeds: no word table to carry
            bos_token_id=0,
            eos_token_id=0,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            n_positions=n_positions,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=1e-5,
            use_cache=False,
        )
        if attn_implementation:  # a config attribute (recent transformers refuse it as a model argument)
            config._attn_implementation = attn_implementation
        self.backbone = transformers.GPT2Model(config)
        self.queries = nn.Parameter(torch.randn(len(ks), self.k_max, out))
        bound = 1.0 / np.sqrt(width)
        self.w_key = nn.Parameter(torch.empty(len(ks), width, out).uniform_(-bound, bound))
        self.w_value = nn.Parameter(torch.empty(len(ks), width, out).uniform_(-bound, bound))

    @property
    def attn_implementation(self) -> str:
        return str(self.backbone.config._attn_implementation)

    def forward(self, points_BxNxD, mask_BxN, k_index_B):
        n = points_BxNxD.shape[1]
        embed_BxNxT = self.embed(k_index_B)[:, None, :].expand(-1, n, -1)
        tokens_BxNxE = self.read_in(torch.cat([points_BxNxD, embed_BxNxT], dim=-1))
        states_BxNxE = self.backbone(inputs_embeds=tokens_BxNxE, attention_mask=mask_BxN).last_hidden_state
        keys_BxNxO = torch.einsum("bne,beo->bno", states_BxNxE, self.w_key[k_index_B])
        values_BxNxO = torch.einsum("bne,beo->bno", states_BxNxE, self.w_value[k_index_B])
        scores_BxKxN = torch.einsum("bko,bno->bkn", self.queries[k_index_B], keys_BxNxO)
        scores_BxKxN = scores_BxKxN.masked_fill(~mask_BxN[:, None, :].bool(), -1e30)
        rows_BxKxO = torch.einsum("bkn,bno->bko", torch.softmax(scores_BxKxN, -1), values_BxNxO)
        return rows_BxKxO[:, :, : self.k_max].mean(1), rows_BxKxO[:, :, self.k_max :]


def est_loss(logits_BxK, means_BxKxD, weights_BxK, true_means_BxKxD, component_mask_BxK):
    logits_BxK = logits_BxK.masked_fill(~component_mask_BxK, -1e9)
    ce_B = -(weights_BxK * torch.log_softmax(logits_BxK, -1)).sum(-1)
    sq_BxK = ((means_BxKxD - true_means_BxKxD) ** 2).mean(-1) * component_mask_BxK
    return ce_B.mean() + (sq_BxK.sum(-1) / component_mask_BxK.sum(-1)).mean()


def make_step(model_config, task_config, task, ks, lr, weight_decay, attn_implementation=None, seed=0):
    """(step(threads=None): one AdamW step on the fixed batch ``task`` (with ``threads`` intra-op threads when
    given), the module). ``task`` is a GMMTask (NumPy arrays)."""
    torch.manual_seed(seed)
    model = TorchTGMM(
        task_config["dim"],
        ks,
        model_config["width"],
        model_config["num_layers"],
        model_config["num_heads"],
        model_config["task_embed_dim"],
        task_config["n"],
        attn_implementation,
    )
    k_index = {k: i for i, k in enumerate(ks)}
    points = torch.as_tensor(np.array(task.points, np.float32))
    mask = torch.as_tensor(np.array(task.point_mask)).long()
    k_index_B = torch.as_tensor([k_index[int(k)] for k in np.asarray(task.num_components)])
    weights = torch.as_tensor(np.array(task.weights, np.float32))
    means = torch.as_tensor(np.array(task.means, np.float32))
    component_mask = torch.as_tensor(np.array(task.component_mask))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step(threads: int | None = None) -> float:
        if threads:
            torch.set_num_threads(threads)
        optimizer.zero_grad(set_to_none=True)
        logits, est_means = model(points, mask, k_index_B)
        loss = est_loss(logits, est_means, weights, means, component_mask)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, model


def counted_flops(step) -> int:
    """FLOPs of one step as torch's FlopCounterMode counts them (matmuls and attention, forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def versions() -> dict:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GFLOP/s of a size x size matmul in torch (same threads as the step)."""
    from benchmarks import machine

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    return machine.matmul_rates(size, machine.timed(lambda: torch.mm(a, b), repeats))
