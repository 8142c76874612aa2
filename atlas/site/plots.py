"""Static plots as inline SVG strings (no JavaScript, no network, no plotting library)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from markupsafe import Markup, escape


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
             x_label: str = "", y_label: str = "", log_y: bool = False,
             marks: Sequence[tuple[float, str]] = ()) -> Markup:
    """Lines of one or more series over shared x values, with min/max tick labels (standalone SVG).

    ``marks``: (x, label) pairs drawn as dashed vertical lines, e.g. the chosen point of a path."""
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
    for x, label in marks:
        if x0 <= x <= x1:
            px = pad_l + w * (x - x0) / (x1 - x0)
            parts.append(f'<line class="mark" x1="{px:.1f}" x2="{px:.1f}" y1="{pad_t}" y2="{pad_t + h}" stroke="#555" '
                         f'stroke-dasharray="3 3"><title>{escape(label)} ({_fmt(x)})</title></line>'
                         f'<text x="{px + 3:.1f}" y="{pad_t + h - 4}" font-size="10">{escape(label)}</text>')
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


_SERIES = ("#3156c9", "#d55b5b", "#2f9e5a", "#a05bd5", "#d59a2f")


def bar_svg(labels: Sequence[str], values: np.ndarray, series: Sequence[str] | None = None, vmax: float = 1.0,
            percent: bool = True, width: int = 560, bar: int = 16) -> Markup:
    """Horizontal bars, one per label, in [0, vmax]; bars of the same ``series`` entry share a colour."""
    values = np.asarray(values, dtype=float)
    names = list(dict.fromkeys(series)) if series is not None else []
    pad_l, pad_r, pad_t = 210, 56, 4 + 16 * (len(names) > 1)
    w = width - pad_l - pad_r
    height = pad_t + bar * len(values) + 6
    parts = [f'<text x="{pad_l + 80 * k}" y="12" font-size="11" fill="{_SERIES[k % len(_SERIES)]}">{escape(n)}</text>'
             for k, n in enumerate(names) if len(names) > 1]
    for i, (label, v) in enumerate(zip(labels, values)):
        y = pad_t + bar * i
        c = _SERIES[names.index(series[i]) % len(_SERIES)] if series is not None else _SERIES[0]
        frac = min(max(v / vmax, 0.0), 1.0) if np.isfinite(v) and vmax > 0 else 0.0
        shown = "nan" if not np.isfinite(v) else (f"{100 * v:.1f}%" if percent else _fmt(v))
        short = label if len(label) <= 32 else label[:31] + "…"  # the whole label is in the bar's title
        parts.append(f'<text x="{pad_l - 6}" y="{y + bar - 4}" text-anchor="end" font-size="11">{escape(short)}</text>'
                     f'<rect x="{pad_l}" y="{y + 2}" width="{max(w * frac, 0.5):.1f}" height="{bar - 4}" fill="{c}">'
                     f'<title>{escape(label)}: {shown}</title></rect>'
                     f'<text x="{pad_l + w * frac + 4:.1f}" y="{y + bar - 4}" font-size="10">{shown}</text>')
    axis = f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - 4}" stroke="#999"/>'
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="plot bars" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}" role="img">{axis}{"".join(parts)}</svg>')


def forest_svg(labels: Sequence[str], est: np.ndarray, ci: np.ndarray | None = None,
               significant: np.ndarray | None = None, x_label: str = "", width: int = 560, row: int = 18) -> Markup:
    """A forest plot: per row a point (filled when significant) and its interval bar, with a zero line."""
    est = np.asarray(est, dtype=float)
    ci = np.asarray(ci, dtype=float).reshape(len(est), 2) if ci is not None else None
    sig = np.asarray(significant, bool) if significant is not None else np.zeros(len(est), bool)
    vals = np.concatenate([est, ci.ravel() if ci is not None else [], [0.0]])
    vals = vals[np.isfinite(vals)]
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo if hi > lo else 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    pad_l, pad_r, pad_t, pad_b = 170, 16, 6, 30
    w = width - pad_l - pad_r
    height = pad_t + row * len(est) + pad_b

    def x(v: float) -> float:
        return pad_l + w * (v - lo) / (hi - lo)

    zero = (f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{pad_t}" y2="{height - pad_b}" stroke="#999" '
            'stroke-dasharray="2 2"/>')
    parts = [zero]
    for i, (label, e) in enumerate(zip(labels, est)):
        y = pad_t + row * i + row / 2
        parts.append(f'<text x="{pad_l - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{escape(label)}</text>')
        interval = ""
        if ci is not None and np.isfinite(ci[i]).all():
            parts.append(f'<line class="ci" x1="{x(ci[i, 0]):.1f}" x2="{x(ci[i, 1]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                         'stroke="#555" stroke-width="1.5"/>')
            interval = f" [{_fmt(ci[i, 0])}, {_fmt(ci[i, 1])}]"
        if np.isfinite(e):
            cls = "point sig" if sig[i] else "point"
            parts.append(f'<circle class="{cls}" cx="{x(e):.1f}" cy="{y:.1f}" r="4"><title>{escape(label)}: '
                         f'{_fmt(e)}{interval}{" (significant)" if sig[i] else ""}</title></circle>')
    base = height - pad_b
    axis = (f'<line x1="{pad_l}" y1="{base}" x2="{pad_l + w}" y2="{base}" stroke="#999"/>'
            f'<text x="{pad_l}" y="{base + 14}" font-size="10">{_fmt(lo)}</text>'
            + (f'<text x="{x(0):.1f}" y="{base + 14}" text-anchor="middle" font-size="10">0</text>'
               if 30 < x(0) - pad_l < w - 30 else "") +
            f'<text x="{pad_l + w}" y="{base + 14}" text-anchor="end" font-size="10">{_fmt(hi)}</text>'
            f'<text x="{pad_l + w / 2}" y="{base + 27}" text-anchor="middle" font-size="11">{escape(x_label)}</text>')
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="plot forest" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}" role="img">{"".join(parts)}{axis}</svg>')
