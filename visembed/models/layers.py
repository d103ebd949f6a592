"""Transformer building blocks, named as in transformers' CLIP so export is a renaming of weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention on `F.scaled_dot_product_attention` (fused kernels where available)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, causal: bool = False,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); given `queries` (B, Q, C), only they attend (over every token of x
        the mask lets them read) -> (B, Q, C)."""
        B, _, C = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, n, C) -> (B, heads, n, head_dim)
            return t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)

        q = split(self.q_proj(x if queries is None else queries))
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None)
        return self.out_proj(y.transpose(1, 2).reshape(B, q.shape[2], C))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU (transformers' `quick_gelu`)."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (transformers' `gelu_pytorch_tanh`, SigLIP's activation)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu, "gelu_tanh": gelu_tanh}


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, causal: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); given `rows` (B,) long, only the token at `rows[b]` of each sequence
        is computed (its attention still reads every token it may see) -> (B, 1, C): the same numbers
        as the full block's at those positions, for a fraction of the work (a tower's last block,
        where one token is pooled)."""
        if rows is None:
            x = x + self.self_attn(self.layer_norm1(x), attn_mask=attn_mask, causal=causal)
            return x + self.mlp(self.layer_norm2(x))
        h = self.layer_norm1(x)
        batch = torch.arange(x.shape[0], device=x.device)
        if causal:  # the row at position r reads the keys 0..r
            seen = (torch.arange(x.shape[1], device=x.device) <= rows[:, None])[:, None, None, :]  # (B, 1, 1, T)
            attn_mask = seen if attn_mask is None else attn_mask & seen
        x = x[batch, rows][:, None] + self.self_attn(h, attn_mask=attn_mask, queries=h[batch, rows][:, None])
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, activation: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(Block(width, heads, mlp_ratio, activation, eps) for _ in range(depth))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, causal: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); given `rows` (B,), the output only at those positions, (B, 1, C):
        the last block computes nothing else (see `Block.forward`)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, attn_mask=attn_mask, causal=causal, rows=rows if i == last else None)
        return x
