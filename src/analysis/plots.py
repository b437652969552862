"""The article's figures from per-epoch metric histories: per-run curves, seed bands, overlays."""

import textwrap
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or inside a training job

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from src.analysis.statistics import MIN_SEEDS, curve_band  # noqa: E402
from src.core.metrics import HEADLINE_METRIC, LEGACY_TASK, data_loss  # noqa: E402

History = Mapping[str, Sequence[float]]

def curves(task: str = LEGACY_TASK) -> Dict[str, Tuple[str, str, str]]:
    """(train metric, validation metric, y label) of each per-run panel, keyed by file name: the loss, and the
    task's headline metric (the tutorial's accuracy)."""
    headline = HEADLINE_METRIC[task]
    return {"loss": ("loss", "val_loss", "loss (data + regularization)"),
            headline: (headline, f"val_{headline}", headline.replace("_", " "))}


def run_figures(history: Mapping[str, Sequence[float]], title: str, task: str = LEGACY_TASK) -> Dict[str, Figure]:
    """One run's loss vs val_loss and accuracy vs val_accuracy per epoch, keyed by artifact path: under curves/, and
    at the artifact root too (`curves_loss.png`), where MLflow's compare page shows runs' files side by side."""
    figures = {}
    for name, fig in curve_figures([history], title, task).items():
        figures[f"curves/{name}.png"] = figures[f"curves_{name}.png"] = fig
    return figures


def curve_figures(histories: Sequence[History], title: str, task: str = LEGACY_TASK) -> Dict[str, Figure]:
    """Train vs validation curves of one run, or mean ± std bands of several (seeds), keyed by panel."""
    figures = {}
    for name, (train_key, val_key, ylabel) in curves(task).items():
        fig, ax = _axes(title, ylabel)
        drawn = []
        for key, style, color in ((train_key, "-", "C0"), (val_key, "--", "C1")):
            series = _series(histories, key)
            if series is not None:
                drawn.append(_draw(ax, series, label=key, color=color, linestyle=style))
        _finish(ax, drawn)
        figures[name] = fig
    return figures


def overlay_figure(
    groups: Mapping[str, Sequence[History]],
    title: str,
    task: str = LEGACY_TASK,
) -> Figure:
    """The tutorial's plot: every run's (or seed group's) validation data loss, train dashed in the same colour."""
    train_metric = data_loss(task)
    metric = f"val_{train_metric}"
    # Groups bit-identical to an earlier one (fit/tape twins, an L2 penalty the loop
    # ignores) say so in the legend and are drawn thinner on top, so both stay visible.
    fig, ax = _axes(title, metric.replace("val_", "") + " (solid: validation, dashed: train)")
    series = {label: _series(histories, metric) for label, histories in groups.items()}
    series = {label: s for label, s in series.items() if s is not None}
    same_as = _first_identical(series)
    chains: Dict[str, List[str]] = {}  # first label -> it and its twins, in drawing order
    for label in series:
        chains.setdefault(same_as.get(label, label), []).append(label)
    drawn = []
    for i, (label, values) in enumerate(series.items()):
        color = f"C{i % 10}"
        # from 4.5 down to 1.5 along a chain of twins: each later twin sits thinner on top
        chain = chains[same_as.get(label, label)]
        width = 1.5 + 3.0 * (len(chain) - 1 - chain.index(label)) / (len(chain) - 1) if len(chain) > 1 else 1.5
        legend = f"{label} (= {same_as[label]})" if label in same_as else label
        drawn.append(_draw(ax, values, label=legend, color=color, linestyle="-", linewidth=width))
        train = _series(groups[label], train_metric)
        if train is not None:
            # no label: the legend names groups; the style says train vs validation
            drawn.append(_draw(ax, train, label=None, color=color, linestyle="--", alpha=0.6, linewidth=width))
    _finish(ax, drawn)
    return fig


def _first_identical(series: Mapping[str, np.ndarray]) -> Dict[str, str]:
    """label -> the first earlier label whose values are exactly the same (only for labels that have one)."""
    labels = list(series)
    found = {}
    for i, label in enumerate(labels):
        earlier = (other for other in labels[:i] if other not in found)
        twin = next((other for other in earlier if np.array_equal(series[other], series[label])), None)
        if twin is not None:
            found[label] = twin
    return found


def save(figures: Mapping[str, Figure], out_dir) -> List[str]:
    """Write figures as PNG files under `out_dir` (keys are relative paths); returns the paths."""
    written = []
    for rel, fig in figures.items():
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def close(figures: Mapping[str, Figure]) -> None:
    """Free figures' memory (pyplot keeps every open figure alive)."""
    for fig in figures.values():
        plt.close(fig)


def _series(histories: Sequence[History], key: str) -> Optional[np.ndarray]:
    """A (runs, epochs) array of one metric, cut to the shortest run; None if no run has it."""
    rows = [np.asarray(h[key], dtype=float) for h in histories if len(h.get(key, ())) > 0]
    if not rows:
        return None
    epochs = min(len(r) for r in rows)
    return np.stack([r[:epochs] for r in rows])


def _draw(ax, series: np.ndarray, *, label, color, linestyle, alpha: float = 1.0, linewidth: float = 1.5) -> np.ndarray:
    """A plain line for one run; for several, a mean line with its 95 % bootstrap band (± std for two seeds);
    returns the drawn (rows, epochs)."""
    epochs = np.arange(series.shape[1])
    marker = "o" if series.shape[1] == 1 else None  # a one-epoch line is otherwise invisible
    if series.shape[0] == 1:
        ax.plot(epochs, series[0], label=label, color=color, ls=linestyle, alpha=alpha, marker=marker, lw=linewidth)
        return series
    mean, band = series.mean(axis=0), curve_band(series)  # 3 seeds or more: the mean's 95 % bootstrap interval
    if band is None:
        std = series.std(axis=0, ddof=1)
        band = (mean - std, mean + std)
    if label is not None:
        label = f"{label} (mean, {'95 % CI' if series.shape[0] >= MIN_SEEDS else '± std'}, n={series.shape[0]})"
    ax.plot(epochs, mean, label=label, color=color, linestyle=linestyle, alpha=alpha, marker=marker, lw=linewidth)
    ax.fill_between(epochs, band[0], band[1], color=color, alpha=0.2 * alpha, linewidth=0)
    return np.stack(band)


def _axes(title: str, ylabel: str) -> Tuple[Figure, "plt.Axes"]:
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_title("\n".join(textwrap.wrap(title, 80)) or title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.4)
    return fig, ax


def _finish(ax, drawn: List[np.ndarray]) -> None:
    """Integer epochs on x; y zoomed on the curves, past the first epochs' spike like the article's ylim (said on the
    axis when it cuts a curve off); the legend where it covers the least, outside the axes when there are many."""
    ax.xaxis.get_major_locator().set_params(integer=True)
    if drawn:
        limits = _limits(drawn)
        if limits is not None:
            ax.set_ylim(*limits)
            peak = max(float(np.nanmax(d[np.isfinite(d)])) if np.isfinite(d).any() else -np.inf for d in drawn)
            if peak > limits[1]:
                ax.set_ylabel(f"{ax.get_ylabel()}  (clipped: first epochs reach {peak:.3g})")
    handles, _ = ax.get_legend_handles_labels()
    if len(handles) > 4:  # beside the axes, the figure widened for it so the curves keep their room
        width = max(len(label) for label in ax.get_legend_handles_labels()[1])
        ax.figure.set_size_inches(8 + 0.075 * width, 5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.figure.set_layout_engine("constrained")
    elif handles:
        ax.legend(loc="best")


def _limits(drawn: List[np.ndarray]) -> Optional[Tuple[float, float]]:
    """Min to max of all curves with a margin; from 10 epochs on, the top skips the first tenth (start-up spike)."""
    epochs = max(d.shape[1] for d in drawn)
    skip = epochs // 10 if epochs >= 10 else 0
    every = np.concatenate([d.ravel() for d in drawn])
    later = np.concatenate([d[:, skip:].ravel() for d in drawn])
    every, later = every[np.isfinite(every)], later[np.isfinite(later)]
    if not every.size:
        return None
    low = float(every.min())
    high = float(later.max()) if later.size else float(every.max())
    margin = (high - low) * 0.05 or abs(high) * 0.05 or 0.05
    return low - margin, high + margin


def roc_figure(false_positive_rate: np.ndarray, true_positive_rate: np.ndarray, auc: float, title: str) -> Figure:
    """The ROC curve of a scored model, with its area and the chance diagonal."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.set_title("\n".join(textwrap.wrap(title, 60)) or title)
    ax.plot(false_positive_rate, true_positive_rate, label=f"model (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate (background called signal)")
    ax.set_ylabel("true positive rate (signal found)")
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower right")
    return fig


def confusion_figure(matrix: np.ndarray, title: str) -> Figure:
    """A multiclass model's confusion matrix: how often each true class (row) was predicted as each class."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.set_title("\n".join(textwrap.wrap(title, 60)) or title)
    image = ax.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def residuals_figure(target: np.ndarray, residuals: np.ndarray, title: str) -> Figure:
    """A regression model's residuals (prediction - target) against the target, and their histogram."""
    fig, (scatter, histogram) = plt.subplots(1, 2, figsize=(11, 4.5))
    fig.suptitle("\n".join(textwrap.wrap(title, 90)) or title)
    scatter.scatter(target, residuals, s=8, alpha=0.6)
    scatter.axhline(0.0, color="grey", linestyle="--")
    scatter.set_xlabel("target")
    scatter.set_ylabel("prediction - target")
    scatter.grid(True, alpha=0.4)
    histogram.hist(residuals, bins=30)
    histogram.set_xlabel("prediction - target")
    histogram.set_ylabel("rows")
    histogram.grid(True, alpha=0.4)
    return fig


def forest_figure(rows: Sequence[Mapping], title: str) -> Figure:
    """The paired differences a − b of one summary with their 95 % intervals, one line per pair of groups; the
    dashed line is no difference. Identical twins sit on it as a diamond; pairs without enough seeds are named."""
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.45 * max(1, len(rows))), layout="constrained")  # room for the labels
    fig.suptitle("\n".join(textwrap.wrap(title, 110)) or title)  # the whole width: the labels take the left
    for y, row in enumerate(rows):
        if row["ci95"] is not None and row["verdict"] != "identical":
            low, high = row["ci95"]
            ax.errorbar(row["mean_diff"], y, xerr=[[row["mean_diff"] - low], [high - row["mean_diff"]]], fmt="o",
                        color="C0", capsize=3)
        elif row["verdict"] == "identical":
            ax.plot(0.0, y, marker="D", color="C2")
    ax.axvline(0.0, color="grey", linestyle="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['label']}: {r['a_label']} − {r['b_label']} ({r['verdict']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("a − b (95 % bootstrap interval over matching seeds)")
    ax.grid(True, axis="x", alpha=0.4)
    return fig
