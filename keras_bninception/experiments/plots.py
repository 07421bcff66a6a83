"""The pictures of the experiments, drawn with matplotlib (the `plots` extra).

matplotlib is needed for the pictures only: `available()` says whether it can be imported, and
the binaries write their CSV / JSON without it and print `MISSING` (how to get the pictures).
Every picture has a title, axes with units, a legend, and the dataset and step count on it; the
size in pixels is `SIZE` (width, height) at `DPI`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DPI = 100
SIZE = {"figure1a": (720, 450), "figure1bc": (960, 420), "speedup": (800, 500)}
MISSING = (
    "matplotlib is not installed, so no pictures were drawn (the CSV and JSON files are "
    "complete). For the pictures: pip install 'keras-bninception[plots]' (or "
    "pip install 'matplotlib>=3.10,<3.12') and run the same command again."
)
_COLORS = {"baseline": "#d62728", "batch_norm": "#1f77b4"}
_SPEEDUP_COLORS = ("#7f7f7f", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e")


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(name: str, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    width, height = SIZE[name]
    return pyplot.subplots(figsize=(width / DPI, height / DPI), dpi=DPI, **kwargs)


def _save(figure, path: str) -> str:
    from matplotlib import pyplot

    figure.savefig(path, dpi=DPI)
    pyplot.close(figure)
    return path


def _steps_label(batch_size: int) -> str:
    return f"training step (mini-batches of {batch_size})"


def figure1a(
    rows: Sequence[Mapping], summary: Mapping, labels: Mapping[str, str], path: str
) -> str:
    """Figure 1(a): held-out accuracy against training steps, with and without BN."""
    figure, axes = _figure("figure1a", layout="constrained")
    for network, label in labels.items():
        points = [r for r in rows if r["network"] == network]
        axes.plot(
            [r["step"] for r in points],
            [100 * r["accuracy"] for r in points],
            color=_COLORS[network],
            label=label,
        )
    axes.set_xlabel(_steps_label(summary["batch_size"]))
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(
        "Figure 1(a) re-run: 3 sigmoid layers of 100 units, with and without BN\n"
        f"{summary['dataset_description']}, {summary['num_heldout_examples']} held-out images, "
        f"{summary['steps']:,} steps"
    )
    return _save(figure, path)


def figure1bc(
    rows: Sequence[Mapping], summary: Mapping, labels: Mapping[str, str], path: str
) -> str:
    """Figure 1(b, c): the 15th / 50th / 85th percentiles of one sigmoid's input over training."""
    figure, panels = _figure("figure1bc", ncols=2, sharey=True, layout="constrained")
    for axes, letter, (network, label) in zip(panels, "bc", labels.items(), strict=True):
        points = [r for r in rows if r["network"] == network]
        steps = [r["step"] for r in points]
        color = _COLORS[network]
        axes.fill_between(
            steps, [r["p15"] for r in points], [r["p85"] for r in points], color=color, alpha=0.15
        )
        axes.plot(steps, [r["p85"] for r in points], color=color, lw=1, ls="--", label="85th")
        axes.plot(steps, [r["p50"] for r in points], color=color, lw=2, label="50th (median)")
        axes.plot(steps, [r["p15"] for r in points], color=color, lw=1, ls=":", label="15th")
        axes.set_title(f"({letter}) {label}")
        axes.set_xlabel(_steps_label(summary["batch_size"]))
        axes.grid(alpha=0.3)
    # Room above the curves for the legends (one row each).
    values = [r[f"p{q}"] for r in rows for q in (15, 85)]
    low, high = min(values), max(values)
    span = max(high - low, 1e-6)
    panels[0].set_ylim(low - 0.05 * span, high + 0.3 * span)
    for axes in panels:
        axes.legend(title="percentile", loc="upper center", ncol=3, fontsize="small")
    panels[0].set_ylabel(f"input of {summary['followed_unit']} (pre-activation, no unit)")
    figure.suptitle(
        "Figure 1(b, c) re-run: distribution over the held-out images of one last-layer "
        f"sigmoid's input\n{summary['dataset_description']}, {summary['steps']:,} steps"
    )
    return _save(figure, path)


def speedup(
    rows: Sequence[Mapping],
    summary: Mapping,
    labels: Mapping[str, str],
    path: str,
) -> str:
    """Section 4.2 at small scale: held-out accuracy against steps for the five networks."""
    figure, axes = _figure("speedup", layout="constrained")
    for color, (network, label) in zip(_SPEEDUP_COLORS, labels.items(), strict=False):
        points = [r for r in rows if r["network"] == network]
        axes.plot(
            [r["step"] for r in points],
            [100 * r["accuracy"] for r in points],
            color=color,
            marker=".",
            label=label,
        )
    target = summary.get("target_accuracy")
    if target is not None:
        axes.axhline(
            100 * target,
            color="black",
            lw=0.8,
            ls="--",
            label=f"Inception's final accuracy ({100 * target:.1f} %)",
        )
    axes.set_xlabel(_steps_label(summary["batch_size"]))
    from keras_bninception.experiments.speedup import evaluated_on

    axes.set_ylabel(f"{evaluated_on(summary)} top-1 accuracy (%)")
    lowest = min(100 * r["accuracy"] for r in rows)
    axes.set_ylim(max(0, 10 * (lowest // 10) - 5), 100.5)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(
        "Section 4.2 re-run at small scale: the five networks, same seed and step budget\n"
        f"{summary['dataset_description']}, {summary['steps']:,} steps, "
        f"depth multiplier {summary['depth_multiplier']}"
    )
    return _save(figure, path)
