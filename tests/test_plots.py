"""The figure conventions of emphatic_rl.plots."""

import numpy as np

from emphatic_rl import plots


def test_ten_variants_all_differ_in_colour_and_neighbours_in_line_and_marker():
    styles = list(plots.variant_styles([f"v{i}" for i in range(10)]).values())
    assert len({s["color"] for s in styles}) == 10
    assert len({s["marker"] for s in styles}) == 10
    assert all(a["linestyle"] != b["linestyle"] for a, b in zip(styles, styles[1:], strict=False))


def test_identical_curves_are_named_in_the_legend():
    labels = plots.curve_labels({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.0, 3.0], "d": [np.nan, 2.0],
                                 "e": [np.nan, 2.0]})
    assert labels == {"a": "a", "b": "b (same curve as a)", "c": "c", "d": "d", "e": "e (same curve as d)"}


def test_shared_norm_spans_every_panel():
    norm = plots.shared_norm([np.array([[0.0, 1.0]]), np.array([[-3.0, np.nan]]), np.array([[2.5]])])
    assert (norm.vmin, norm.vmax) == (-3.0, 2.5)


def test_legend_outside_the_axes_and_reference_lines_labelled(tmp_path):
    plt = plots.figure()
    fig, ax = plt.subplots()
    styles = plots.variant_styles(["a", "b"])
    x = np.arange(10)
    plots.plot_band(ax, x, x * 1.0, np.ones(10), "a", styles["a"], 0)
    plots.plot_band(ax, x, x * 1.0, None, "b", styles["b"], 1)
    plots.reference_lines(ax, {"a": 4.0, "b": float("nan")}, styles, "paper")
    plots.legend_outside(ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a", "b", "a: paper 4"]
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 > ax.get_window_extent().x1  # right of the data, not on it
    # markers of equal curves at different positions
    starts = [line.get_markevery()[0] for line in ax.get_lines()[:2]]
    assert starts[0] != starts[1]
    plots.save(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_performance_profiles_figure(tmp_path):
    plt = plots.figure()
    fig, ax = plt.subplots()
    rng = np.random.default_rng(0)
    plots.plot_performance_profiles(ax, {"a": rng.random((5, 3)), "b": rng.random((5, 3)) + 0.5},
                                    np.linspace(0, 1.5, 16), reps=100)
    assert "n = 5 runs" in ax.get_title()
    plots.save(fig, tmp_path / "profiles.png")
