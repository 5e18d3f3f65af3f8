"""Figures of a search: the Pareto front, the per-layer policies of its models, the hypervolume history, and
anytime-hypervolume comparisons.

matplotlib is imported inside each function with the non-interactive Agg backend, so importing this module is cheap
and plotting works on headless machines. Every function writes a PNG and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["pareto_plot", "policy_matrix", "policy_plot", "hypervolume_plot", "anytime_hv_plot"]

_LABELS = {
    "accuracy": "accuracy",
    "size_bytes": "size (bytes)",
    "latency_ms": "latency (ms)",
    "bitops": "BitOPs",
    "compression_ratio": "compression ratio (x)",
}
_LOG_AXES = {"size_bytes", "bitops", "compression_ratio"}
_HIGHER_IS_BETTER = {"accuracy", "compression_ratio", "speedup"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def _human(value: float, _pos: Any = None) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def _log_x(ax: Any, metric: str) -> None:
    """Log x axis with ticks at 1, 2, 5 x 10^k (sizes shown as B/kB/MB)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    fmt = _human if metric == "size_bytes" else (lambda v, _p=None: f"{v:g}")
    ax.xaxis.set_major_formatter(FuncFormatter(fmt))


def _finite(point: Mapping[str, float] | None, *keys: str) -> bool:
    if point is None:
        return False
    try:
        return all(math.isfinite(float(point[k])) for k in keys)
    except (KeyError, TypeError, ValueError):
        return False


def _front_2d(points: Sequence[Mapping[str, float] | None], front: Sequence[int], x: str, y: str) -> list[int]:
    """The members of ``front`` (sorted by ``x``) that no other member beats on both plotted axes."""
    from .pareto import pareto_front

    sense = {axis: "maximize" if axis in _HIGHER_IS_BETTER else "minimize" for axis in (x, y)}
    return [front[j] for j in pareto_front([points[i] for i in front], sense)]


def pareto_plot(points: Sequence[Mapping[str, float] | None], pareto_idx: Sequence[int],
                teacher: Mapping[str, float] | None, path: str | os.PathLike[str], x: str = "size_bytes",
                y: str = "accuracy", title: str | None = None, *, numbers: Sequence[int] | None = None,
                warm: Mapping[int, float | None] | None = None) -> Path:
    """Scatter every trial (grey), the Pareto front (highlighted, joined as a step line) and the teacher (star);
    warm-start trials are ringed, each joined to what the predictor expected of it where that was recorded.

    Args:
        points: Metrics per trial; ``None`` or incomplete entries are skipped.
        pareto_idx: Indices into ``points`` of the non-dominated trials (see ``pareto.pareto_front``).
        teacher: The teacher's metrics, or None to leave the star out.
        path: Where to write the PNG.
        x: Metric on the x axis (log scale for sizes, BitOPs and ratios).
        y: Metric on the y axis.
        title: Figure title; default ``"Pareto front: <y> vs <x>"``.
        numbers: The trial number of each point, for the labels (default: its index).
        warm: Index -> the ``y`` the warm start predicted for that trial (``None``: not recorded); the predicted
            point is drawn at the trial's real ``x`` (sizes are exact, not predicted).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    valid = [i for i, p in enumerate(points) if _finite(p, x, y)]
    front = sorted((i for i in set(pareto_idx) if i in valid), key=lambda i: float(points[i][x]))  # type: ignore
    others = [i for i in valid if i not in set(front)]
    ax.scatter([points[i][x] for i in others], [points[i][y] for i in others], s=22, c="0.65",  # type: ignore
               label=f"trials ({len(valid)})", zorder=2)
    if front:
        # The step line joins only the points that are non-dominated on the two plotted axes; front points that
        # owe their place to another objective (e.g. latency) are drawn lighter, without a line.
        flat = _front_2d(points, front, x, y)
        fx, fy = [points[i][x] for i in flat], [points[i][y] for i in flat]  # type: ignore
        ax.step(fx, fy, where="post", color="tab:blue", lw=1.5, zorder=3)
        ax.scatter(fx, fy, s=42, c="tab:blue", edgecolors="white", label=f"Pareto front ({len(front)})", zorder=4)
        rest = [i for i in front if i not in set(flat)]
        if rest:
            ax.scatter([points[i][x] for i in rest], [points[i][y] for i in rest], s=36,  # type: ignore
                       c="lightsteelblue", edgecolors="tab:blue", linewidths=0.6, zorder=4,
                       label=f"  of them better on another objective ({len(rest)})")
    _warm_markers(ax, points, [i for i in (warm or {}) if i in valid], warm or {}, x, y)
    if teacher is not None and _finite(teacher, x, y):
        ax.scatter([teacher[x]], [teacher[y]], marker="*", s=220, c="tab:orange", edgecolors="black",
                   linewidths=0.6, label="teacher (fp32)", zorder=5)
    if x in _LOG_AXES:
        _log_x(ax, x)
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(y, y))
    ax.set_title(title or f"Pareto front: {_LABELS.get(y, y)} vs {_LABELS.get(x, x)}")
    ax.grid(True, which="both", alpha=0.3)
    legend = ax.legend(loc="lower right", fontsize=8)
    _place_labels(fig, ax, [(points[i][x], points[i][y], f"#{i if numbers is None else numbers[i]}")  # type: ignore
                            for i in front], legend)
    return _save(fig, path)


# Where a label may go, in points from its marker: up-right first, then around it, then further out.
_LABEL_OFFSETS = ((4, 4), (4, -11), (-6, 4), (-6, -11), (6, -3.5), (-8, -3.5), (0, 9), (0, -16), (10, 12),
                  (10, -19), (-14, 12), (-14, -19))


def _place_labels(fig: Any, ax: Any, labels: Sequence[tuple[float, float, str]], legend: Any) -> None:
    """Write each label next to its point where it covers no other label, no marker (of any scatter, at its drawn
    size) and not the legend: the first free place of ``_LABEL_OFFSETS``, else the one that covers the least.
    Front points crowd (many near-equal sizes), and one fixed offset stacks their numbers on each other."""
    fig.tight_layout()
    fig.canvas.draw()  # fixes the limits and transforms the boxes below are measured in
    renderer = fig.canvas.get_renderer()
    taken = [legend.get_window_extent(renderer)] if legend is not None else []
    for markers in ax.collections:
        offsets, sizes = markers.get_offsets(), markers.get_sizes()
        for k, (px, py) in enumerate(markers.get_offset_transform().transform(offsets) if len(offsets) else []):
            pad = math.sqrt(float(sizes[k % len(sizes)] if len(sizes) else 36)) / 2 * fig.dpi / 72
            taken.append(_box(px - pad, py - pad, px + pad, py + pad))
    inside, scale = ax.get_window_extent(renderer), fig.dpi / 72  # points to pixels
    for x, y, text in sorted(labels, key=lambda label: (label[0], -label[1])):
        note = ax.annotate(text, (x, y), textcoords="offset points", xytext=_LABEL_OFFSETS[0], fontsize=7,
                           color="tab:blue")
        first = note.get_window_extent(renderer)  # a label's box moves with its offset; its size does not
        best: tuple[float, Any, tuple[float, float]] | None = None
        for dx, dy in _LABEL_OFFSETS:
            shift_x = (dx - _LABEL_OFFSETS[0][0]) * scale - (first.width if dx < 0 else 0.0)
            box = first.translated(shift_x, (dy - _LABEL_OFFSETS[0][1]) * scale)
            cover = sum(_overlap(box, other) for other in taken) + box.width * box.height * (
                not inside.contains(box.x0, box.y0) or not inside.contains(box.x1, box.y1))
            if best is None or cover < best[0]:
                best = (cover, box, (dx, dy))
            if cover == 0:
                break
        assert best is not None
        note.set_position(best[2])
        note.set_horizontalalignment("left" if best[2][0] >= 0 else "right")
        taken.append(best[1])


def _box(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _overlap(a: Any, b: Any) -> float:
    """The area two display boxes share."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _warm_markers(ax: Any, points: Sequence[Mapping[str, float] | None], ringed: list[int],
                  predicted: Mapping[int, float | None], x: str, y: str) -> None:
    """Ring the warm-start trials; draw each recorded prediction as an x joined to the real point."""
    if not ringed:
        return
    ax.scatter([points[i][x] for i in ringed], [points[i][y] for i in ringed], s=110,  # type: ignore
               facecolors="none", edgecolors="tab:green", linewidths=1.2, label=f"warm start ({len(ringed)})",
               zorder=5)
    guessed = [i for i in ringed if predicted.get(i) is not None and math.isfinite(float(predicted[i]))]
    if not guessed:
        return
    for i in guessed:
        ax.plot([points[i][x]] * 2, [points[i][y], predicted[i]], color="tab:green", lw=0.8, ls=":",  # type: ignore
                zorder=4)
    ax.scatter([points[i][x] for i in guessed], [predicted[i] for i in guessed], marker="x", s=30,  # type: ignore
               c="tab:green", linewidths=1.0, label="  predicted before it ran", zorder=5)


#: Above this many layers the cells are too narrow for their prune ratio: the colours alone are drawn.
_ANNOTATED_LAYERS = 40


def policy_plot(pareto: Sequence[Mapping[str, Any]], layers: Sequence[Any], path: str | os.PathLike[str],
                title: str | None = None, *, teacher: Mapping[str, float] | None = None,
                pruned: Mapping[int, Mapping[str, float]] | None = None) -> Path:
    """What each Pareto model does to each layer: one row per model (smallest first), one column per layer (model
    order); a cell's colour is the layer's weight bits and its text the share of its weights pruned (see
    :func:`policy_matrix`).

    Args:
        pareto: ``summary.json``'s ``pareto`` entries (``number``, ``params`` with ``layers.<name>.bits`` /
            ``.prune``, ``metrics``).
        layers: The searched layers in model order (``LayerInfo``: ``name``, ``n_params``, ``structured``).
        path: Where to write the PNG.
        title: Figure title (a second line says what colour and text mean).
        teacher: The teacher's metrics: a row's label gives its accuracy change against it.
        pruned: Trial number -> layer -> the share of its weights the student lost
            (``learners.pruned_share``); without it, the policy's ratios.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import numpy as np
    from matplotlib.colors import BoundaryNorm, ListedColormap

    plt = _pyplot()
    names = [info.name for info in layers]
    rows, bits, text = policy_matrix(pareto, layers, pruned)
    levels = sorted({int(b) for b in bits[np.isfinite(bits)]}) or [32]
    colours = plt.get_cmap("viridis", max(len(levels), 2))(np.linspace(0.15, 0.95, len(levels)))
    cmap = ListedColormap(colours).with_extremes(bad="0.92")  # grey: a layer the policy leaves alone
    edges = [levels[0] - 0.5] + [(a + b) / 2 for a, b in zip(levels, levels[1:])] + [levels[-1] + 0.5]
    norm = BoundaryNorm(edges, cmap.N)
    width = min(max(6.4, 0.42 * len(names) + 3.2), 24.0)
    fig, ax = plt.subplots(figsize=(width, max(2.4, 0.34 * len(rows) + 1.9)))
    image = ax.imshow(np.ma.masked_invalid(bits), cmap=cmap, norm=norm, aspect="auto")
    if len(names) <= _ANNOTATED_LAYERS:
        for i in range(len(rows)):
            for j in range(len(names)):
                if text[i][j]:
                    level = levels.index(int(bits[i, j])) if np.isfinite(bits[i, j]) else -1
                    dark = level >= 0 and level >= len(levels) / 2  # light cells (yellow end) take dark text
                    ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7,
                            color="black" if dark or level < 0 else "white")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7 if len(names) > 12 else 8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_row_label(e, teacher) for e in rows], fontsize=8)
    bar = fig.colorbar(image, ax=ax, ticks=levels, fraction=0.04, pad=0.02)
    bar.set_label("weight bits")
    ax.set_title(f"{title or 'Per-layer policy of the Pareto models'}\ncolour: weight bits · text: share of the "
                 "weights pruned", fontsize=9)
    return _save(fig, path)


def policy_matrix(pareto: Sequence[Mapping[str, Any]], layers: Sequence[Any],
                  pruned: Mapping[int, Mapping[str, float]] | None = None,
                  ) -> tuple[list[Mapping[str, Any]], Any, list[list[str]]]:
    """What :func:`policy_plot` draws: the entries with a policy, smallest first; their ``(rows, layers)`` bits
    (NaN where the policy leaves a layer alone); and each cell's text, empty where the policy leaves the layer
    alone. The text is the share of the layer's weights the student lost where ``pruned`` (trial number -> layer ->
    share) has it: in a structured model, a group's largest ratio, and inputs removed with the layer feeding it.
    Otherwise it is the policy's ratio, or ``–`` where a structured model cannot remove the layer's outputs."""
    import numpy as np

    def size(entry: Mapping[str, Any]) -> float:
        metrics = entry.get("metrics")
        return float(metrics["size_bytes"]) if _finite(metrics, "size_bytes") else math.inf  # type: ignore[index]

    rows = sorted((e for e in pareto if isinstance(e.get("params"), Mapping)), key=size)
    bits = np.full((len(rows), len(layers)), np.nan)
    text = [["" for _ in layers] for _ in rows]
    for i, entry in enumerate(rows):
        params = entry["params"]
        structured = params.get("prune_method") == "structured"
        for j, info in enumerate(layers):
            b, prune = params.get(f"layers.{info.name}.bits"), params.get(f"layers.{info.name}.prune")
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                bits[i, j] = float(b)
            lost = (pruned or {}).get(entry.get("number"), {}).get(info.name)  # type: ignore[arg-type]
            if lost is not None and not (isinstance(b, bool) or b is None):
                text[i][j] = f"{lost:.0%}"
            elif isinstance(prune, (int, float)) and not isinstance(prune, bool):
                text[i][j] = "–" if structured and not getattr(info, "structured", True) else f"{prune:.0%}"
    return rows, bits, text


def _row_label(entry: Mapping[str, Any], teacher: Mapping[str, float] | None) -> str:
    """``#3  15.2 KiB  acc 0.986 (-0.8 pt)``: the trial, its size as the Pareto table gives it, its accuracy."""
    from .report import format_bytes

    m = entry.get("metrics", {})
    label = f"#{entry.get('number', '?')}"
    if _finite(m, "size_bytes"):
        label += f"  {format_bytes(float(m['size_bytes']))}"
    if _finite(m, "accuracy"):
        label += f"  acc {float(m['accuracy']):.3f}"
        if teacher is not None and _finite(teacher, "accuracy"):
            label += f" ({100 * (float(m['accuracy']) - float(teacher['accuracy'])):+.1f} pt)"
    return label


def hypervolume_plot(history: Sequence[float], path: str | os.PathLike[str], title: str | None = None, *,
                     warm: Sequence[int] = (), maximum: float = 1.0) -> Path:
    """Plot the running hypervolume after each trial (see ``pareto.hypervolume_history``); returns ``path``.

    ``warm``: indices of the warm-start trials, ringed as in :func:`pareto_plot`. ``maximum``: the largest value
    the objectives admit (``pareto.max_hypervolume``), named on the axis when it is not 1.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    trials = list(range(1, len(history) + 1))
    ax.step(trials, list(history), where="post", color="tab:blue", lw=1.8)
    ax.plot(trials, list(history), "o", ms=3, color="tab:blue")
    ringed = [i for i in warm if 0 <= i < len(history)]
    if ringed:
        ax.scatter([i + 1 for i in ringed], [history[i] for i in ringed], s=80, facecolors="none",
                   edgecolors="tab:green", linewidths=1.2, label=f"warm start ({len(ringed)})", zorder=3)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel(hv_label(maximum))
    ax.set_title(title or "Hypervolume after each trial")
    ax.set_xlim(0.5, max(len(history), 1) + 0.5)
    finite = [float(h) for h in history if math.isfinite(float(h))]
    ax.set_ylim(0, max(finite) * 1.06 if finite and max(finite) > 0 else None)  # room for the rings at the top
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def hv_label(maximum: float = 1.0) -> str:
    """The hypervolume axis label: normalized by the teacher, and its maximum when that is not 1."""
    return "hypervolume (normalized)" if maximum == 1.0 else f"hypervolume (normalized, at most {maximum:g})"


def anytime_hv_plot(curves: Mapping[str, Sequence[Sequence[float]]], path: str | os.PathLike[str],
                    title: str | None = None) -> Path:
    """Compare methods by anytime hypervolume: the median over seeds and its interquartile band.

    Args:
        curves: ``{method: [hv_history_seed0, hv_history_seed1, ...]}``; shorter histories are padded with their
            last value (a finished search keeps its hypervolume).
        path: Where to write the PNG.
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, runs in curves.items():
        runs = [list(r) for r in runs if len(r)]
        if not runs:
            continue
        n = max(len(r) for r in runs)
        data = np.asarray([r + [r[-1]] * (n - len(r)) for r in runs], dtype=float)
        q1, med, q3 = np.percentile(data, [25, 50, 75], axis=0)
        trials = np.arange(1, n + 1)
        (line,) = ax.plot(trials, med, lw=1.8, label=f"{method} (n={len(runs)})")
        ax.fill_between(trials, q1, q3, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (normalized)")
    ax.set_title(title or "Anytime hypervolume: median and IQR over seeds")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
