"""Automatic labels for every unit of a mined layer: a ranked list of vocabulary entries per unit, each with the
evidence behind it and a sanity check (`label_units`, `atlas label`).

Two kinds of evidence, both kept in the store (docs/store.md, ``labels/``):

- *match* (CLIP-Dissect, Oikarinen & Weng 2023): the unit's activations over the probing images (the store's
  ``pooled`` matrix: each image's spatial mean) against each entry's probability over the same images, CLIP-Dissect's
  P: per image, the softmax over the whole vocabulary of ``config.scale`` x the cosine of the image embedding with
  the entry's text embedding (averaged over ``config.templates``; the model's own text tower).  The score is
  Pearson's correlation of the unit's activation *ranks* with P's column (`match_scores`).  Why these choices, each
  measured on the shipped model (docs/reports.md, "Automatic labels"): raw cosines put the planted concept on top
  of 23 of its 33 concept neurons and let common words that are close to every image compete with the concepts;
  the softmax over the vocabulary makes an entry score only on images the text tower gives to it rather than to
  another entry.  Ranks make the score depend on the order of the images, not on a few extreme activations (the
  multimodal neurons are defined by AUROC, an order statistic).  ``scale`` 100 is CLIP's logit scale (the cap
  of its training); CLIP-Dissect's soft-WPMI default of 10 leaves P nearly uniform over 4,795 entries.  Why not
  soft-WPMI itself: its PMI term favours rare words, and a text tower trained on 41 concepts gives ordinary English
  words embeddings that are noise (it put the planted concept on top for 5 to 18 of 33 concept neurons).
- *word*: the unit's response to the entry rendered as an image (the word-sensitivity report of
  `atlas attack words`, ``/attacks/<words_report>``, when it covers the layer and stores every response).

Combined score, per unit: z(match) + word_weight * z(word), each z-scored over the entries that have it (match:
the whole vocabulary; word: the rendered words), an entry without a rendered word taking 0 (no evidence either
way).  Both parts are stored beside the combined score.

Sanity check of each label: the average precision (AUPRC) of the unit's activations at finding the probing images
that show the entry, where the data says what they show (Concept World labels; else the caption's words and the
class), with a bootstrap interval for the top label; ``base_rate`` (the share of images that show it) is what a
unit with no information would score.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from . import store
from .config import LabelConfig, read_word_file, to_json
from .data.conceptworld import CONCEPT_NAMES, CONCEPTS
from .errors import ConfigError, LabelError, StoreError
from .models import LoadedModel
from .names import split_sae_layer
from .resources import resource_dir
from .search import unit_directions

WORD_TO_CONCEPT = {w: c.name for c in CONCEPTS for w in c.words}
NEAREST = 10  # vocabulary entries kept per unit closest to its text-tower direction


# ---- vocabulary ---------------------------------------------------------------------------------------------------
def common_words(n: int = 5000) -> tuple[list[str], str]:
    """(words, where from): wordfreq's top ``n`` English words if wordfreq is installed, else the list shipped in
    data/words-en.txt (made from wordfreq 3.1.1's top 5,000); ASCII letters only, 3 letters or more."""
    try:
        import wordfreq

        words = [w for w in wordfreq.top_n_list("en", n) if w.isalpha() and w.isascii() and len(w) >= 3]
        return words, f"wordfreq {getattr(wordfreq, '__version__', '?')} top {n}"
    except ImportError:
        path = resource_dir("data") / "words-en.txt"
        return read_vocabulary(path), f"shipped {path.name}"


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """One entry per line ('#' starts a comment line), stripped, duplicates dropped (`read_word_file`); LabelError
    when the file is missing or holds none."""
    try:
        return read_word_file(path, "--vocab")
    except ConfigError as e:
        raise LabelError(f"{e} (or leave out --vocab for the default vocabulary)") from e


def class_names(labels: Sequence[str], conceptworld: bool) -> list[str]:
    """The data's class names: Concept World's concepts, else the distinct non-empty labels (at most 1,000)."""
    if conceptworld:
        return list(CONCEPT_NAMES)
    names = sorted({lab for lab in labels if lab})
    return names if len(names) <= 1000 else []


def check_vocabulary(model: LoadedModel, words: Sequence[str], templates: Sequence[str], where: str) -> None:
    """LabelError naming the entry and ``where`` it came from if the tokenizer cannot encode an entry: empty after
    the tokenizer's cleaning, or (in some template) longer than the text tower's context."""
    tok = model.tokenizer
    encode = getattr(tok, "encode", None)
    ctx = getattr(tok, "context_length", None)
    for i, w in enumerate(words):
        if encode is None:
            break
        if not encode(w):
            raise LabelError(f"vocabulary entry {i + 1} of {where} ({w!r}) is empty once the tokenizer cleans it; "
                             "remove it from the vocabulary")
        for t in templates:
            n = len(encode(t.format(w))) + 2  # start and end tokens
            if ctx and n > ctx:
                raise LabelError(f"vocabulary entry {i + 1} of {where} ({w[:40]!r}) takes {n} tokens in the prompt "
                                 f"{t!r}; the text tower reads {ctx}: shorten or remove it")


def text_matrix(model: LoadedModel, words: Sequence[str], templates: Sequence[str], batch: int = 1024) -> torch.Tensor:
    """[C, D] unit-norm text embeddings: per entry, the mean of its normalized embeddings over the templates."""
    out = torch.zeros(0)
    with torch.no_grad():
        for t in templates:
            e = torch.cat([model.encode_text([t.format(w) for w in words[i:i + batch]]).float().cpu()
                           for i in range(0, len(words), batch)])  # [C, D]
            e = e / e.norm(dim=1, keepdim=True)
            out = e if out.numel() == 0 else out + e
    return out / out.norm(dim=1, keepdim=True)


# ---- scores -------------------------------------------------------------------------------------------------------
def _standardized(x: torch.Tensor) -> torch.Tensor:
    """Columns of [n, m] to mean 0 and (population) std 1; constant columns become NaN."""
    x = x.double()
    std = x.std(0, unbiased=False)
    return (x - x.mean(0)) / torch.where(std > 0, std, torch.tensor(float("nan"), dtype=x.dtype))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """[n, U] ranks 1..n of each column's values, tied values sharing their mean rank (scipy's rankdata)."""
    cols = x.double().t().contiguous()  # [U, n]
    ordered = cols.sort(dim=1).values
    below = torch.searchsorted(ordered, cols, right=False).double()  # values smaller
    upto = torch.searchsorted(ordered, cols, right=True).double()  # values smaller or equal
    return ((below + upto + 1) / 2).t()


def _log_normalizer(sims: torch.Tensor, scale: float, chunk: int = 1024) -> torch.Tensor:
    """[n, 1] float64 log of each image's softmax denominator over the vocabulary (rows of sims [n, C])."""
    return torch.cat([torch.logsumexp(scale * sims[i:i + chunk].double(), 1, keepdim=True)
                      for i in range(0, sims.shape[0], chunk)])


def vocabulary_probabilities(sims: torch.Tensor, scale: float) -> torch.Tensor:
    """[n, C] float64: per image (row of the image-text cosines sims [n, C]), the softmax over the vocabulary of
    scale x cosine: CLIP-Dissect's P, the text tower's belief that the image shows each entry."""
    return torch.exp(scale * sims.double() - _log_normalizer(sims, scale))


def match_scores(acts: torch.Tensor, sims: torch.Tensor, scale: float, chunk: int = 1024) -> torch.Tensor:
    """[U, C] the *match* evidence: Pearson correlation of each unit's activation ranks (acts [n, U]) with each
    entry's probability P (`vocabulary_probabilities` of the image-text cosines sims [n, C]) over the same n
    images, P made ``chunk`` entries at a time in float64; NaN for a unit constant over the images, 0 for an entry
    whose P is (to float64) constant."""
    ranks = _standardized(average_ranks(acts))  # [n, U]
    n, lse = ranks.shape[0], _log_normalizer(sims, scale)  # [n, 1]
    out = []
    for i in range(0, sims.shape[1], chunk):
        p = torch.exp(scale * sims[:, i:i + chunk].double() - lse)  # [n, chunk] P's columns
        out.append(ranks.t() @ torch.nan_to_num(_standardized(p), nan=0.0) / n)
    return torch.cat(out, 1)


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    """Each row of [U, m] to mean 0, std 1 over its finite entries (rows without spread: 0)."""
    out = np.zeros(x.shape)
    live = np.isfinite(x).any(1)  # rows all NaN (constant units) stay 0
    mean = np.nanmean(x[live], 1, keepdims=True)
    std = np.nanstd(x[live], 1, keepdims=True)
    out[live] = np.where(std > 0, (x[live] - mean) / np.where(std > 0, std, 1), 0.0)
    return out


def average_precision(score: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Average precision of ``score`` [n] at finding ``truth`` [n] bool, as scikit-learn's
    average_precision_score defines it (tied scores are one threshold): sum over thresholds of the recall step times
    the precision.  With ``weights`` [B, n] (bootstrap counts of each image) one value per row: [B]; else a 0-d
    array.  NaN when no weighted positive."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], truth[order].astype(np.float64)
    w = np.ones((1, len(s))) if weights is None else weights[:, order].astype(np.float64)  # [B, n]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last image of each group of tied scores
    tp = np.cumsum(w * y, 1)[:, ends]
    seen = np.cumsum(w, 1)[:, ends]
    pos = tp[:, -1:]
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    step = np.diff(np.concatenate([np.zeros((len(w), 1)), tp], 1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (step * precision).sum(1) / pos[:, 0]
    return ap if weights is not None else ap[0]


class Presence:
    """Which probing images show a vocabulary entry, where the data says: Concept World labels (``kind:a+b/c``: the
    pictograms and the written word's concept; an entry counts as its concept when it is one of its words), else
    the caption's words and the class label.  ``known(word)`` is False when no image could show it."""

    def __init__(self, labels: Sequence[str], captions: Sequence[str], conceptworld: bool):
        self.conceptworld = conceptworld
        if conceptworld:
            self.sets = [set(re.split(r"[:+/]", lab)[1:]) if lab else set() for lab in labels]
        else:
            self.sets = [set(re.findall(r"\w+", cap.lower())) | ({lab.lower()} if lab else set())
                         for cap, lab in zip(captions, labels)]
        self._cache: dict[str, np.ndarray] = {}

    def key(self, word: str) -> str:
        w = word.lower()
        return WORD_TO_CONCEPT.get(w, w) if self.conceptworld else w

    def __call__(self, word: str) -> np.ndarray:
        k = self.key(word)
        if k not in self._cache:
            self._cache[k] = np.fromiter((k in s for s in self.sets), bool, len(self.sets))
        return self._cache[k]


# ---- the labeller -------------------------------------------------------------------------------------------------
@dataclass
class LayerLabels:
    """Labels of one layer: per unit its ``top`` best entries (best first) and its top label's check."""

    layer: str
    concept: list[list[str]]  # [U][top] ("" where a unit has no label: constant over the probing images)
    score: np.ndarray  # [U, top] combined score
    match: np.ndarray  # [U, top] Pearson r of activation ranks and the entry's probability P
    word: np.ndarray  # [U, top] z of the rendered-word response (NaN: the entry was not rendered)
    auprc: np.ndarray  # [U, top] AUPRC of activations at finding images that show the entry (NaN: unknown)
    check_auprc: np.ndarray  # [U] the top label's AUPRC, check_ci [U, 2] its bootstrap interval
    check_ci: np.ndarray
    check_base_rate: np.ndarray  # [U] share of probing images that show the top label (NaN: unknown)
    attrs: dict = field(default_factory=dict)
    nearest_words: list[list[str]] | None = None  # [U][NEAREST] closest entries to the unit's direction, or None
    nearest_cos: np.ndarray | None = None  # [U, NEAREST] their cosines, best first

    def top1(self) -> list[str]:
        return [c[0] if c else "" for c in self.concept]


def _words_evidence(st: store.Store, name: str, layer: str, units: int) -> tuple[list[str], np.ndarray] | None:
    """(words, [W, U] responses) of the word-sensitivity report ``name`` if it covers ``layer`` with every
    response stored; else None."""
    if name not in st.reports("attacks"):
        return None
    arrays, attrs = store.read_report(st, "attacks", name)
    if attrs.get("layer") != layer or "responses" not in arrays or arrays["responses"].shape[1] != units:
        return None
    return list(arrays["words"]), arrays["responses"].astype(np.float64)


def probe_images(model: LoadedModel, store_path: str | os.PathLike, rows: np.ndarray, batch: int = 256
                 ) -> torch.Tensor:
    """[n, D] unit-norm image embeddings of the store's images ``rows`` (its source reopened and checked)."""
    from .verify import source_of

    source = source_of(store_path)
    embs = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            pix = torch.stack([model.preprocess(source.sample(int(r)).image) for r in rows[i:i + batch]])
            embs.append(model.encode_image(pix.to(model.device)).float().cpu())  # [b, D]
    e = torch.cat(embs)
    return e / e.norm(dim=1, keepdim=True)


def probe_forward(model: LoadedModel, source, indices: Sequence[int], layers: Sequence[str], summary: str,
                  batch: int = 256) -> tuple[dict[str, np.ndarray], torch.Tensor, np.ndarray]:
    """Run the images ``indices`` of ``source`` through the model once: ({layer: [n, U] spatial ``summary`` of each
    unit's map}, [n, D] unit-norm image embeddings, [n] the indices whose image decoded, in order)."""
    from .capture import pooled_activations

    acts: dict[str, list[torch.Tensor]] = {x: [] for x in layers}
    embs, kept = [], []
    for i in range(0, len(indices), batch):
        samples = [source.sample(int(j)) for j in indices[i:i + batch]]
        good = [s for s in samples if s.image is not None]
        if not good:
            continue
        pix = torch.stack([model.preprocess(s.image) for s in good])
        per_layer, emb = pooled_activations(model, pix, layers, summary, batch)  # {layer: [b, U]}, [b, D]
        for x in layers:
            acts[x].append(per_layer[x])
        embs.append(emb)
        kept += [s.index for s in good]
    if not embs:
        raise LabelError(f"no probing image of {source.description} could be decoded; pass another --probe-data")
    e = torch.cat(embs)
    return {x: torch.cat(a).numpy() for x, a in acts.items()}, e / e.norm(dim=1, keepdim=True), np.array(kept)


def label_layer(layer: str, acts: np.ndarray, sims: torch.Tensor, vocab: Sequence[str], presence: Presence,
                config: LabelConfig, words: tuple[list[str], np.ndarray] | None = None) -> LayerLabels:
    """Labels of one layer from its activations acts [n, U] over the probing images, the entries' image-text
    similarities sims [n, C] over the same images, and optionally the rendered-word evidence (words, [W, U])."""
    S = match_scores(torch.from_numpy(acts), sims, config.scale).numpy()  # [U, C]
    dead = ~np.isfinite(S).all(1)
    combined = _zscore_rows(S)
    word_z = np.full(S.shape, np.nan)
    if words is not None:
        at = {w: i for i, w in enumerate(words[0])}
        cols = [j for j, v in enumerate(vocab) if v in at]
        resp = words[1][[at[vocab[j]] for j in cols]].T  # [U, k] responses to the rendered entries
        word_z[:, cols] = _zscore_rows(resp)
        combined = combined + config.word_weight * np.nan_to_num(word_z, nan=0.0)
    k = min(config.top, len(vocab))
    top = np.argsort(-combined, 1, kind="stable")[:, :k]  # [U, k]
    take = lambda x: np.take_along_axis(x, top, 1).astype(np.float32)
    concept = [[vocab[j] for j in row] if not d else [""] * k for row, d in zip(top, dead)]
    score, match, wz = take(combined), take(S), take(word_z)
    for x in (score, match, wz):
        x[dead] = np.nan
    auprc = np.full(top.shape, np.nan, np.float32)
    check = np.full(len(top), np.nan, np.float32)
    ci = np.full((len(top), 2), np.nan, np.float32)
    base = np.full(len(top), np.nan, np.float32)
    rng = np.random.default_rng(config.seed)
    n = acts.shape[0]
    boot = rng.multinomial(n, np.full(n, 1 / n), size=config.bootstrap)  # [B, n] counts, the same for every unit
    for u in np.nonzero(~dead)[0]:
        for j in range(k):
            y = presence(concept[u][j])
            if y.any():
                auprc[u, j] = average_precision(acts[:, u], y)
        y = presence(concept[u][0])
        if y.any():
            check[u], base[u] = auprc[u, 0], y.mean()
            ci[u] = np.nanpercentile(average_precision(acts[:, u], y, boot), [2.5, 97.5])
    attrs = {"dead_units": int(dead.sum()),
             "dead_units_why": "units constant over the probing images: no correlation, no label (empty, NaN)",
             "unchecked_units": int((~dead & ~np.isfinite(check)).sum()),
             "unchecked_why": "the top label is shown by no probing image the data describes: AUPRC unknown (NaN)",
             "word_evidence": words is not None,
             "word_missing_why": "NaN in word: the entry was not among the rendered words"}
    return LayerLabels(layer, concept, score, match, wz, auprc, check, ci, base, attrs)


def nearest_entries(directions: np.ndarray, text: np.ndarray, vocab: Sequence[str], k: int = NEAREST
                    ) -> tuple[list[list[str]], np.ndarray]:
    """(entries [U][k], cosines [U, k] float32) of the ``k`` vocabulary entries whose unit-norm text embeddings
    text [C, D] have the largest cosine with each unit-norm direction [U, D], best first (ties: vocabulary order)."""
    cos = directions.astype(np.float64) @ text.astype(np.float64).T  # [U, C]
    top = np.argsort(-cos, 1, kind="stable")[:, :min(k, len(vocab))]  # [U, k]
    return [[vocab[j] for j in row] for row in top], np.take_along_axis(cos, top, 1).astype(np.float32)


@dataclass
class LabelResult:
    layers: list[LayerLabels]
    vocab: list[str]
    vocab_source: str
    images: int  # probing images used
    left_out: list = field(default_factory=list)  # (what, how many, why)


def _usable_rows(acts: dict[str, np.ndarray], status: np.ndarray) -> tuple[np.ndarray, list]:
    """(rows of images decoded when mined whose activations are finite in every layer, what was left out and why)."""
    finite = np.all([np.isfinite(a).all(1) for a in acts.values()], 0)
    left = [("skipped images", int((status != 0).sum()), "not decodable when mined (NaN rows)")] \
        if (status != 0).any() else []
    if ((status == 0) & ~finite).any():
        left.append(("images with a non-finite activation", int(((status == 0) & ~finite).sum()),
                     "the model's own inf/NaN (stats/nonfinite_maps): left out of every score"))
    return np.nonzero((status == 0) & finite)[0], left


def _forward_probe(model: LoadedModel, store_path, config: LabelConfig, layers: Sequence[str], status: np.ndarray,
                   progress: Callable[[str], None] | None):
    """The probing images run through the model (`probe_forward`): the store's own decoded images, or
    ``config.probe_data``'s; returns (acts, embeddings, rows, left out, labels, captions, is Concept World)."""
    from .data import open_source
    from .verify import source_of

    if config.probe_data:
        try:
            source = open_source(config.probe_data)
        except Exception as e:  # the source's own message says what is wrong with the spec
            raise LabelError(f"--probe-data {config.probe_data!r}: {e}") from e
        wanted = np.arange(len(source))
    else:
        source, wanted = source_of(store_path), np.nonzero(status == 0)[0]
    if progress:
        progress(f"running {len(wanted)} probing images of {source.description} through the model "
                 f"(spatial {config.summary})")
    acts, images, kept = probe_forward(model, source, wanted, layers, config.summary)
    rows, left = _usable_rows(acts, np.zeros(len(kept), np.int8))
    if len(kept) < len(wanted):
        left.insert(0, ("undecodable probing images", len(wanted) - len(kept), "the source could not decode them"))
    entries = [source.entries[int(i)] for i in kept[rows]]
    cw = source.description.startswith("conceptworld:")
    labels = np.array([e.label for e in entries], dtype=object)
    captions = np.array([e.caption for e in entries], dtype=object)
    return {x: a[rows] for x, a in acts.items()}, images[torch.from_numpy(rows)], kept[rows], left, labels, captions, cw


def label_units(model: LoadedModel, store_path: str | os.PathLike, layers: Sequence[str] | None = None,
                vocab_file: str | os.PathLike | None = None, config: LabelConfig | None = None, write: bool = True,
                progress: Callable[[str], None] | None = None) -> LabelResult:
    """Label every unit of ``layers`` (default: every mined layer) of the store, mined from ``model``; written to
    ``/neurons/<model>/<layer>/labels`` unless ``write`` is False.  Vocabulary: ``vocab_file`` (one entry a line)
    or common English words plus the data's class names (`common_words`, `class_names`)."""
    config = config or LabelConfig(vocab=str(vocab_file) if vocab_file else "default")
    with store.Store(store_path) as st:
        meta = st.meta
        if meta.get("weights_sha256") != model.weights_sha256 or meta.get("model_name") != model.name:
            raise StoreError(f"store {store_path} was mined from {meta.get('model_spec')} (weights "
                             f"{str(meta.get('weights_sha256'))[:12]}), not from {model.spec}; pass --model "
                             f"{meta.get('model_spec')}")
        names = [ld.name for ld in st.layers(model.name)] if model.name in st.models() else []
        layers = list(layers or names)
        missing = [x for x in layers if x not in names]
        if missing or not layers:
            raise StoreError(f"store {store_path} has no mined layer {', '.join(missing) or '(none at all)'} of "
                             f"model {model.name}; pass --layer one of: {', '.join(names) or 'none: run atlas mine'}")
        forward = config.probe_data is not None or config.summary != "mean"
        virtual = [x for x in layers if split_sae_layer(x)]
        if forward and virtual:
            raise LabelError(f"layer {virtual[0]} is an SAE's virtual layer: label it from the store's pooled "
                             "activations (leave out --probe-data and --summary max)")
        acts = {}
        for x in layers if not forward else []:
            ld = st.layer(model.name, x)
            if not ld.has("pooled"):
                raise StoreError(f"layer {x} of store {store_path} keeps no pooled activations; mine it again "
                                 "without --no-pooled to label it")
            acts[x] = ld["pooled"]  # [N, U]
        status = st.image_column("status")
        labels, captions = st.image_column("label"), st.image_column("caption")
        units = {x: st.layer(model.name, x).units for x in layers}
        words = {x: _words_evidence(st, config.words_report, x, units[x]) for x in layers}
    cw = str(meta.get("data_source", "")).startswith("conceptworld:")
    if vocab_file:
        vocab, source = read_vocabulary(vocab_file), str(vocab_file)
    else:
        common, source = common_words()
        vocab = list(dict.fromkeys(class_names(labels, cw) + common))
        source = f"{'Concept World concepts' if cw else 'class names'} + {source}"
    check_vocabulary(model, vocab, config.templates, f"--vocab {vocab_file}" if vocab_file else source)
    if progress:
        progress(f"embedding {len(vocab)} vocabulary entries")
    text = text_matrix(model, vocab, config.templates)  # [C, D]
    if forward:
        acts, images, rows, left, labels, captions, cw = _forward_probe(model, store_path, config, layers, status,
                                                                        progress)
    else:
        rows, left = _usable_rows(acts, status)
        labels, captions = labels[rows], captions[rows]
        acts = {x: a[rows] for x, a in acts.items()}
        if progress:
            progress(f"embedding {len(rows)} probing images")
        images = probe_images(model, store_path, rows)  # [n, D]
    if len(rows) < 2:
        raise StoreError(f"store {store_path} has {len(rows)} usable probing images; labels need at least 2")
    sims = images @ text.t()  # [n, C]
    presence = Presence(labels, captions, cw)
    result = LabelResult([], vocab, source, len(rows), left)
    for x in layers:
        if progress:
            progress(f"labelling {x}")
        lab = label_layer(x, acts[x], sims, vocab, presence, config, words[x])
        dirs = unit_directions(model, store_path, x)  # [U, D] or None (an SAE layer: its decoder rows through them)
        if dirs is not None:
            lab.nearest_words, lab.nearest_cos = nearest_entries(dirs, text.numpy(), vocab)
        result.layers.append(lab)
    if write:
        vocab_sha = hashlib.sha256("\n".join(vocab).encode()).hexdigest()
        for lab in result.layers:
            nearest = {} if lab.nearest_cos is None else {"nearest_words": lab.nearest_words,
                                                           "nearest_cos": lab.nearest_cos}
            store.write_check(store_path, model.name, lab.layer, "labels", {
                "concept": lab.concept, "score": lab.score, "match": lab.match,
                "word": lab.word, "auprc": lab.auprc, "check_auprc": lab.check_auprc, "check_ci": lab.check_ci,
                "check_base_rate": lab.check_base_rate, **nearest}, {
                "config": to_json(config), "vocab_source": source, "vocab_size": len(vocab),
                "vocab_sha256": vocab_sha, "images": len(rows), "top": lab.score.shape[1],
                "left_out": [list(x) for x in left], **lab.attrs})
    return result

