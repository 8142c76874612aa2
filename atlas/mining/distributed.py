"""Data-parallel mining: `torchrun --nproc-per-node N [--nnodes M] -m atlas mine ...` mines one store on N x M
processes, and the store is the one a single process makes.

How (`atlas.mining.loop.mine` calls into this module at four points: `join`, `Team.lock`, `Team.part`, `merge`):

- **Split.**  The image index is cut into the fixed batches of a one-process run ([i, i + batch) slices); rank r
  takes the contiguous run of batches [r * nb / W, (r + 1) * nb / W) (nb batches, W ranks).  Every batch is the
  same slice as in one process, so each image's activations, scores and maps are the same numbers, and a rank's
  images are a contiguous run of the index (for tar shards: about 1/W of the shards, at most one shared with the
  next rank).
- **Mining.**  Each rank runs the ordinary loop over its part with its own checkpoints and memmaps in
  ``<store>.work/mine-<digest>/rank<r>-of-<W>/``: its top-k, statistics and pooled rows (a [its images, U] matrix),
  and per batch the count, mean and M2 of the batch's finite scores (`RankLayerState`, [its batches, 3, U]
  float64: the "partials").  The store path must be on a file system every rank sees (several nodes: a shared
  one).  A killed rank (torchrun then stops the others) resumes from its own checkpoint when the same command is
  run again; a rerun with another number of processes is refused (`Team.part`), since a part's checkpoint holds
  that part only.
- **Merge** (rank 0, after a barrier; the others exit).  Top-k: every rank's k entries per unit sorted as mining
  sorts candidates (by value, descending, then by image index, empty slots last), the first k kept with their
  argmax and maps: exact.  Counts, positives, non-finite counts: sums; min, max: min, max; histograms: each widened
  to the largest range as mining widens them (bins merge exactly), then summed: exact.  Mean and M2: the batches'
  partials folded in the order of the one-process run with the formula of `atlas.kernels.stats.score_stats_torch`,
  so on the CPU they are bit for bit the one-process numbers; where a rank replayed batches from CUDA graphs (no
  partials), ranks are merged by Chan et al.'s formula instead (equal to float64 rounding).  Pooled matrices are
  read from the ranks' files in blocks (`Stitched`) by the commit's chunked, threaded writer, the thumbnails from
  those the ranks' decoding processes made (`atlas.mining.thumbs.UnionThumbs`).
- **One writer.**  Rank 0 holds the store's lock for the whole run and alone writes the store, which is one
  self-contained HDF5 file (docs/scale.md: why not shards of the store).

Collectives are few and small (settings, the lock's outcome, one barrier), over gloo on every device, so NCCL is not
needed; the numbers travel through the work folder.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import store
from ..errors import AtlasError
from ..kernels import stats
from .layerstate import LayerState
from .thumbs import PassThumbs, UnionThumbs

__all__ = ["DistributedError", "Part", "RankLayerState", "Stitched", "Team", "is_leader", "join", "local_device",
           "local_share", "merge"]

TIMEOUT_S = float(os.environ.get("ATLAS_DIST_TIMEOUT", 4 * 3600))  # how long a rank waits for the others


class DistributedError(AtlasError, RuntimeError):
    """Processes started together that cannot work together; the message says what to do."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r} is not a whole number; start atlas with "
                               "torchrun, which sets it, or unset it") from None


def is_leader() -> bool:
    """Whether this process is rank 0 (or alone): the one that writes the store."""
    return _env_int("RANK", 0) == 0


def local_device(device: str) -> str:
    """Under torchrun with GPUs, "auto" and "cuda" mean this process's own GPU, cuda:LOCAL_RANK."""
    if _env_int("WORLD_SIZE", 1) > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{_env_int('LOCAL_RANK', 0) % torch.cuda.device_count()}"
    return device


def local_share(workers: int) -> int:
    """The decoding processes that fit the machine (``workers``) shared among torchrun's processes on this host
    (LOCAL_WORLD_SIZE): each rank's own, at least one where there were any."""
    local = _env_int("LOCAL_WORLD_SIZE", 1)
    return workers if local <= 1 or workers <= 0 else max(1, workers // local)


@dataclass(frozen=True)
class Part:
    """One rank's part of a mining pass: images [start, stop) and its work folder."""

    work: Path
    start: int
    stop: int
    rank: int = 0
    world: int = 1
    batch_size: int = 1

    @property
    def batches(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def matrix(self, name: str, units: int, n_images: int) -> np.ndarray | "_Offset":
        """A pooled matrix kept on disk between checkpoints: [N, U] float32 alone; a rank's rows only otherwise."""
        rows = n_images if self.world == 1 else max(1, self.stop - self.start)
        m = _memmap(self.work / name, np.float32, (rows, units))
        return m if self.world == 1 else _Offset(m, self.start)

    def layer_state(self, info, config, device: torch.device, pooled, cls) -> LayerState:
        if self.world == 1:
            return LayerState(info, config, device, pooled, cls)
        return RankLayerState(info, config, device, pooled, cls, part=self)


def _partials(work: Path, layer: str, suffix: str = "") -> Path:
    """A rank's per-batch moments of ``layer`` (an SAE's layer/saeN: one file, as loop._open_states names them)."""
    return work / f"partials-{layer.replace('/', '~')}{suffix}.npy"


def _memmap(path: Path, dtype: type, shape: tuple) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="r+" if path.exists() else "w+", dtype=dtype, shape=shape)


class _Offset:
    """A rank's [its images, U] memmap addressed by global image index (what `LayerState.drain` writes)."""

    def __init__(self, m: np.ndarray, start: int):
        self.m, self.start = m, start

    def __setitem__(self, index: np.ndarray, rows: np.ndarray) -> None:
        self.m[np.asarray(index) - self.start] = rows

    def flush(self) -> None:
        self.m.flush()


def batch_moments(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n_b [U] int64, mean_b, m2_b [U] float64) of a batch's finite scores [B, U], by the operations of
    `atlas.kernels.stats.score_stats_torch` (tests/test_distributed.py: merged stores are bit for bit the
    one-process store)."""
    s = score.t().double()  # [U, B]
    return stats.batch_moments(s, torch.isfinite(s))


class RankLayerState(LayerState):
    """A `LayerState` that also keeps each batch's moments (`batch_moments`) in a memmap of the rank's work folder
    ([its batches, 3, U] float64, and a flag per batch), for the exact merge.  Batches replayed from CUDA graphs
    (``inplace``) run no Python and are not kept: their merge falls back to Chan's formula over ranks."""

    def __init__(self, info, cfg, device, pooled=None, pooled_cls=None, backend=None, *, part: Part):
        super().__init__(info, cfg, device, pooled, pooled_cls, backend)
        self.part = part
        rows = max(1, part.batches)
        self.partials = _memmap(_partials(part.work, info.name), np.float64, (rows, 3, info.units))
        self.partials_done = _memmap(_partials(part.work, info.name, "-done"), np.uint8, (rows,))
        self._batch: int | None = None

    def update(self, index: torch.Tensor, out: torch.Tensor, reduced=None) -> None:
        self._batch = None if self.inplace else (int(index[0]) - self.part.start) // self.part.batch_size
        super().update(index, out, reduced)

    def _update_stats(self, score: torch.Tensor, backend: str | None = "torch") -> None:
        super()._update_stats(score, backend)
        if self._batch is not None:
            self.partials[self._batch] = torch.stack([t.double() for t in batch_moments(score)]).cpu().numpy()
            self.partials_done[self._batch] = 1

    def state_dict(self) -> dict[str, np.ndarray]:
        self.partials.flush()  # with the checkpoint that counts these batches as done
        self.partials_done.flush()
        return super().state_dict()


class Stitched:
    """The ranks' pooled files read as one [N, U] matrix: ``m[a:b]`` concatenates the rows of the ranks that hold
    them (what `atlas.store.put_rows` reads, one block at a time)."""

    def __init__(self, parts: list[tuple[int, int, np.ndarray]], n: int, units: int):
        self.parts, self.shape, self.dtype = parts, (n, units), np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("Stitched reads contiguous row slices only")
        a, b, _ = key.indices(self.shape[0])
        pieces = [m[max(a, lo) - lo:min(b, hi) - lo] for lo, hi, m in self.parts if max(a, lo) < min(b, hi)]
        return np.concatenate(pieces) if pieces else np.zeros((0, self.shape[1]), np.float32)


@dataclass(frozen=True)
class Team:
    """This process among the ranks of a torchrun job (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def agree(self, what: str, value: str = "", error: str | None = None) -> None:
        """Every rank states ``value`` (and its ``error``, if any); all raise if one failed or the values differ."""
        if self.world == 1:
            if error:
                raise DistributedError(error)
            return
        said: list = [None] * self.world
        torch.distributed.all_gather_object(said, (value, error))
        failed = [(r, e) for r, (_, e) in enumerate(said) if e]
        if failed:
            r, e = failed[0]
            raise DistributedError(e if r == self.rank else f"rank {r} stopped: {e}")
        differ = [r for r, (v, _) in enumerate(said) if v != said[0][0]]
        if differ:
            raise DistributedError(f"ranks {differ} have other {what} than rank 0 ({said[differ[0]][0]} against "
                                   f"{said[0][0]}); start every rank with the same command, data and atlas version")

    @contextmanager
    def lock(self, path: Path) -> Iterator[None]:
        """Rank 0 holds the store's writer lock for the block; every rank fails if it cannot."""
        if self.world == 1:
            with store.lock(path):
                yield
            return
        held = store.lock(path) if self.leader else None
        error = None
        if held is not None:
            try:
                held.__enter__()
            except store.StoreError as e:
                error, held = str(e), None
        try:
            self.agree("store lock", "", error)
            yield
        finally:
            if held is not None:
                held.__exit__(None, None, None)

    def part(self, work: Path, n_images: int, batch_size: int) -> Part:
        """This rank's images and work folder; refuses a work folder left by a run on another number of ranks."""
        nb = -(-n_images // batch_size)
        lo, hi = self.rank * nb // self.world * batch_size, (self.rank + 1) * nb // self.world * batch_size
        mine_dir = work if self.world == 1 else work / f"rank{self.rank}-of-{self.world}"
        others = sorted(p.name for p in work.glob("rank*-of-*") if p.name != mine_dir.name)
        if self.world > 1 and (work / "checkpoint.npz").exists():
            others.append("checkpoint.npz (one process)")
        error = None
        if others and not (self.world > 1 and all(o.endswith(f"-of-{self.world}") for o in others)):
            error = (f"{work} holds checkpoints of a run on another number of processes ({', '.join(others[:3])}); "
                     f"rerun with that number (torchrun --nproc-per-node x --nnodes = the W of rank<r>-of-<W>), or "
                     f"delete {work} to start over")
        self.agree("checkpoints", "", error)
        mine_dir.mkdir(parents=True, exist_ok=True)
        return Part(mine_dir, min(lo, n_images), min(hi, n_images), self.rank, self.world, batch_size)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def join() -> Team:
    """This process's `Team`: alone unless WORLD_SIZE > 1 (torchrun), then the process group is started (gloo)."""
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if world <= 1:
        return Team()
    import torch.distributed as dist

    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))
        except Exception as e:  # noqa: BLE001 -- every failure to start says the same thing
            raise DistributedError(
                f"WORLD_SIZE={world} is set (RANK={rank}), but the process group did not start "
                f"({type(e).__name__}: {e}); start atlas with torchrun (torchrun --nproc-per-node N -m atlas mine ...), "
                "which sets MASTER_ADDR and MASTER_PORT, or unset WORLD_SIZE and RANK to mine in one process") from e
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise DistributedError(f"the process group has {dist.get_world_size()} ranks (this one {dist.get_rank()}) "
                               f"but WORLD_SIZE={world}, RANK={rank}; start atlas with torchrun")
    return Team(rank, world)


# --- the merge (rank 0) ------------------------------------------------------------------------------------
def _rank_parts(team: Team, work: Path, n_images: int, batch_size: int) -> list[Part]:
    nb = -(-n_images // batch_size)
    return [Part(work / f"rank{r}-of-{team.world}", min(r * nb // team.world * batch_size, n_images),
                 min((r + 1) * nb // team.world * batch_size, n_images), r, team.world, batch_size)
            for r in range(team.world)]


def merge(team: Team, work: Path, todo: list, config, n_images: int, log=None,
          thumbs: int = 0) -> tuple[dict[str, LayerState], dict[str, object], UnionThumbs | None]:
    """Rank 0, after the barrier: every rank's final checkpoint merged into CPU `LayerState`s whose pooled matrices
    read the ranks' files, the image state (status, sha256, messages) of the whole index, and the thumbnails the
    ranks' decoding processes made (``thumbs``: their side T, 0 if none were made)."""
    parts = _rank_parts(team, work, n_images, config.batch_size)
    loaded = []
    for p in parts:
        ckpt = p.work / "checkpoint.npz"
        if not ckpt.exists():
            raise DistributedError(f"rank {p.rank} left no checkpoint in {p.work}; run the same command again")
        with np.load(ckpt, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if int(arrays["position"]) != p.stop:
            raise DistributedError(f"rank {p.rank} stopped at image {int(arrays['position'])} of its part "
                                   f"[{p.start}, {p.stop}); run the same command again to finish it")
        loaded.append(arrays)
    status, sha, messages = np.zeros(n_images, np.uint8), np.zeros(n_images, "S64"), {}
    for p, z in zip(parts, loaded):
        status[p.start:p.stop], sha[p.start:p.stop] = z["status"][p.start:p.stop], z["sha256"][p.start:p.stop]
        messages.update({i: t for i, t in zip(z["msg_index"].tolist(), z["msg_text"].tolist())
                         if p.start <= i < p.stop})
    states = {}
    for info in todo:
        def pooled(key: str) -> Stitched | None:
            files = [p.work / f"{key}-{info.name.replace('/', '~')}.npy" for p in parts]  # loop._open_states' names
            if not files[0].exists():
                return None
            return Stitched([(p.start, p.stop, np.load(f, mmap_mode="r")) for p, f in zip(parts, files)],
                            n_images, info.units)

        st = LayerState(info, config, torch.device("cpu"), pooled("pooled"), pooled("pooled_cls"))
        ranks = [{k: torch.from_numpy(z[f"{info.name}|{k}"]) for k in LayerState.TENSORS} for z in loaded]
        merged = _merge_layer(ranks, config.top_k)
        exact = _replay_moments(parts, info, status, config.batch_size)
        if exact is None and log:
            log(f"mine: {info.name}: some batches ran in CUDA graphs; mean and std merged over ranks (Chan), "
                "equal to a one-process run to float64 rounding")
        if exact is not None:
            merged["count"], merged["mean"], merged["m2"] = exact
        st.load_state_dict({k: v.numpy() for k, v in merged.items()})
        states[info.name] = st
    made = UnionThumbs([(p.start, p.stop, PassThumbs(p.work, n_images, thumbs)) for p in parts], n_images,
                       thumbs) if thumbs else None
    return states, {"status": status, "sha256": sha, "messages": messages}, made


def _merge_layer(ranks: list[dict[str, torch.Tensor]], k: int) -> dict[str, torch.Tensor]:
    """One layer's rank states (in rank order: ascending image ranges) merged (module docstring)."""
    cat = lambda name: torch.cat([r[name] for r in ranks], 1)
    values, index, argmax, maps = cat("values"), cat("index"), cat("argmax"), cat("maps")  # [U, W*k(, hw)]
    key_i = torch.where(index < 0, torch.iinfo(torch.int64).max, index)  # empty slots last
    by_index = torch.sort(key_i, dim=1, stable=True).indices
    by_value = torch.sort(values.gather(1, by_index), dim=1, descending=True, stable=True).indices
    sel = by_index.gather(1, by_value)[:, :k]  # [U, k]
    out = {"values": values.gather(1, sel), "index": index.gather(1, sel), "argmax": argmax.gather(1, sel),
           "maps": maps.gather(1, sel[..., None].expand(-1, -1, maps.shape[2]))}
    total = lambda name: sum(r[name] for r in ranks)
    for name in ("count", "positive", "nonfinite", "nonfinite_maps"):
        out[name] = total(name)
    out["min"] = torch.stack([r["min"] for r in ranks]).amin(0)
    out["max"] = torch.stack([r["max"] for r in ranks]).amax(0)
    exp = torch.stack([r["range_exp"] for r in ranks]).amax(0)  # [U]
    out["range_exp"], out["hist"] = exp, sum(_widen(r["hist"], exp - r["range_exp"]) for r in ranks)
    count, mean, m2 = (torch.zeros_like(ranks[0]["count"]), torch.zeros_like(ranks[0]["mean"]),
                       torch.zeros_like(ranks[0]["m2"]))
    for r in ranks:  # Chan over ranks: used where the batches' moments are incomplete (CUDA graphs)
        count, mean, m2 = stats.fold_moments(count, mean, m2, r["count"], r["mean"], r["m2"])
    out["count"], out["mean"], out["m2"] = count, mean, m2
    return out


def _widen(hist: torch.Tensor, grow: torch.Tensor) -> torch.Tensor:
    """A histogram [U, B] over [-R, R] as the one over [-R * 2**grow, R * 2**grow]: old bin i moves to
    floor((i - B/2) / 2**grow) + B/2, as `score_stats` moves them."""
    bins = hist.shape[1]
    half = bins // 2
    target = ((torch.arange(bins) - half)[None, :] >> grow.clamp(max=62)[:, None]) + half  # arithmetic shift floors
    return torch.zeros_like(hist).scatter_add_(1, target, hist)


def _replay_moments(parts: list[Part], info, status: np.ndarray,
                    batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """count, mean, m2 folded batch by batch in the one-process order from the ranks' partials; None if a batch
    with good images has none (it ran in a CUDA graph)."""
    u = info.units
    count, mean, m2 = torch.zeros(u, dtype=torch.int64), torch.zeros(u, dtype=torch.float64), \
        torch.zeros(u, dtype=torch.float64)
    for p in parts:
        if p.stop <= p.start:
            continue
        partials = np.load(_partials(p.work, info.name), mmap_mode="r")
        done = np.load(_partials(p.work, info.name, "-done"), mmap_mode="r")
        for j in range(p.batches):
            a = p.start + j * batch
            if not done[j]:
                if (status[a:min(a + batch, p.stop)] != 0).all():
                    continue  # every image bad: mining never updated the statistics with this batch
                return None
            n_b, mean_b, m2_b = torch.from_numpy(np.array(partials[j]))  # [3, U] float64
            count, mean, m2 = stats.fold_moments(count, mean, m2, n_b.long(), mean_b, m2_b)
    return count, mean, m2
