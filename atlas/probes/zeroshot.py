"""Zero-shot heads from the text tower, and a sentence read as a combination of last-layer neurons.

`zero_shot_head` averages the normalized text embeddings of prompt templates per class name.
`neuron_directions` linearizes a ModifiedResNet's attention pooling: its output is
c_proj(sum_t a_t (v_proj(x_t + pos_t))) with attention weights a_t summing to one, so for fixed weights the
image embedding is  W_c W_v x_bar + const,  x_bar the attention-weighted average of the last block's features.
Column j of M = W_c W_v is therefore the embedding-space direction that neuron j writes to (exact up to the
choice of attention weights, which differ per head; the constant does not depend on the neurons).
`text_as_neurons` reads a text embedding t back onto neurons: the non-negative sparse z with M z close to t.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models import LoadedModel

PROMPTS = ("a drawing of a {}", "a picture of a {}", "an icon of a {}", "the word {}", "{}")


def zero_shot_head(model: LoadedModel, names: Sequence[str], templates: Sequence[str] = PROMPTS) -> torch.Tensor:
    """[classes, embed] unit-norm class embeddings: the mean over templates of normalized text embeddings."""
    with torch.no_grad():
        embs = []
        for t in templates:
            e = model.encode_text([t.format(n) for n in names]).float()
            embs.append(e / e.norm(dim=-1, keepdim=True))
        w = torch.stack(embs).mean(0)
    return w / w.norm(dim=-1, keepdim=True)


def zero_shot_logits(model: LoadedModel, head: torch.Tensor, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """[N, classes] cosine similarities of normalized image embeddings with the head (no softmax)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            f = model.encode_image(pixels[i:i + batch].to(model.device)).float()
            out.append((f / f.norm(dim=-1, keepdim=True)) @ head.to(f.device).t())
    return torch.cat(out).cpu()


def neuron_directions(model: LoadedModel) -> torch.Tensor:
    """M [embed, units]: what each unit of the last ResNet block adds to the image embedding (see module doc)."""
    pool = getattr(model.clip.visual, "attnpool", None)
    if pool is None:
        raise ValueError(f"{model.name} has no attention pooling (not a ModifiedResNet); reading text as "
                         "neurons is implemented for ResNet CLIPs")
    return (pool.c_proj.weight @ pool.v_proj.weight).detach().float()  # [D, C] = [D, C] @ [C, C]


def text_as_neurons(model: LoadedModel, text: str, reference: Sequence[str] | None = None,
                    sparsity: float = 0.3, iters: int = 300) -> torch.Tensor:
    """A sentence as a sparse non-negative combination of last-block neurons: z [units].

    t is the text's unit embedding minus the mean embedding of ``reference`` texts (by default Concept World's
    41 concept names, ordinary nouns): without that, every text shares one large common direction and the same
    few neurons explain all of them (the mean subtraction of image-based word embeddings in the paper).  z
    minimizes 0.5 ||M_n z - t||^2 + lam ||z||_1 over z >= 0 (projected ISTA), M_n the unit-normalized columns of
    `neuron_directions`, lam = sparsity * max(M_n^T t)."""
    from ..data.conceptworld import CONCEPT_NAMES

    M = neuron_directions(model)
    Mn = M / M.norm(dim=0, keepdim=True).clamp(min=1e-12)  # [D, units]
    with torch.no_grad():
        E = model.encode_text([text, *(reference or CONCEPT_NAMES)]).float().cpu()
    E = E / E.norm(dim=1, keepdim=True)
    t = E[0] - E[1:].mean(0)
    t = t / t.norm()
    L = float(torch.linalg.matrix_norm(Mn, 2) ** 2)
    lam = sparsity * float((Mn.t() @ t).max().clamp(min=0))
    z = torch.zeros(Mn.shape[1])
    for _ in range(iters):
        z = torch.clamp(z - (Mn.t() @ (Mn @ z - t) + lam) / L, min=0)
    return z
