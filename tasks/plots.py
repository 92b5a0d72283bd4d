"""A report's files: its JSON and one PNG per evaluation or application report (matplotlib, headless
``Agg``; imported only to draw)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from interpret.storage import write_json_atomic
from tasks.reports import TaskReport


def _figure(columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(5.5 * columns, 4.2), squeeze=False)
    return plt, figure, axes[0]


def _save(plt, figure, path: Path) -> None:
    """Write atomically (a reader never sees half a PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.tight_layout()
        figure.savefig(scratch, dpi=110)
        os.replace(scratch, path)
    finally:
        plt.close(figure)
        if os.path.exists(scratch):
            os.unlink(scratch)


def write_report(report: TaskReport, directory: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.png`` in ``directory`` (both written atomically)."""
    directory = Path(directory)
    name = name or report.kind
    json_path, png_path = directory / f"{name}.json", directory / f"{name}.png"
    write_json_atomic(json_path, report.model_dump(mode="json"))
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report, path: str | Path) -> None:
    """Draw whichever report this is (``report.kind``)."""
    drawers = {
        "loo": _loo,
        "lds": _lds,
        "recall": _recall,
        "audit": _audit,
        "influence_map": _influence_map,
        "error_correction": _correction,
        "simulatability": _simulatability,
        "augmentation": _augmentation,
    }
    plt, figure, axes = _figure(2 if report.kind in ("lds", "audit", "simulatability") else 1)
    drawers[report.kind](report, axes)
    _save(plt, figure, Path(path))


def _loo(report, axes) -> None:
    axis = axes[0]
    predicted = np.concatenate([p.predicted for p in report.points])
    actual = np.concatenate([p.actual for p in report.points])
    axis.scatter(actual, predicted, s=10, alpha=0.7)
    bound = float(np.abs(np.concatenate([predicted, actual])).max() or 1.0)
    axis.plot([-bound, bound], [-bound, bound], color="grey", lw=0.8, ls="--")
    axis.set_xlabel("actual change of test loss (leave one out)")
    axis.set_ylabel("predicted  -I(z, t) / N")
    axis.set_title(f"LOO on the convex head: Pearson {report.summary['loo_pearson_head']:.3f}")


def _lds(report, axes) -> None:
    methods = list(report.lds)
    values = [report.lds[m] for m in methods]
    errors = np.array(
        [
            [v - report.intervals[m].low, report.intervals[m].high - v]
            for m, v in zip(methods, values, strict=True)
        ]
    ).T
    axes[0].bar(methods, values, yerr=errors, capsize=4, color="#4c72b0")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("LDS (mean Spearman over test points)")
    axes[0].set_title(f"LDS, {report.scale} scale, {report.config['subsets']} subsets")
    for method in methods:
        per_test = np.array([v for v in report.per_test[method] if v is not None])
        axes[1].hist(per_test, bins=20, alpha=0.5, label=method)
    axes[1].set_xlabel("Spearman per test point")
    axes[1].legend()


def _recall(report, axes) -> None:
    names = list(report.summary)
    axes[0].barh(names, [report.summary[n] for n in names], color="#55a868")
    axes[0].set_xlim(0, 1)
    axes[0].set_xlabel("recall against the full scan")


def _audit(report, axes) -> None:
    for name, curve in report.curves.items():
        axes[0].plot(np.linspace(0, 100, len(curve)), curve, label=name)
    axes[0].set_xlabel("% of training rows inspected (ranked)")
    axes[0].set_ylabel("share of flipped labels found")
    axes[0].legend()
    axes[0].set_title("Finding flipped labels")
    names = list(report.top10_recall)
    axes[1].bar(names, [report.top10_recall[n] for n in names], color="#c44e52")
    axes[1].set_ylabel("flipped labels found in the top 10%")


def _influence_map(report, axes) -> None:
    axis = axes[0]
    tests = [node for node in report.nodes if node.kind == "test"]
    trains = [node for node in report.nodes if node.kind == "train"][:40]
    place = {node.id: (0.0, i / max(1, len(tests) - 1)) for i, node in enumerate(tests)}
    place.update({node.id: (1.0, i / max(1, len(trains) - 1)) for i, node in enumerate(trains)})
    for edge in report.edges:
        if edge.source in place and edge.target in place:
            (x0, y0), (x1, y1) = place[edge.source], place[edge.target]
            axis.plot([x0, x1], [y0, y1], color="#2a9d8f" if edge.score < 0 else "#e76f51", lw=0.6, alpha=0.6)
    for node in tests + trains:
        x, y = place[node.id]
        axis.scatter([x], [y], s=12 + 6 * node.degree, color="#264653" if node.kind == "test" else "#e9c46a")
    axis.set_xticks([0, 1], ["test points", "training examples (most shared first)"])
    axis.set_yticks([])
    axis.set_title("Influence map (green helpful, red harmful)")


def _augmentation(report, axes) -> None:
    _strategy_bars(report.deltas, axes[0])
    axes[0].set_ylabel("accuracy change on the shifted test set")
    axes[0].set_title(
        f"Augmentation over {len(report.seeds)} seeds (from {report.baseline_accuracy:.3f}, "
        f"{int(np.mean(report.budgets))} pool rows)"
    )


def _strategy_bars(deltas: dict[str, list[float]], axis) -> None:
    """Each strategy's mean change, with the spread over seeds."""
    names = list(deltas)
    means = [float(np.mean(deltas[n])) for n in names]
    spreads = [float(np.std(deltas[n])) for n in names]
    axis.bar(names, means, yerr=spreads, capsize=4, color="#8172b2")
    axis.axhline(0, color="grey", lw=0.8)


def _correction(report, axes) -> None:
    _strategy_bars(report.deltas, axes[0])
    axes[0].set_ylabel("accuracy change on held-out dev")
    axes[0].set_title(f"Error correction over {len(report.seeds)} seeds")


def _simulatability(report, axes) -> None:
    before = np.asarray(report.before)
    names = list(report.after)
    changes = [np.asarray(report.after[name]) - before for name in names]
    errors = [float(c.std(ddof=1) / np.sqrt(len(c))) if len(c) > 1 else 0.0 for c in changes]
    axes[0].bar(names, [float(c.mean()) for c in changes], yerr=errors, capsize=4, color="#dd8452")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("change of the simulator's p(model's label)")
    axes[0].set_title(f"Simulatability, {len(before)} test points ({report.config.get('labels')} labels)")
    for name in names:
        axes[1].scatter(before, report.after[name], s=10, alpha=0.7, label=name)
    axes[1].plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    axes[1].set_xlabel("before fine-tuning")
    axes[1].set_ylabel("after fine-tuning on the point's rows")
    axes[1].legend()
