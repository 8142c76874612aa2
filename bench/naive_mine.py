"""The peer of `atlas mine`: the script a competent PyTorch user writes to find each neuron's top images.

    python bench/naive_mine.py --folder DIR --arch RN50x4 --weights W.pt --layers L1,L2 [--k 16] [--batch 256]
                               [--workers 14] [--precision float32|bfloat16] [--device cuda] [--out result.npz]

Plain PyTorch and open_clip, nothing from atlas: the image files of ``--folder`` (sorted paths), open_clip's own
validation transform (``create_model_and_transforms``: PIL decode, Resize bicubic, CenterCrop, Normalize) in a
torch DataLoader of ``--workers`` processes with pinned memory, forward hooks on the named modules, per unit the
spatial max of the map (for a token layer [batch, tokens, width]: over the patch tokens, the class token left
out) as the image's score, a running ``torch.topk`` of k per unit kept on the device, and the spatial means of
every image kept in memory (the pooled matrix a probe needs).  ``--precision bfloat16``: autocast, as a user
would on a GPU.  Saves the top-k (values, file names) per layer into ``--out`` and prints, like `atlas mine`,
the whole time from the process's start, when the first batch was through, and the steady rate after it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from startup_profile import started  # the process's start from /proc (a bench helper: stdlib only, no atlas)

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--weights", required=True, help="an open_clip checkpoint (state dict) of --arch")
    ap.add_argument("--layers", required=True, help="comma-separated module names (named_modules paths)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t_start = started()
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=args.weights)
    model = model.eval().to(dev)
    root = Path(args.folder)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
    loader = torch.utils.data.DataLoader(Files(paths, preprocess), batch_size=args.batch, num_workers=args.workers,
                                         pin_memory=dev.type == "cuda", persistent_workers=False)
    layers = args.layers.split(",")
    modules = dict(model.named_modules())
    top: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> ([U, k] values, [U, k] image indices)
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    current: dict[str, torch.Tensor] = {}
    batch_first = getattr(getattr(model.visual, "transformer", None), "batch_first", True)

    def hook(name: str):
        def fn(module, inputs, out):
            out = out.detach().float()
            if out.dim() == 4:  # [B, C, H, W]
                flat = out.flatten(2)
            else:  # tokens: [B, L, C] (open_clip's transformers are batch-first; older ones [L, B, C]); no class token
                if not batch_first:
                    out = out.transpose(0, 1)
                flat = out[:, 1:, :].transpose(1, 2)
            score, mean = flat.amax(2), flat.mean(2)  # [B, U]
            pooled[name].append(mean.cpu())
            idx = current["index"].expand(score.shape[1], -1)  # [U, B]
            if name in top:
                v, i = top[name]
                score, idx = torch.cat([v, score.t()], 1), torch.cat([i, idx], 1)
            else:
                score = score.t()
            v, j = score.topk(min(args.k, score.shape[1]), dim=1)
            top[name] = (v, idx.gather(1, j))
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    first_at, first_n, n = 0.0, 0, 0
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bfloat16")
    with torch.no_grad(), autocast:
        for pixels, index in loader:
            current["index"] = index.to(dev, non_blocking=True)[None]
            model.encode_image(pixels.to(dev, non_blocking=True))
            n += len(index)
            if not first_at:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                first_at, first_n = time.time(), n
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    end = time.time()
    for h in handles:
        h.remove()
    pooled_matrix = {k: torch.cat(v) for k, v in pooled.items()}  # [N, U] each, kept as a probe would need
    if args.out:
        names = np.array([str(p.relative_to(root)) for p in paths])
        np.savez(args.out, **{f"{k}/values": v.cpu().numpy() for k, (v, _) in top.items()},
                 **{f"{k}/files": names[i.cpu().numpy()] for k, (_, i) in top.items()})
    steady = (n - first_n) / (end - first_at) if end > first_at else float("nan")
    print(f"naive: {len(layers)} layers over {n} images ({sum(m.shape[1] for m in pooled_matrix.values())} units) "
          f"in {time.time() - t_start:.1f} s (whole command): first batch after {first_at - t_start:.1f} s, "
          f"then {steady:,.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
