"""Train atlas's own small CLIP contrastively on Concept World (`atlas train`; needs a GPU to be quick).

Reproducible from its frozen `TrainConfig`: the data is generated from seeds, the model initialized from a
seed, batches drawn from a seeded permutation.  Writes the weights as fp16 safetensors (the config and the
training curve in its metadata) and a JSON log with curves and evaluations.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .version import __version__
from .config import digest, to_json
from .data.conceptworld import World, WorldConfig
from .models import ATLAS_CONFIGS, LoadedModel, ModelSpec, build_towers, sha256_state


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "tiny"
    world: WorldConfig = field(default_factory=WorldConfig)
    images: int = 400_000
    steps: int = 6000
    batch: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 300
    shift: int = 4  # random translation, pixels
    seed: int = 0
    log_every: int = 50


def _render_chunk(args: tuple[WorldConfig, int, int]) -> tuple[np.ndarray, list[str]]:
    cfg, start, stop = args
    world = World(cfg)
    imgs = np.zeros((stop - start, cfg.size, cfg.size, 3), np.uint8)
    caps = []
    for j, i in enumerate(range(start, stop)):
        it = world.item(i)
        imgs[j] = np.asarray(world.image(it))
        caps.append(it.caption)
    return imgs, caps


def generate(cfg: WorldConfig, n: int, workers: int = 0) -> tuple[np.ndarray, list[str]]:
    """Images [n, S, S, 3] uint8 and captions of world items 0..n-1 (in parallel when workers > 1)."""
    chunk = 2000
    jobs = [(cfg, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def _shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image random translation by up to ``pad`` pixels (edge-replicated).  x: [B, 3, S, S]."""
    if pad == 0:
        return x
    b, _, s, _ = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).to(x.device)
    rows = (off[:, 0, None] + torch.arange(s, device=x.device))[:, :, None].expand(b, s, s)
    cols = (off[:, 1, None] + torch.arange(s, device=x.device))[:, None, :].expand(b, s, s)
    idx = (rows * (s + 2 * pad) + cols).view(b, 1, s * s).expand(b, 3, s * s)
    return xp.flatten(2).gather(2, idx).view(b, 3, s, s)


def cached_data(cfg: TrainConfig, cache: Path | None, workers: int,
                log: Callable[[str], None] = print) -> tuple[np.ndarray, list[str]]:
    """The training images and captions, generated or read from ``cache`` (a folder) if it holds them."""
    key = f"world-{digest(cfg.world, cfg.images)}"
    if cache is not None and (cache / f"{key}.npy").exists():
        return np.load(cache / f"{key}.npy"), json.loads((cache / f"{key}.json").read_text())
    t0 = time.time()
    images, captions = generate(cfg.world, cfg.images, workers)
    log(f"generated {len(images)} images in {time.time() - t0:.0f}s")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"{key}.tmp.npy", images)
        (cache / f"{key}.json").write_text(json.dumps(captions))
        (cache / f"{key}.tmp.npy").rename(cache / f"{key}.npy")
    return images, captions


def train(cfg: TrainConfig, out: str | Path, device: str = "cuda", workers: int = 0, cache: Path | None = None,
          max_seconds: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Generate data, train, save ``out`` (.safetensors) and ``out.with_suffix('.json')``; return the log.

    ``max_seconds``: after 400 steps, shorten the run (and its learning-rate schedule) to fit this budget;
    the steps actually run are recorded in the log and the weights' metadata."""
    from safetensors.torch import save_file

    from .evaluate import concept_neurons, concept_test_images, report_markdown, zero_shot

    out = Path(out)
    images, captions = cached_data(cfg, cache, workers, log)
    torch.manual_seed(cfg.seed)
    spec = ModelSpec("atlas", cfg.arch, "random:%d" % cfg.seed)
    clip, tokenizer = build_towers(spec)
    clip = clip.to(device).train()
    tokens = tokenizer(captions)  # [N, ctx]
    dev = torch.device(device)
    pixels = torch.from_numpy(images).to(dev)  # [N, S, S, 3] uint8, on the device
    tokens = tokens.to(dev)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=dev).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=dev).view(1, 3, 1, 1)
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    total = [cfg.steps]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / total[0]))))
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(pixels), generator=gen)
    pos = 0
    curve = []
    t1 = time.time()
    step = 0
    while step < total[0]:
        if step == 100:
            t_100 = time.time()
        if step == 400 and max_seconds:  # time steps 100..400: the first ones include warm-up
            fit = 400 + int((max_seconds - (time.time() - t1)) / ((time.time() - t_100) / 300))
            if fit < total[0]:
                total[0] = max(fit, 200)
                log(f"shortening the run to {total[0]} steps to fit {max_seconds:.0f}s")
        if pos + cfg.batch > len(order):
            order, pos = torch.randperm(len(pixels), generator=gen), 0
        idx = order[pos:pos + cfg.batch].to(dev)
        pos += cfg.batch
        x = pixels[idx].permute(0, 3, 1, 2).float().div_(255)
        x = (_shift(x, cfg.shift, gen) - mean) / std
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            img = F.normalize(clip.encode_image(x).float(), dim=-1)
            txt = F.normalize(clip.encode_text(tokens[idx]).float(), dim=-1)
            logits = clip.logit_scale.exp().clamp(max=100) * img @ txt.t()
            labels = torch.arange(len(idx), device=dev)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == total[0] - 1:
            acc = float((logits.argmax(1) == labels).float().mean())
            curve.append({"step": step, "loss": float(loss.detach()), "batch_acc": acc, "lr": sched.get_last_lr()[0],
                          "logit_scale": float(clip.logit_scale.exp()), "seconds": time.time() - t1})
            took = time.time() - t1
            eta = took / (step + 1) * (total[0] - step - 1)
            log(f"step {step:5d}/{total[0]} loss {float(loss.detach()):.3f} acc {acc:.3f} ({took:.0f}s, "
                f"{(step + 1) / max(took, 1e-9):.1f} steps/s, ETA {eta:.0f}s)")
        step += 1
    clip.eval()
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in clip.state_dict().items()}
    # evaluate the weights exactly as shipped (fp16 -> fp32)
    clip.load_state_dict({k: v.float() for k, v in state.items()})
    model = LoadedModel(spec, clip.float(), tokenizer, sha256_state(state))
    ps = concept_test_images(model, per_concept=40, size=cfg.world.size)
    zs = zero_shot(model, ps)
    neurons = concept_neurons(model, ps)
    result = {"config": json.loads(to_json(cfg)), "steps_run": total[0], "atlas_version": __version__, "curve": curve,
              "train_seconds": time.time() - t1, "zero_shot": zs,
              "concept_neurons": [asdict(r) | {"multimodal": r.multimodal} for r in neurons],
              "report_markdown": report_markdown(zs, neurons)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"atlas_train_config": to_json(cfg), "steps_run": str(total[0]),
                                         "atlas_version": __version__,
                                         "arch": cfg.arch, "atlas_config": json.dumps(ATLAS_CONFIGS[cfg.arch])})
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    log(result["report_markdown"])
    return result
