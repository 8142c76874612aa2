"""Static plots as inline SVG strings (no JavaScript, no network, no plotting library)."""

from __future__ import annotations

import numpy as np
from markupsafe import Markup


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def histogram_svg(counts: np.ndarray, value_range: float, mean: float | None = None,
                  width: int = 420, height: int = 140) -> Markup:
    """Bars of a histogram over [-range, range], cropped to the bins that hold data."""
    counts = np.asarray(counts, dtype=np.int64)
    bins = len(counts)
    nz = np.nonzero(counts)[0]
    if len(nz) == 0:
        return Markup(f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="no data">'
                      f'<text x="10" y="20">no finite values</text></svg>')
    lo_bin, hi_bin = int(nz[0]), int(nz[-1]) + 1
    edges = np.linspace(-value_range, value_range, bins + 1)
    lo, hi = edges[lo_bin], edges[hi_bin]
    shown = counts[lo_bin:hi_bin]
    pad_l, pad_b, pad_t = 8, 22, 8
    w, h = width - 2 * pad_l, height - pad_b - pad_t
    bw = w / len(shown)
    peak = shown.max()
    bars = []
    for i, c in enumerate(shown):
        if c == 0:
            continue
        bh = max(1.0, h * c / peak)
        bars.append(f'<rect x="{pad_l + i * bw:.2f}" y="{pad_t + h - bh:.2f}" width="{max(bw - 0.5, 0.5):.2f}" '
                    f'height="{bh:.2f}"><title>{_fmt(edges[lo_bin + i])} to {_fmt(edges[lo_bin + i + 1])}: '
                    f'{int(c)}</title></rect>')
    marks = ""
    if mean is not None and lo <= mean <= hi and hi > lo:
        x = pad_l + w * (mean - lo) / (hi - lo)
        marks = f'<line class="mean" x1="{x:.2f}" x2="{x:.2f}" y1="{pad_t}" y2="{pad_t + h}"><title>mean {_fmt(mean)}</title></line>'
    axis = (f'<text x="{pad_l}" y="{height - 6}">{_fmt(lo)}</text>'
            f'<text x="{width - pad_l}" y="{height - 6}" text-anchor="end">{_fmt(hi)}</text>'
            f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">score (peak count {int(peak)})</text>')
    return Markup(f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                  f'role="img" aria-label="histogram of activation scores">{"".join(bars)}{marks}{axis}</svg>')
