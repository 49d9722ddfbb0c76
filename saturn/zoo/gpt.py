"""GPT-2-style decoders in plain torch.

Plain torch rather than HF `transformers`: the package is not needed at run time (and is heavy to
install), the model must be an explicit *layer sequence* (embedding, blocks, head) so that pipeline
stages and spilling shards can cut it anywhere, and the block class must be ours for FSDP wrapping.
Parameter names follow HF GPT-2 (`wte`, `h.N.attn.c_attn`, ...) so `load_hf_gpt2_state_dict` can map
a local HF checkpoint onto it. The LM head is untied from the embedding because the two live in
different layers of the sequence (different pipeline stages / spilling shards).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saturn.zoo.configs import GPT_CONFIGS, GPTConfig, gpt_config  # noqa: F401 (re-exported)


class Embedding(nn.Module):
    """Token + position embedding: the first layer of the sequence."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """The repeated transformer block: the unit of FSDP wrapping and activation checkpointing."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LMHead(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))


def gpt_layers(cfg: GPTConfig) -> list[nn.Module]:
    layers: list[nn.Module] = [Embedding(cfg)]
    layers += [Block(cfg) for _ in range(cfg.n_layer)]
    layers.append(LMHead(cfg))
    return layers  # values: saturn.zoo.init (GPT-2 init: N(0, 0.02), c_proj scaled by depth)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf_gpt2_state_dict(hf: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Map an HF GPT-2 state dict (`transformer.h.0.attn.c_attn.weight`, Conv1D [in, out]) onto
    our layer sequence (`layers.1.attn.c_attn.weight`, Linear [out, in])."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        k = key.removeprefix("transformer.")
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue  # HF's causal-mask buffers
        if k.startswith("wte.") or k.startswith("wpe."):
            out[f"layers.0.{k}"] = value
        elif k.startswith("h."):
            _, idx, rest = k.split(".", 2)
            out[f"layers.{int(idx) + 1}.{rest}"] = value.t() if rest in _CONV1D else value
        elif k.startswith("ln_f."):
            out[f"layers.{cfg.n_layer + 1}.{k}"] = value
        elif k == "lm_head.weight":
            out[f"layers.{cfg.n_layer + 1}.lm_head.weight"] = value
    head = f"layers.{cfg.n_layer + 1}.lm_head.weight"
    out.setdefault(head, out["layers.0.wte.weight"])  # HF ties the head to the embedding
    return out
