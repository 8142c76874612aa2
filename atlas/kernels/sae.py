"""The TopK sparse autoencoder's forward as pure tensor functions (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"): what training (atlas.sae) and mining a virtual layer (atlas.mining.virtual) share.

Parameters (``SaeTensors``), for d inputs and F features:

    w_enc [F, d], b_enc [F], w_dec [F, d] (rows of unit norm: feature f's direction in the layer's unit basis),
    b_pre [d] (subtracted before encoding, added back after decoding)

    pre = w_enc @ (x - b_pre) + b_enc        # [n, F]
    z   = ReLU(TopK_k(pre))                   # the k largest entries of pre kept, every other set to 0
    x^  = w_dec.T @ z + b_pre                 # [n, d]

`encode` keeps the sparse form (values [n, k], indices [n, k]); `decode` gathers the k decoder rows of each input
(`F.embedding_bag`, n * k * d work) instead of multiplying by the dense [n, F] code (n * F * d).  `dense_code`
scatters a sparse code to [n, F] (mining's feature maps); `reference_forward` is the plain dense formula the tests
check them against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SaeTensors:
    w_enc: torch.Tensor  # [F, d]
    b_enc: torch.Tensor  # [F]
    w_dec: torch.Tensor  # [F, d], unit-norm rows
    b_pre: torch.Tensor  # [d]
    k: int

    @property
    def width(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def d(self) -> int:
        return int(self.w_enc.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "SaeTensors":
        return SaeTensors(*(t.to(device, dtype) for t in (self.w_enc, self.b_enc, self.w_dec, self.b_pre)), self.k)


def preactivations(x: torch.Tensor, p: SaeTensors) -> torch.Tensor:
    """[n, d] -> [n, F]: w_enc @ (x - b_pre) + b_enc."""
    return torch.addmm(p.b_enc, x - p.b_pre, p.w_enc.t())


def encode(x: torch.Tensor, p: SaeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] -> (values [n, k] >= 0, indices [n, k] int64): the k largest pre-activations of each input, ReLU'd
    (a value is 0 where fewer than k pre-activations are positive), in descending order."""
    vals, idx = preactivations(x, p).topk(p.k, dim=1, sorted=True)
    return vals.clamp_min(0), idx


def decode(values: torch.Tensor, indices: torch.Tensor, p: SaeTensors) -> torch.Tensor:
    """(values [n, k], indices [n, k]) -> [n, d]: sum_j values[:, j] * w_dec[indices[:, j]] + b_pre, gathering
    k decoder rows per input (differentiable in values and w_dec)."""
    out = F.embedding_bag(indices, p.w_dec, per_sample_weights=values.to(p.w_dec.dtype), mode="sum")
    return out + p.b_pre


def dense_code(values: torch.Tensor, indices: torch.Tensor, width: int) -> torch.Tensor:
    """A sparse code -> [n, F] with zeros outside the k kept features."""
    return torch.zeros(values.shape[0], width, dtype=values.dtype, device=values.device).scatter_(1, indices, values)


def feature_maps(maps: torch.Tensor, p: SaeTensors, chunk: int = 4096) -> torch.Tensor:
    """A layer's canonical maps [B, d, h, w] -> the SAE's feature maps [B, F, h, w]: every spatial position (or
    token) encoded on its own, in chunks of ``chunk`` positions."""
    b, d, h, w = maps.shape
    rows = maps.permute(0, 2, 3, 1).reshape(-1, d).float()  # [B*h*w, d]
    out = torch.empty(rows.shape[0], p.width, dtype=torch.float32, device=maps.device)
    for i in range(0, rows.shape[0], chunk):
        vals, idx = encode(rows[i:i + chunk], p)
        out[i:i + chunk] = dense_code(vals, idx, p.width)
    return out.reshape(b, h, w, p.width).permute(0, 3, 1, 2)  # [B, F, h, w]


def reference_forward(x: torch.Tensor, p: SaeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense formula: (z [n, F], x^ [n, d]) with z = ReLU(pre masked to its k largest entries)."""
    pre = (x - p.b_pre) @ p.w_enc.t() + p.b_enc
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(p.k, dim=1).indices, True)
    z = torch.where(keep, pre, torch.zeros_like(pre)).clamp_min(0)
    return z, z @ p.w_dec + p.b_pre
