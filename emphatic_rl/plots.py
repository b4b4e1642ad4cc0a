"""Figure conventions shared by ``emphatic-rl report``, the Dyna study and the experiment scripts.

Every figure made with these helpers:

- says what its band or bar is and over how many runs (:func:`interval_label`, e.g. "mean ± 95% t-CI, n = 30 runs");
- gives each of up to ten variants its own colour *and* line style *and* marker (:func:`variant_styles`), so curves
  stay apart in greyscale and for colour-blind readers;
- keeps the legend outside the axes (:func:`legend_outside`), never on the data;
- never hides a legend entry behind an identical curve: markers of different variants sit at offset positions, and
  a curve equal to an earlier one says so in its label (:func:`curve_labels`);
- draws the papers' reference values as labelled dashed horizontal lines (:func:`reference_lines`);
- shares one colour scale across panels that show the same quantity (:func:`shared_norm`).

matplotlib is imported inside the functions (with the non-interactive ``Agg`` backend where a figure is created).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emphatic_rl.stats import CONFIDENCE, describe_interval

#: ten colours (matplotlib's tab10) paired with four line styles and ten markers: every pair of the first ten
#: variants differs in colour, and neighbours also differ in line style and marker.
COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def figure():
    """``matplotlib.pyplot`` with the ``Agg`` backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def variant_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"color", "linestyle", "marker"}}`` for the variants, in order (the cycle repeats after ten)."""
    return {
        name: {
            "color": COLOURS[i % len(COLOURS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)],
        }
        for i, name in enumerate(names)
    }


def interval_label(n: int, confidence: float = CONFIDENCE, method: str = "t") -> str:
    """What a band means, for titles and axis labels: ``"mean ± 95% t-CI, n = 10 runs"``."""
    return describe_interval(n, confidence, method)


def curve_labels(curves: Mapping[str, np.ndarray], labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Legend labels that name identical curves: a curve equal (``allclose``, NaNs equal) to an earlier one gets
    ``" (same curve as <earlier>)"`` appended, so a legend entry whose line lies under another is still explained."""
    labels = dict(labels or {name: name for name in curves})
    seen: list[tuple[str, np.ndarray]] = []
    for name, curve in curves.items():
        array = np.asarray(curve, dtype=np.float64)
        twin = next(
            (
                other
                for other, previous in seen
                if previous.shape == array.shape and np.allclose(previous, array, equal_nan=True)
            ),
            None,
        )
        if twin is not None:
            labels[name] = f"{labels[name]} (same curve as {twin})"
        seen.append((name, array))
    return labels


def plot_band(
    ax: Any,
    x: np.ndarray | Sequence[float],
    mean: np.ndarray,
    half: np.ndarray | None,
    label: str,
    style: Mapping[str, Any],
    index: int = 0,
    markers: int = 8,
) -> None:
    """A mean curve with its interval band ``mean +- half`` (skipped where ``half`` is NaN).

    Markers: about ``markers`` per curve (at least every third point), shifted by ``index`` so that equal curves of
    different variants still show each variant's marker.
    """
    x, mean = np.asarray(x), np.asarray(mean, dtype=np.float64)
    every = max(3, len(x) // markers) if len(x) >= 6 else 1  # room to shift markers on all but tiny curves
    start = (index * max(1, every // 4)) % every
    ax.plot(x, mean, label=label, markevery=(start, every), markersize=4, lw=1.4, **style)
    if half is not None:
        half = np.asarray(half, dtype=np.float64)
        finite = np.isfinite(half) & np.isfinite(mean)
        if finite.any():
            ax.fill_between(x, mean - half, mean + half, where=finite, alpha=0.15, color=style.get("color"), lw=0)


def reference_lines(
    ax: Any, references: Mapping[str, float], styles: Mapping[str, Mapping[str, Any]], label: str = "reference"
) -> None:
    """A dashed horizontal line per ``references[variant]``, in the variant's colour, labelled in the legend
    (e.g. ``"offpac: J23 paper -143.7"``)."""
    for name, value in references.items():
        if value is None or not np.isfinite(value):
            continue
        colour = styles.get(name, {}).get("color", "k")
        ax.axhline(value, color=colour, linestyle=(0, (5, 3)), lw=0.9, alpha=0.8, label=f"{name}: {label} {value:g}")


def legend_outside(ax: Any, fontsize: int = 8, title: str | None = None) -> None:
    """The legend to the right of the axes (save with ``bbox_inches="tight"`` so it is kept)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            fontsize=fontsize,
            title=title,
            title_fontsize=fontsize,
            frameon=False,
        )


def shared_norm(arrays: Sequence[Any]) -> Any:
    """One ``matplotlib.colors.Normalize`` over the finite values of every array, for panels that share a scale."""
    from matplotlib.colors import Normalize

    finite = [np.asarray(a, dtype=np.float64) for a in arrays]
    finite = [a[np.isfinite(a)] for a in finite]
    finite = [a for a in finite if a.size]
    if not finite:
        return Normalize()
    return Normalize(vmin=min(float(a.min()) for a in finite), vmax=max(float(a.max()) for a in finite))


def save(fig: Any, path: Any, dpi: int = 110) -> None:
    """Save with the legend(s) outside the axes kept in the picture, and close."""
    plt = figure()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_performance_profiles(
    ax: Any,
    scores: Mapping[str, Any],
    taus: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    reps: int = 2000,
) -> None:
    """Performance profiles (rliable's run-score distributions) of several variants on one axis.

    Args:
        ax: a matplotlib axis.
        scores: ``{variant: scores [runs, tasks]}`` (normalised so that tasks compare).
        taus: thresholds ``[K]``.
        confidence: of the stratified-bootstrap band (:func:`emphatic_rl.stats.performance_profile`).
        reps: bootstrap resamples of the band.
    """
    from emphatic_rl.stats import performance_profile

    styles = variant_styles(list(scores))
    taus = np.asarray(taus, dtype=np.float64)
    runs = set()
    for index, (name, values) in enumerate(scores.items()):
        profile, low, high = performance_profile(values, taus, confidence, reps)
        plot_band(ax, taus, profile, None, name, styles[name], index)
        ax.fill_between(taus, low, high, alpha=0.15, color=styles[name]["color"], lw=0)
        runs.add(np.asarray(values).shape[0])
    n = min(runs) if runs else 0
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title(
        f"performance profiles ({100 * confidence:g}% stratified-bootstrap bands, n = {n} runs per task)", fontsize=10
    )
    legend_outside(ax)
