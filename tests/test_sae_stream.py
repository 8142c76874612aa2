"""SAE training from a stream (atlas.sae.stream): the shuffle buffer draws every streamed row, holds at most its
capacity, equals plain epoch shuffling when everything fits; a small buffer trains as well as the whole set; held-out
images never reach training; saved .npy buffers are read through a memory map, float16 included; bad buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.config import MineConfig, SaeConfig
from atlas.data import open_source
from atlas.mining import mine
from atlas.sae import SaeError, fit, metrics, train_sae
from atlas.sae.stream import ShuffleBuffer, array_blocks, split
from atlas.sae.train import fit_stream
from test_sae import sparse_data

LAYER = "visual.layer4.0"


def id_blocks(n: int, block: int, d: int = 3):
    """Rows whose first column is their index in the stream."""
    for i in range(0, n, block):
        rows = torch.arange(i, min(i + block, n), dtype=torch.float32)[:, None].repeat(1, d)
        yield rows


def test_buffer_draws_every_streamed_row_once_before_repeating():
    g = torch.Generator().manual_seed(0)
    buf = ShuffleBuffer(id_blocks(1000, 64), capacity=100, device=torch.device("cpu"), generator=g)
    assert buf.rows.shape == (100, 3)  # never more than the capacity
    drawn = []
    while True:
        b = buf.take(10)[:, 0]
        assert buf.rows.shape == (100, 3)
        if buf.exhausted:  # this take found the stream ended: from here on, epochs over the last rows
            break
        drawn.append(b)
    drawn = torch.cat(drawn).long()
    # one pass: every row of the stream drawn exactly once before any is drawn again
    assert sorted(drawn.tolist()) == list(range(1000))
    assert buf.streamed == 1000 and buf.refills == 9
    assert drawn[:100].max() < 164  # the first draws come from the first fill (and no further)
    later = torch.cat([buf.take(10)[:, 0] for _ in range(20)]).long()
    assert later.min() >= 900  # then the buffer's last contents, in epochs


def test_buffer_that_holds_everything_is_plain_epoch_shuffling():
    x = torch.randn(50, 4)
    g = torch.Generator().manual_seed(3)
    buf = ShuffleBuffer(iter([x]), capacity=50, device=torch.device("cpu"), generator=g)
    got = torch.cat([buf.take(10) for _ in range(10)])
    ref_g = torch.Generator().manual_seed(3)
    order = torch.cat([torch.randperm(50, generator=ref_g), torch.randperm(50, generator=ref_g)])
    assert torch.equal(got, x[order]) and buf.exhausted and buf.refills == 0
    assert buf.rows.data_ptr() == x.data_ptr()  # no copy of the caller's rows when nothing is written into them


def test_small_buffer_trains_like_the_whole_set():
    x = sparse_data()
    cfg = SaeConfig(layer="l", width="3x", k=4, steps=150, batch=128, lr=2e-3, dead_after=3000)
    whole = fit(x[:5000], 48, cfg)
    streamed = fit_stream(iter(x[:5000].split(250)), 48, cfg, capacity=1000)
    assert streamed.streamed == 5000 and streamed.refills >= 3  # 150 x 128 draws went through the whole stream
    m_whole, m_stream = metrics(x[5000:], whole.sae), metrics(x[5000:], streamed.sae)
    assert m_stream["fve"] > 0.5 and m_stream["fve"] > m_whole["fve"] - 0.05


def test_split_keeps_held_out_images_away_from_training():
    owner = torch.arange(10).repeat_interleave(4)  # 10 images of 4 positions
    rows = torch.stack([owner.float(), torch.arange(40.)], 1)
    held = torch.tensor([2, 7])
    train, kept = split(iter([(rows[:20], owner[:20]), (rows[20:], owner[20:])]), held, max_held_rows=6)
    trained = torch.cat(list(train))
    assert not torch.isin(trained[:, 0].long(), held).any() and trained.shape[0] == 32
    kept = torch.cat(kept)
    assert kept.shape[0] == 6 and torch.isin(kept[:, 0].long(), held).all()  # capped at max_held_rows


def test_nan_in_the_stream_names_the_rows():
    x = sparse_data(300)
    x[250, 3] = float("nan")
    with pytest.raises(SaeError, match=r"1 activation rows of layer l \(in rows 200\.\.299"):
        fit_stream(iter(x.split(100)), 8, SaeConfig(layer="l", width="8", k=2, steps=20, batch=16), capacity=120)


def test_array_blocks_memory_map_and_bad_buffers(tmp_path):
    a = np.random.default_rng(0).normal(size=(1000, 6)).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    n, blocks = array_blocks(tmp_path / "a.npy", 6, block=300)
    got = list(blocks)
    assert n == 1000 and [r.shape[0] for r, _ in got] == [300, 300, 300, 100]
    assert torch.equal(torch.cat([r for r, _ in got]), torch.from_numpy(a.astype(np.float32)))
    assert torch.equal(torch.cat([o for _, o in got]), torch.arange(1000))
    with pytest.raises(SaeError, match=r"shape \(1000, 6\).*expected \[n, 5\]"):
        array_blocks(tmp_path / "a.npy", 5)
    np.save(tmp_path / "i.npy", np.zeros((10, 6), np.int32))
    with pytest.raises(SaeError, match="int32 values"):
        array_blocks(tmp_path / "i.npy", 6)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(SaeError, match="junk.npy is not a readable .npy"):
        array_blocks(tmp_path / "junk.npy", 6)


def test_train_sae_streams_images_through_a_small_buffer(tiny_model, tmp_path):
    path = tmp_path / "s.h5"
    source = open_source("synthetic:48")
    mine(tiny_model, source, path, MineConfig(layers=(LAYER,), top_k=4, batch_size=16))
    d = tiny_model.layer(LAYER).units
    cfg = SaeConfig(layer=LAYER, width="64", k=4, steps=40, batch=32, dead_after=500, buffer_rows=40)
    r = train_sae(tiny_model, path, cfg, evaluate=False)
    positions = r.metrics["inputs"]  # rows of the held-out images (48 x 0.1 -> 4 images)
    assert positions % 4 == 0 and r.metrics["fve"] > 0
    assert r.streamed > 40  # more rows than the buffer holds went through it
    assert r.width == 64 and r.d == d


def test_the_image_stream_leaves_no_hook_behind(tiny_model, tmp_path, monkeypatch):
    """Once trained, the unfinished image stream's hook is off the model before anything else runs (the zero-shot
    evaluation, the writing), not only when its generator is collected."""
    import atlas.sae.run as run

    path = tmp_path / "s.h5"
    mine(tiny_model, open_source("synthetic:24"), path, MineConfig(layers=(LAYER,), top_k=4, batch_size=8))
    module = dict(tiny_model.clip.named_modules())[LAYER]
    before = len(module._forward_hooks)
    seen = []
    write = run.store.write_sae
    monkeypatch.setattr(run.store, "write_sae", lambda *a, **k: (seen.append(len(module._forward_hooks)),
                                                                  write(*a, **k))[1])
    train_sae(tiny_model, path, SaeConfig(layer=LAYER, width="16", k=2, steps=3, batch=8, buffer_rows=20),
              evaluate=False)  # 3 x 8 draws from a 20-row buffer: the stream is left unfinished
    assert seen == [before] and len(module._forward_hooks) == before
