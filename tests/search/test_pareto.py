"""Tests of Pareto fronts, teacher-relative normalization, hypervolume (history) and the figures."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacompress.search.pareto import (
    REFERENCE_POINT,
    check_objectives,
    hypervolume,
    hypervolume_history,
    max_hypervolume,
    normalize,
    objective_directions,
    pareto_front,
)
from metacompress.search.plots import anytime_hv_plot, hypervolume_plot, pareto_plot
from metacompress.spaces.errors import ConfigError

AS = {"accuracy": "maximize", "size_bytes": "minimize"}
TEACHER = {"accuracy": 0.96, "size_bytes": 64_000.0, "latency_ms": 0.5, "bitops": 1e9}


def test_pareto_front_respects_directions_and_skips_failed() -> None:
    points = [
        {"accuracy": 0.90, "size_bytes": 4000},   # 0 front
        {"accuracy": 0.95, "size_bytes": 8000},   # 1 front
        {"accuracy": 0.89, "size_bytes": 5000},   # 2 dominated by 0
        None,                                      # 3 failed
        {"accuracy": float("nan"), "size_bytes": 10},  # 4 invalid
        {"accuracy": 0.95, "size_bytes": 8000},   # 5 duplicate of 1
        {"accuracy": 0.80, "size_bytes": 1000},   # 6 front
    ]
    assert pareto_front(points, AS) == [0, 1, 6]
    assert pareto_front([], AS) == [] and pareto_front([None], AS) == []


def test_pareto_front_three_objectives() -> None:
    objectives = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    points = [{"accuracy": 0.9, "size_bytes": 10, "latency_ms": 1.0},
              {"accuracy": 0.9, "size_bytes": 10, "latency_ms": 0.5},
              {"accuracy": 0.8, "size_bytes": 5, "latency_ms": 2.0}]
    assert pareto_front(points, objectives) == [1, 2]
    assert objective_directions(objectives) == ["maximize", "minimize", "minimize"]


def test_normalize_documented_anchors() -> None:
    assert normalize(TEACHER, TEACHER, AS) == [0.0, 1.0]
    assert hypervolume([TEACHER], TEACHER, AS) == 0.0
    lossless_16x = {"accuracy": 0.96, "size_bytes": 4000.0}
    assert normalize(lossless_16x, TEACHER, AS) == [0.0, 1 / 16]
    assert hypervolume([lossless_16x], TEACHER, AS) == pytest.approx(0.9375)
    assert hypervolume([lossless_16x, TEACHER], TEACHER, AS) == pytest.approx(0.9375)


def test_normalize_clips_and_handles_every_objective() -> None:
    every = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize", "bitops": "minimize",
             "compression_ratio": "maximize"}
    better = {"accuracy": 0.99, "size_bytes": 128_000.0, "latency_ms": 5.0, "bitops": 2e8, "compression_ratio": 8.0}
    assert normalize(better, TEACHER, every) == pytest.approx([0.0, 1.0, 2.0, 0.2, 0.125])
    assert [REFERENCE_POINT[k] for k in every] == [1.0, 1.0, 2.0, 1.0, 1.0]
    zero = {"accuracy": 0.0, "size_bytes": 0.0, "latency_ms": 0.0, "bitops": 0.0, "compression_ratio": 0.0}
    assert normalize(zero, TEACHER, every) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_compression_ratio_matches_size() -> None:
    objectives = {"accuracy": "maximize", "compression_ratio": "maximize"}
    point = {"accuracy": 0.9, "size_bytes": 8000.0, "compression_ratio": 8.0}
    assert normalize(point, TEACHER, objectives) == normalize(point, TEACHER, AS)


def test_normalize_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="'teacher.size_bytes'"):
        normalize({"accuracy": 0.9, "size_bytes": 10}, {"accuracy": 0.9}, AS)
    with pytest.raises(ConfigError, match="'metrics.size_bytes' value must be a finite number"):
        normalize({"accuracy": 0.9}, TEACHER, AS)


def test_hypervolume_history_carries_over_failures() -> None:
    points = [None, {"accuracy": 0.48, "size_bytes": 32_000.0}, None, {"accuracy": 0.96, "size_bytes": 16_000.0},
              {"accuracy": 0.5, "size_bytes": 60_000.0}]
    history = hypervolume_history(points, TEACHER, AS)
    assert history[0] == 0.0 and history[1] == pytest.approx(0.25) and history[2] == history[1]
    assert history[3] == pytest.approx(0.75) == history[4]
    assert history[-1] == pytest.approx(hypervolume(points, TEACHER, AS))


_point = st.one_of(st.none(), st.fixed_dictionaries({
    "accuracy": st.floats(0.0, 1.0), "size_bytes": st.floats(1.0, 100_000.0),
    "latency_ms": st.floats(0.01, 2.0)}))


@settings(max_examples=40, deadline=None)
@given(points=st.lists(_point, max_size=12))
def test_history_is_monotone_bounded_and_front_dominates(points: list) -> None:
    objectives = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    history = hypervolume_history(points, TEACHER, objectives)
    assert len(history) == len(points)
    assert all(b >= a - 1e-12 for a, b in zip(history, history[1:]))
    assert all(0.0 <= h <= max_hypervolume(objectives) + 1e-12 for h in history)
    front = [points[i] for i in pareto_front(points, objectives)]
    assert hypervolume(front, TEACHER, objectives) == pytest.approx(history[-1] if history else 0.0)


def test_check_objectives() -> None:
    assert check_objectives("objectives", ["accuracy", "bitops"]) == {"accuracy": "maximize", "bitops": "minimize"}
    with pytest.raises(ConfigError, match="Did you mean 'latency_ms'"):
        check_objectives("objectives", {"accuracy": "maximize", "latency": "minimize"})


def test_the_largest_hypervolume_is_2_with_latency_and_the_report_says_so() -> None:
    from metacompress.search.plots import hv_label
    from metacompress.search.report import pareto_markdown

    with_latency = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    assert max_hypervolume(AS) == 1.0 and max_hypervolume(with_latency) == 2.0
    ideal = {"accuracy": 0.96, "size_bytes": 1e-9, "latency_ms": 1e-9}  # lossless, free, instant
    assert hypervolume([ideal], TEACHER, with_latency) == pytest.approx(max_hypervolume(with_latency))
    assert hv_label(2.0).endswith("at most 2)") and hv_label(1.0) == "hypervolume (normalized)"
    summary = {"study_name": "s", "task": "t", "n_complete": 1, "hypervolume": 1.39, "pareto": [],
               "teacher": TEACHER}
    assert "hypervolume 1.3900 of at most 2)" in pareto_markdown({**summary, "objectives": with_latency})
    assert "hypervolume 1.3900)" in pareto_markdown({**summary, "objectives": AS})


def test_plots_write_pngs(tmp_path: Path) -> None:
    points = [{"accuracy": 0.9 - 0.01 * i, "size_bytes": 4000.0 / (i + 1)} for i in range(6)] + [None]
    front = pareto_front(points, AS)
    out = pareto_plot(points, front, TEACHER, tmp_path / "fig" / "pareto.png")
    history = hypervolume_history(points, TEACHER, AS)
    hv = hypervolume_plot(history, tmp_path / "hv.png")
    any_hv = anytime_hv_plot({"warm": [history, history[:3]], "cold": [[h / 2 for h in history]], "empty": []},
                             tmp_path / "anytime.png")
    for path in (out, hv, any_hv):
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert pareto_plot([], [], None, tmp_path / "empty.png", x="latency_ms").is_file()
    warm = pareto_plot(points, front, TEACHER, tmp_path / "warm.png", numbers=[3, 4, 6, 7, 8, 9, 10],
                       warm={0: 0.95, 1: None, 6: 0.5, 2: float("nan")})  # 6 failed: nothing to ring
    assert warm.read_bytes()[:4] == b"\x89PNG"
    assert hypervolume_plot(history, tmp_path / "hv_warm.png", warm=[0, 1, 99]).is_file()  # 99: past the end
    assert not math.isnan(history[-1])


def test_the_plot_joins_only_the_points_non_dominated_on_its_two_axes() -> None:
    from metacompress.search.plots import _front_2d

    points = [{"accuracy": 0.95, "size_bytes": 10.0, "latency_ms": 2.0},
              {"accuracy": 0.90, "size_bytes": 20.0, "latency_ms": 1.0},  # on the 3-D front by latency only
              {"accuracy": 0.97, "size_bytes": 30.0, "latency_ms": 3.0}]
    objectives = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    front = pareto_front(points, objectives)
    assert sorted(front) == [0, 1, 2]
    assert _front_2d(points, sorted(front), "size_bytes", "accuracy") == [0, 2]


def test_the_progress_bar_says_when_no_trial_is_within_1_pp_yet() -> None:
    from metacompress.search.progress import best_text

    teacher = {"accuracy": 0.96, "size_bytes": 64_000.0}
    assert best_text([], teacher, AS) == "best: -"
    lossy = [{"accuracy": 0.80, "size_bytes": 1000.0, "compression_ratio": 64.0}]
    assert best_text(lossy, teacher, AS).endswith("none within 1 pp yet")  # was "best 0.0× within 1 pp"
    close = lossy + [{"accuracy": 0.955, "size_bytes": 8000.0, "compression_ratio": 8.0}]
    assert best_text(close, teacher, AS).endswith("best 8.0× within 1 pp")


def test_front_labels_of_crowded_points_cover_no_other_label_or_marker() -> None:
    """Seven front points within a few pixels of each other (near-equal sizes, as a converged front has): one fixed
    offset would stack their numbers; the placement finds each a free place."""
    from metacompress.search.plots import _overlap, _place_labels, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    crowd = [(1000.0 * (1 + 0.03 * k), 0.95 + 0.002 * (k % 3)) for k in range(7)] + [(100.0, 0.5), (9000.0, 0.99)]
    ax.scatter(*zip(*crowd), s=42)
    ax.set_xscale("log")
    _place_labels(fig, ax, [(x, y, f"#{k}") for k, (x, y) in enumerate(crowd)], ax.legend(["trials"]))
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    assert sorted(text.get_text() for text in ax.texts) == sorted(f"#{k}" for k in range(9))  # one each, no leftover
    assert all(_overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    naive = [ax.annotate(f"#{k}", xy, textcoords="offset points", xytext=(4, 4), fontsize=7).get_window_extent(
        renderer) for k, xy in enumerate(crowd)]
    assert any(_overlap(a, b) > 0 for i, a in enumerate(naive) for b in naive[i + 1:])  # the case is crowded
    plt.close(fig)


def test_the_policy_plot_shows_each_pareto_models_layers_smallest_first(tmp_path: Path) -> None:
    from metacompress.search.plots import policy_matrix, policy_plot
    from metacompress.spaces import LayerInfo

    layers = [LayerInfo("conv", "conv2d", 72, (8, 1, 3, 3), structured=True),
              LayerInfo("head", "linear", 80, (10, 8), structured=False)]
    pareto = [
        {"number": 4, "metrics": {"accuracy": 0.97, "size_bytes": 900.0},
         "params": {"prune_method": "structured", "layers.conv.bits": 4, "layers.conv.prune": 0.5,
                    "layers.head.bits": 8, "layers.head.prune": 0.3}},
        {"number": 1, "metrics": {"accuracy": 0.90, "size_bytes": 300.0},
         "params": {"prune_method": "unstructured", "layers.conv.bits": 2, "layers.conv.prune": 0.81}},
        {"number": 7, "metrics": {"accuracy": 0.95}},  # no policy recorded: left out
    ]
    rows, bits, text = policy_matrix(pareto, layers)
    assert [e["number"] for e in rows] == [1, 4]
    assert bits[0, 0] == 2 and math.isnan(bits[0, 1]) and list(bits[1]) == [4, 8]
    assert text == [["81%", ""], ["50%", "–"]]  # the structured model cannot prune its head: it keeps it whole
    _, _, lost = policy_matrix(pareto, layers, pruned={4: {"conv": 0.5, "head": 0.5}})
    assert lost == [["81%", ""], ["50%", "50%"]]  # what the student lost: the head's inputs went with conv's outputs
    out = policy_plot(pareto, layers, tmp_path / "policies.png", teacher=TEACHER)
    assert out.read_bytes()[:4] == b"\x89PNG"
    many = [LayerInfo(f"l{i}", "linear", 10, (2, 5)) for i in range(60)]  # too many to annotate: colours only
    wide = [{"number": 0, "metrics": {"size_bytes": 1.0}, "params": {f"layers.l{i}.bits": 8 for i in range(60)}}]
    assert policy_plot(wide, many, tmp_path / "wide.png").is_file()


def test_the_progress_bar_ends_on_the_trials_other_workers_finished_last() -> None:
    """Each worker process reports only its own trials; the bar re-reads the study once more at the end."""
    from types import SimpleNamespace

    import optuna
    from rich.console import Console

    from metacompress.search.progress import SearchProgress

    study = optuna.create_study(directions=["maximize", "minimize"])
    p = SimpleNamespace(study=study, reference=TEACHER, cfg=SimpleNamespace(n_trials=3, objectives=AS))
    bar = SearchProgress(Console(file=open(os.devnull, "w")), p)
    with bar:
        for _ in range(3):  # finished by another worker: no update() here
            study.add_trial(optuna.trial.create_trial(values=[0.9, 100.0]))
    assert bar.progress.tasks[0].completed == 3
