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


def line_svg(xs: np.ndarray, series: dict[str, np.ndarray], width: int = 520, height: int = 220,
             x_label: str = "", y_label: str = "", log_y: bool = False) -> Markup:
    """Lines of one or more series over shared x values, with min/max tick labels (standalone SVG)."""
    xs = np.asarray(xs, dtype=float)
    ys_all = np.concatenate([np.asarray(v, dtype=float) for v in series.values()])
    tf = (lambda v: np.log10(np.maximum(v, 1e-12))) if log_y else (lambda v: v)
    lo, hi = float(np.nanmin(tf(ys_all))), float(np.nanmax(tf(ys_all)))
    hi = hi if hi > lo else lo + 1
    pad_l, pad_r, pad_t, pad_b = 46, 10, 10, 34
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    colors = ("#3156c9", "#d55b5b", "#2f9e5a", "#a05bd5", "#d59a2f")
    parts = []
    for k, (name, ys) in enumerate(series.items()):
        ty = tf(np.asarray(ys, dtype=float))
        pts = " ".join(f"{pad_l + w * (x - x0) / (x1 - x0):.1f},{pad_t + h * (1 - (y - lo) / (hi - lo)):.1f}"
                       for x, y in zip(xs, ty) if np.isfinite(y))
        c = colors[k % len(colors)]
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"><title>{name}</title></polyline>')
        parts.append(f'<text x="{pad_l + 8}" y="{pad_t + 14 + 14 * k}" fill="{c}" font-size="11">{name}</text>')
    fmt = (lambda v: _fmt(10 ** v)) if log_y else _fmt
    axes = (f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>'
            f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end" font-size="10">{fmt(hi)}</text>'
            f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end" font-size="10">{fmt(lo)}</text>'
            f'<text x="{pad_l}" y="{height - 18}" font-size="10">{_fmt(x0)}</text>'
            f'<text x="{pad_l + w}" y="{height - 18}" text-anchor="end" font-size="10">{_fmt(x1)}</text>'
            f'<text x="{pad_l + w / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{x_label}</text>'
            f'<text x="12" y="{pad_t + h / 2}" font-size="11" transform="rotate(-90 12 {pad_t + h / 2})" '
            f'text-anchor="middle">{y_label}</text>')
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}" role="img">{axes}{"".join(parts)}</svg>')
