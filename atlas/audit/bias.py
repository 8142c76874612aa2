"""Bias audits: which neurons and classes tie two groups of images to concepts, with uncertainty.

Given images with a group label (exactly two groups), the audit reports:

(a) neurons whose pooled activation differs most between the groups: Hedges' g with a bootstrap 95% interval
    and a permutation p-value per neuron;
(b) zero-shot classification disparities over sensitive and neutral classes: the difference between the
    groups in mean class probability (and top-1 rate), bootstrap interval, permutation p-value;
(c) WEAT-style association tests in embedding space: for each concept (a set of words), the effect size d of
    the groups' difference in s(x) = mean cos(x, concept words) - mean cos(x, all words).  When two groups look
    different, *every* word set separates them a little, so images are not the unit to permute: the p-value asks
    whether the concept's |d| exceeds that of random word sets of the same size drawn from a pool of words
    (``WORD_POOL`` plus all concepts' words), i.e. whether the concept is tied to the groups more than an
    arbitrary set of words is.

Each family of tests is corrected for multiple comparisons with Benjamini-Hochberg at ``fdr``.  What an audit
can and cannot show is written next to its results on the site (CAVEAT).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .. import store
from ..capture import pooled_activations
from ..config import to_json
from ..data.decode import BadImage, decode_image
from ..models import LoadedModel
from ..errors import AtlasError

CAVEAT = (
    "An audit measures associations inside this model on these images. A significant result says the model "
    "treats the two groups differently here; it does not say why, that the difference matters downstream, "
    "or that it holds on other images. A null result is not evidence of fairness: the test sets, classes and "
    "concepts may miss the associations that matter, and small groups give wide intervals. Group labels are "
    "taken as given.")


class AuditError(AtlasError, ValueError):
    pass


SENSITIVE = ("danger", "trash", "sad")  # Concept World's negative concepts, for the audit's class list


@dataclass(frozen=True)
class AuditConfig:
    bootstrap: int = 1000
    permutations: int = 2000
    fdr: float = 0.05
    min_group: int = 20  # fewer images in a group: no confident statement, the audit refuses
    min_effect: float = 0.05  # (b): a class disparity is reported only if its 95% interval clears +-min_effect
    min_association: float = 0.05  # (c): likewise for a concept's distance (cosine) from the null's centre
    seed: int = 0


def read_groups_csv(path: str | os.PathLike, folder: str | os.PathLike) -> tuple[list[Path], list[str], list]:
    """(image paths, groups, left out) from a CSV with columns image (or path) and group."""
    from ..data.sources import DataError, read_table

    try:
        rows = read_table(path, ("image", "path"), "group", "groups")
    except DataError as e:
        raise AuditError(str(e)) from e
    paths, groups, missing, unlabelled = [], [], 0, 0
    for rel, g in rows:
        if not g:
            unlabelled += 1
            continue
        if not (Path(folder) / rel).is_file():
            missing += 1
            continue
        paths.append(Path(folder) / rel)
        groups.append(g)
    left = [(n, k, why) for n, k, why in (("rows without a group", unlabelled, "no group to compare"),
                                          ("rows whose image is missing", missing, f"not found under {folder}"))
            if k]
    return paths, groups, left


WORD_POOL = ("table", "chair", "window", "door", "bottle", "shoe", "pencil", "river", "garden", "bread", "lamp",
             "paper", "stone", "road", "shirt", "glass", "plate", "spoon", "wall", "floor", "bridge", "train",
             "bus", "plane", "field", "hill", "lake", "beach", "desk", "button", "candle", "basket", "box", "rope",
             "coin", "letter", "map", "ticket", "bag", "coat", "hat", "ladder", "mirror", "pillow", "blanket",
             "towel", "soap", "brush", "comb", "wheel", "fence", "gate", "roof", "tower", "castle", "farm",
             "market", "school", "office", "kitchen")


def _bh(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg: which of the p-values are discoveries at false-discovery rate q."""
    n = len(p)
    order = np.argsort(p)
    passed = p[order] <= q * np.arange(1, n + 1) / n
    k = np.nonzero(passed)[0].max() + 1 if passed.any() else 0
    out = np.zeros(n, bool)
    out[order[:k]] = True
    return out


def _hedges_g(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per column, (mean a - mean b) / pooled std, small-sample corrected.  a: [na, k], b: [nb, k]."""
    na, nb = len(a), len(b)
    sp = np.sqrt(((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / (na + nb - 2))
    d = (a.mean(0) - b.mean(0)) / np.where(sp > 0, sp, np.inf)
    return d * (1 - 3 / (4 * (na + nb) - 9))


def _compare(x: np.ndarray, in_a: np.ndarray, stat, cfg: AuditConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """stat(x[a], x[b]) per column with bootstrap 95% intervals and two-sided permutation p-values."""
    rng = np.random.default_rng(cfg.seed)
    a, b = x[in_a], x[~in_a]
    est = stat(a, b)
    boots = np.stack([stat(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
                      for _ in range(cfg.bootstrap)])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    exceed = np.zeros(x.shape[1])
    for _ in range(cfg.permutations):
        perm = rng.permutation(in_a)
        exceed += np.abs(stat(x[perm], x[~perm])) >= np.abs(est) - 1e-12
    p = (exceed + 1) / (cfg.permutations + 1)
    return est, np.stack([lo, hi], 1), p


def _mean_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.mean(0) - b.mean(0)


@dataclass
class AuditResult:
    groups: tuple[str, str]
    counts: tuple[int, int]
    neurons: dict  # unit, g, ci, p, significant
    classes: dict  # name, sensitive, diff, ci, p, significant, top1_a, top1_b
    concepts: dict  # name, d, p, significant
    left_out: list  # (what, how many, why) left out, as every runner's result
    report: str = ""  # the store report written ("audits/NAME"; empty until saved)


def run_audit(model: LoadedModel, images: Sequence[Image.Image], groups: Sequence[str], layer: str,
              sensitive: Sequence[str], neutral: Sequence[str], concepts: dict[str, Sequence[str]],
              config: AuditConfig = AuditConfig(), left_out: list | None = None,
              context: str = "{}") -> AuditResult:
    """The three audits of the module docstring on ``images`` labelled with ``groups``.

    ``context`` puts each class name (b) and concept word (c) in the audited subject's context, e.g.
    ``"person, {}"``: the audit then asks which *description of the subject* the model prefers per group, and
    what the groups share (they are both persons; they differ in colour) drops out of the comparison."""
    if "{}" not in context:
        raise AuditError(f"context {context!r} must hold '{{}}' where the class name or word goes")
    from ..probes.zeroshot import zero_shot_head, zero_shot_logits

    names, counts = np.unique(np.asarray(groups), return_counts=True)
    if len(names) != 2:
        raise AuditError(f"an audit compares exactly 2 groups; the group labels hold {len(names)}: "
                         f"{', '.join(map(str, names[:6]))}")
    if counts.min() < config.min_group:
        raise AuditError(f"group {str(names[counts.argmin()])!r} has {counts.min()} images, fewer than {config.min_group}: "
                         "too few for a confident statement; add images or lower min_group knowingly")
    in_a = np.asarray(groups) == names[0]
    pixels = torch.stack([model.preprocess(im) for im in images])
    scores, img = pooled_activations(model, pixels, [layer], "mean")  # one pass: activations and embeddings
    acts = scores[layer].numpy()
    img = (img / img.norm(dim=1, keepdim=True)).numpy()

    g, g_ci, g_p = _compare(acts, in_a, _hedges_g, config)
    neurons = {"unit": np.arange(len(g)), "g": g, "ci": g_ci, "p": g_p, "significant": _bh(g_p, config.fdr)}

    cls = list(sensitive) + list(neutral)
    head = zero_shot_head(model, [context.format(c) for c in cls])
    scale = float(model.clip.logit_scale.exp().detach()) if hasattr(model.clip, "logit_scale") else 100.0
    probs = torch.softmax(scale * zero_shot_logits(model, head, pixels), dim=1).numpy()
    diff, d_ci, d_p = _compare(probs, in_a, _mean_diff, config)
    top1 = probs.argmax(1)
    material = (d_ci[:, 0] > config.min_effect) | (d_ci[:, 1] < -config.min_effect)
    classes = {"name": cls, "sensitive": np.array([c in sensitive for c in cls]), "diff": diff, "ci": d_ci,
               "p": d_p, "significant": _bh(d_p, config.fdr) & material,
               "top1_a": np.array([(top1[in_a] == k).mean() for k in range(len(cls))]),
               "top1_b": np.array([(top1[~in_a] == k).mean() for k in range(len(cls))])}

    concept = _associations(model, img, in_a, concepts, config, (context,))
    return AuditResult((str(names[0]), str(names[1])), (int(counts[0]), int(counts[1])), neurons, classes, concept,
                       list(left_out or []))


def _embed_words(model: LoadedModel, words: Sequence[str]) -> np.ndarray:
    with torch.no_grad():
        e = model.encode_text(list(words)).float().cpu()
    return (e / e.norm(dim=1, keepdim=True)).numpy()


def _associations(model: LoadedModel, img: np.ndarray, in_a: np.ndarray, concepts: dict[str, Sequence[str]],
                  cfg: AuditConfig, templates: Sequence[str] = ("{}",)) -> dict:
    """(c): per concept, the groups' difference in mean cosine with the concept's words (each word read
    through ``templates``, e.g. "person, {}"), with its Hedges' g and a bootstrap interval.

    The difference is judged against the *other* concepts, since two groups that look different differ a
    little along every word: T = diff - centre, the centre being the median difference of random word sets of
    the same size drawn from the other concepts' words.  A concept is reported when (1) |T| exceeds what
    those random word sets show (p_words), (2) |T| exceeds what random splits of the images into groups of
    the same sizes show (p_images: the test is calibrated for how much this concept varies between images),
    and (3) the interval of T clears +-min_association.  p = max(p_words, p_images) (both must reject),
    Benjamini-Hochberg across concepts."""
    names = list(concepts)
    words = list(dict.fromkeys(w for ws in concepts.values() for w in ws))
    emb = np.stack([_embed_words(model, [t.format(w) for w in words]) for t in templates]).mean(0)  # [W, D]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = img @ emb.T  # [N, W]
    index = {w: k for k, w in enumerate(words)}
    diff_w = sims[in_a].mean(0) - sims[~in_a].mean(0)  # [W] per-word group difference

    rng = np.random.default_rng(cfg.seed)
    perms = np.stack([rng.permutation(in_a) for _ in range(cfg.permutations)])  # [P, N] random splits
    weights = perms / perms.sum(1, keepdims=True) - ~perms / (~perms).sum(1, keepdims=True)
    diff_perm = weights @ sims  # [P, W] per-word differences under random splits
    out = {k: np.zeros(len(names)) for k in ("diff", "g", "p", "p_words", "p_images", "null_centre")}
    ci = np.zeros((len(names), 2))
    for k, c in enumerate(names):
        cols = np.array([index[w] for w in concepts[c]])
        others = np.array([i for i in range(len(words)) if words[i] not in set(concepts[c])])
        if len(others) < 2 * len(cols):
            raise AuditError(f"concept {c!r}: too few other concepts' words ({len(others)}) to judge it against; "
                             "give more concepts")
        s = sims[:, cols].mean(1)  # [N]
        out["diff"][k] = diff_w[cols].mean()
        out["g"][k] = _hedges_g(s[in_a, None], s[~in_a, None])[0]
        rand = diff_w[np.stack([rng.choice(others, len(cols), replace=False) for _ in range(cfg.permutations)])].mean(1)
        centre = np.median(rand)
        t = out["diff"][k] - centre
        out["null_centre"][k] = centre
        out["p_words"][k] = (1 + (np.abs(rand - centre) >= abs(t) - 1e-12).sum()) / (1 + cfg.permutations)
        t_perm = diff_perm[:, cols].mean(1) - np.median(diff_perm[:, others], axis=1)
        out["p_images"][k] = (1 + (np.abs(t_perm) >= abs(t) - 1e-12).sum()) / (1 + cfg.permutations)
        a, b = s[in_a], s[~in_a]
        boots = [a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
                 for _ in range(cfg.bootstrap)]
        ci[k] = np.percentile(boots, [2.5, 97.5])
    out["p"] = np.maximum(out["p_words"], out["p_images"])
    off = ci - out["null_centre"][:, None]
    material = (off[:, 0] > cfg.min_association) | (off[:, 1] < -cfg.min_association)
    return {"name": names, "d": out["diff"], "g": out["g"], "ci": ci, "p": out["p"], "p_words": out["p_words"],
            "p_images": out["p_images"], "null_centre": out["null_centre"],
            "significant": _bh(out["p"], cfg.fdr) & material, "templates": list(templates)}


def save_audit(store_path: str | os.PathLike, name: str, r: AuditResult, layer: str, config: AuditConfig) -> None:
    n, c, k = r.neurons, r.classes, r.concepts
    order = np.argsort(n["p"], kind="stable")
    store.write_report(store_path, "audits", name, {
        "neurons/unit": n["unit"][order].astype(np.int32), "neurons/g": n["g"][order], "neurons/ci": n["ci"][order],
        "neurons/p": n["p"][order], "neurons/significant": n["significant"][order],
        "classes/name": list(c["name"]), "classes/sensitive": c["sensitive"], "classes/diff": c["diff"],
        "classes/ci": c["ci"], "classes/p": c["p"], "classes/significant": c["significant"],
        "classes/top1_a": c["top1_a"], "classes/top1_b": c["top1_b"],
        "concepts/name": list(k["name"]), "concepts/d": k["d"], "concepts/g": k["g"], "concepts/ci": k["ci"],
        "concepts/p": k["p"], "concepts/p_words": k["p_words"], "concepts/p_images": k["p_images"],
        "concepts/null_centre": k["null_centre"], "concepts/significant": k["significant"]},
        {"groups": list(r.groups), "counts": list(r.counts), "layer": layer, "fdr": config.fdr,
         "bootstrap": config.bootstrap, "permutations": config.permutations, "min_effect": config.min_effect,
         "min_association": config.min_association, "context": k["templates"][0], "caveat": CAVEAT,
         "left_out": [list(x) for x in r.left_out], "config": to_json(config)})


def read_concepts(path: str | os.PathLike, option: str = "--concepts") -> dict[str, tuple[str, ...]]:
    """Concepts for an audit from a file: one per line, either ``word`` (the concept is that word) or
    ``name: word, word, ...`` (a concept and the words that express it).  AuditError naming the file and line
    for a line without a name or words, or a concept named twice."""
    from ..config import read_word_file

    concepts: dict[str, tuple[str, ...]] = {}
    for line in read_word_file(path, option):
        name, sep, rest = line.partition(":")
        name = name.strip()
        words = tuple(dict.fromkeys(w.strip() for w in rest.split(",") if w.strip())) if sep else (name,)
        if not name or not words:
            raise AuditError(f"{option} {path}: line {line!r} needs a concept name and at least one word "
                             "('name: word, word' or a single word)")
        if name in concepts:
            raise AuditError(f"{option} {path}: concept {name!r} is given twice; merge its words into one line")
        concepts[name] = words
    if len(concepts) < 3:
        raise AuditError(f"{option} {path} names {len(concepts)} concept(s); an audit judges each concept against "
                         "the others' words, so give at least 3")
    return concepts


def conceptworld_group_set(folder: str | os.PathLike, per_group: int = 150, seed: int = 20_000,
                           bias_attribute: str | None = None) -> Path:
    """Write Concept World persons of both groups, alone on varied backgrounds, with groups.csv: the audit set."""
    from ..data.conceptworld import World, WorldConfig

    world = World(WorldConfig(seed=seed, mix=(1, 0, 0, 0),
                              bias_attribute=bias_attribute or WorldConfig.bias_attribute))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    rows = []
    i = 0
    while min([counts.get(g, 0) for g in world.config.groups]) < per_group:
        it = world.item(i)
        i += 1
        if it.concepts != ("person",) or counts.get(it.group, 0) >= per_group:
            continue
        counts[it.group] = counts.get(it.group, 0) + 1
        name = f"{it.group}_{counts[it.group]:04d}.png"
        world.image(it).save(out / name)
        rows.append((name, it.group))
    with open(out / "groups.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group"])
        w.writerows(rows)
    return out / "groups.csv"


def audit_images(model: LoadedModel, store_path: str | os.PathLike, layer: str, csv_path: str | os.PathLike,
                 folder: str | os.PathLike, context: str = "{}", config=None, name: str = "audit",
                 concepts: dict[str, tuple[str, ...]] | None = None, sensitive: tuple[str, ...] = SENSITIVE,
                 concepts_from: str = "the concepts") -> AuditResult:
    """Audit the images a groups CSV names (relative to ``folder``) and save ``/audits/<name>``.  Concepts and
    classes default to Concept World's 40 non-person concepts, ``sensitive`` marking the negative ones; given
    ``concepts`` (`read_concepts`; ``concepts_from`` names where they came from, for errors), each word must be
    one the model's tokenizer can encode in ``context``."""
    from ..data.conceptworld.world import CONCEPTS

    config = config or AuditConfig()
    if concepts:
        from ..labels import check_vocabulary

        check_vocabulary(model, [w for ws in concepts.values() for w in ws], (context,), concepts_from)
    paths, groups, left = read_groups_csv(csv_path, folder)
    images, kept, unreadable = [], [], 0
    for p, g in zip(paths, groups):
        try:  # atlas's decoder, as for mining: bombs, truncated and non-image files refused, EXIF applied
            images.append(decode_image(p))
            kept.append(g)
        except BadImage:
            unreadable += 1
    if unreadable:
        left.append(("unreadable images", unreadable, "could not be decoded"))
    concepts = concepts or {c.name: c.words for c in CONCEPTS if c.name != "person"}
    unknown = [c for c in sensitive if c not in concepts]
    if unknown and sensitive != SENSITIVE:
        raise AuditError(f"sensitive concept(s) {', '.join(map(repr, unknown))} are not among the audit's concepts "
                         f"({', '.join(list(concepts)[:8])}{', ...' if len(concepts) > 8 else ''}); name them in "
                         "the concepts file or leave them out of --sensitive")
    neutral = [c for c in concepts if c not in sensitive]
    r = run_audit(model, images, kept, layer, [c for c in sensitive if c in concepts], neutral, concepts, config,
                  left, context=context)
    save_audit(store_path, name, r, layer, config)
    return replace(r, report=f"audits/{name}")
