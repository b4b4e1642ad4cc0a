"""``emphatic-rl report``: CI math, best-setting selection on synthetic metrics, divergence exclusion, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from emphatic_rl.cli import main
from emphatic_rl.config import ConfigError
from emphatic_rl.stats import t_quantile as t_quantile_975
from emphatic_rl.studies.report import (
    best_setting,
    load_results,
    mean_ci,
    sensitivity,
    split_variants,
    summarise_settings,
    write_report,
)


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(9) == pytest.approx(2.262, abs=1e-3)
    assert t_quantile_975(29) == pytest.approx(2.045, abs=1e-3)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=1e-3)
    assert t_quantile_975(100) == pytest.approx(1.9840, abs=1e-3)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_ci_by_hand():
    mean, half = mean_ci(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    # sd = sqrt(2.5), t_{.975,4} = 2.776: 2.776 * sqrt(2.5) / sqrt(5) = 1.9629
    assert mean == 3.0
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=2e-4)
    assert math.isnan(mean_ci(np.array([7.0]))[1])


def write_synthetic_variant(folder: Path, variant: str, settings: list[dict], curves: np.ndarray,
                            diverged_members: tuple[int, ...] = (), metric: str = "eval/return",
                            finished: bool = True) -> None:
    """A run folder as `sweep` writes it: ``curves [C, R, K]`` at steps 10, 20, ... for members c * R + r."""
    folder.mkdir(parents=True)
    C, R, K = curves.shape
    members = [{"member": c * R + r, "setting": c, "run": r, "values": settings[c]} for c in range(C) for r in range(R)]
    (folder / "members.json").write_text(json.dumps({"variant": variant, "runs": R, "members": members}))
    lines = ["step,metric,member,value"]
    for k in range(K):
        step = 10 * (k + 1)
        for c in range(C):
            for r in range(R):
                p = c * R + r
                lines.append(f"{step},diverged,{p},{1.0 if p in diverged_members and k == K - 1 else 0.0}")
                lines.append(f"{step},{metric},{p},{float(curves[c, r, k])!r}")
        lines.append(f"{step},time/steps_per_second,-1,100.0")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    if finished:
        (folder / "done.json").write_text("{}")


SETTINGS = [{"alpha_actor": 1.0, "eta": 0.0}, {"alpha_actor": 0.5, "eta": 0.0}, {"alpha_actor": 1.0, "eta": 1.0}]


def synthetic_curves() -> np.ndarray:
    # setting 0: high early, low late (best AUC); setting 1: low early, best at the end; setting 2: the best of all,
    # but one of its runs diverges (NaN at the last checkpoint), so it must be excluded.
    curves = np.zeros((3, 3, 4))
    curves[0] = [[5, 5, 5, 1], [5, 5, 5, 1], [5, 5, 5, 1]]
    curves[1] = [[0, 0, 2, 3], [0, 0, 2, 3.5], [0, 0, 2, 2.5]]
    curves[2] = [[9, 9, 9, 9], [9, 9, 9, 9], [9, 9, 9, math.nan]]
    return curves


def test_selection_by_auc_and_by_final_excludes_diverged(tmp_path):
    write_synthetic_variant(tmp_path / "v", "v", SETTINGS, synthetic_curves(), diverged_members=(8,))
    results, metric = load_results(tmp_path)
    assert metric == "eval/return"
    vr = results["v"]
    assert vr.curves.shape == (3, 3, 4) and list(vr.steps) == [10, 20, 30, 40]
    assert vr.diverged[2].tolist() == [False, False, True]
    by_auc = summarise_settings(vr, "auc")
    assert [s.eligible for s in by_auc] == [True, True, False]
    assert by_auc[0].score == pytest.approx(4.0) and math.isnan(by_auc[2].score)
    assert best_setting(by_auc).setting == 0
    by_final = summarise_settings(vr, "final")
    assert best_setting(by_final).setting == 1
    assert by_final[1].final == pytest.approx((3.0, 4.303 * 0.5 / math.sqrt(3)), abs=1e-3)  # t_{.975,2} = 4.303
    # sensitivity: alpha 1.0 -> setting 0 (setting 2 diverged), alpha 0.5 -> setting 1
    points = sensitivity(by_auc)
    assert [(v, s.setting) for v, s in points] == [(0.5, 1), (1.0, 0)]


def test_nan_without_diverged_flag_still_excludes(tmp_path):
    curves = synthetic_curves()
    write_synthetic_variant(tmp_path / "v", "v", SETTINGS, curves)  # no flag, but a NaN value
    summaries = summarise_settings(load_results(tmp_path)[0]["v"])
    assert not summaries[2].eligible


def test_all_settings_diverged_gives_no_best(tmp_path):
    curves = np.full((1, 2, 3), math.nan)
    write_synthetic_variant(tmp_path / "v", "v", [{"alpha_actor": 1.0}], curves)
    assert best_setting(summarise_settings(load_results(tmp_path)[0]["v"])) is None
    report = write_report(tmp_path).read_text()
    assert "(all settings diverged)" in report


def test_split_by_eta(tmp_path):
    write_synthetic_variant(tmp_path / "v", "v", SETTINGS, synthetic_curves())
    split = split_variants(load_results(tmp_path)[0], ["eta"])
    assert sorted(split) == ["v[eta=0]", "v[eta=1]"]
    assert split["v[eta=0]"].settings == [{"alpha_actor": 1.0}, {"alpha_actor": 0.5}]
    assert split["v[eta=1]"].curves.shape == (1, 3, 4)


def test_chunks_are_merged_by_global_setting(tmp_path):
    curves = synthetic_curves()[:2]
    write_synthetic_variant(tmp_path / "v" / "chunk-0", "v", SETTINGS[:1], curves[:1])
    write_synthetic_variant(tmp_path / "v" / "chunk-1", "v", SETTINGS[1:2], curves[1:2])
    # chunk-1's members.json must carry the global setting index 1
    record = json.loads((tmp_path / "v" / "chunk-1" / "members.json").read_text())
    for m in record["members"]:
        m["setting"] = 1
    (tmp_path / "v" / "chunk-1" / "members.json").write_text(json.dumps(record))
    vr = load_results(tmp_path)[0]["v"]
    assert vr.curves.shape == (2, 3, 4)
    np.testing.assert_array_equal(vr.curves, curves)


def test_report_files_and_table(tmp_path):
    write_synthetic_variant(tmp_path / "runs" / "offpac", "offpac", SETTINGS[:2], synthetic_curves()[:2])
    write_synthetic_variant(tmp_path / "runs" / "ace", "ace", SETTINGS[:2], synthetic_curves()[:2] + 1.0)
    (tmp_path / "runs" / "sweep.json").write_text(json.dumps({
        "name": "synthetic", "base": {"env": "x", "steps": 40},
        "variants": [{"name": "offpac"}, {"name": "ace"}],
        "report": {"baseline": "offpac", "reference": {"offpac": -1.5}, "reference_label": "paper"},
    }))
    out = tmp_path / "report"
    path = write_report(tmp_path / "runs", out)
    text = path.read_text()
    for name in ("curves.png", "sensitivity.png", "summary.csv"):
        assert (out / name).stat().st_size > 0
    rows = [line for line in text.splitlines() if line.startswith("| offpac") or line.startswith("| ace")]
    assert rows[0].startswith("| offpac | alpha_actor = 1, eta = 0 | 4.000 ± 0.000 | 1.000 ± 0.000 | 2/2 | -1.5 |")
    assert rows[1].startswith("| ace | alpha_actor = 1, eta = 0 | 5.000")
    assert "`ace`: +1.000, better (intervals do not overlap)" in text
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 4


def test_baseline_list_compares_each_variant_with_the_baseline_of_its_suffix():
    from emphatic_rl.studies.report import _baseline_groups

    names = ["offpac-etd", "ace-direct-etd", "offpac-tdrc", "ace-direct-tdrc", "ace[eta=1]", "other-td"]
    assert _baseline_groups(["offpac-etd", "offpac-tdrc"], names) == {
        "offpac-etd": ["ace-direct-etd", "ace[eta=1]", "other-td"],
        "offpac-tdrc": ["ace-direct-tdrc"],
    }
    assert _baseline_groups("offpac-tdrc", names)["offpac-tdrc"] == [n for n in names if n != "offpac-tdrc"]
    assert _baseline_groups(None, names) == {}
    with pytest.raises(ConfigError, match="baseline must be a variant name or a list of names, got 3"):
        _baseline_groups(3, names)


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no sweep results" in capsys.readouterr().err
    write_synthetic_variant(tmp_path / "v", "v", SETTINGS, synthetic_curves())
    assert main(["report", str(tmp_path), "--metric", "eval/nothing"]) == 2
    assert "no 'eval/nothing' rows" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown selection 'best'"):
        write_report(tmp_path, select="best")


def test_sweep_then_report_end_to_end(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(
        'name = "e2e"\nruns = 2\n[base]\nenv = "counterexample-three-state"\nsteps = 20\neval_every = 10\n'
        'eval_episodes = 1\neval_max_steps = 5\nlog_every = 10\n[base.env_options]\nobservation = "state"\n'
        '[base.agent_options]\ncritic = "oracle"\n[grid]\nalpha_actor = [0.5, 0.1]\n'
        '[[variants]]\nname = "offpac"\nagent = "offpac"\n[[variants]]\nname = "ace"\nagent = "ace"\n'
        '[report]\nbaseline = "offpac"\n'
    )
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "metric `eval/exact_J`" in text and "| offpac |" in text and "| ace |" in text
    assert text.index("| offpac |") < text.index("| ace |")  # the study's order


def test_reference_by_metric(tmp_path):
    write_synthetic_variant(tmp_path / "v", "v", SETTINGS[:1], synthetic_curves()[:1], metric="eval/excursions_return")
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "s", "report": {
        "reference": {"v": -1.0}, "reference_label": "episodic paper",
        "reference_by_metric": {"eval/excursions_return": {"label": "excursions paper", "v": -2.0}},
    }}))
    text = write_report(tmp_path, tmp_path / "r", metric="eval/excursions_return").read_text()
    assert "excursions paper" in text and "| -2.0 |" in text and "episodic paper" not in text


def test_unfinished_folders_are_skipped_and_named(tmp_path):
    write_synthetic_variant(tmp_path / "done", "done", SETTINGS[:1], synthetic_curves()[:1])
    write_synthetic_variant(tmp_path / "running", "running", SETTINGS[:1], synthetic_curves()[:1], finished=False)
    assert sorted(load_results(tmp_path)[0]) == ["done"]
    assert sorted(load_results(tmp_path, include_unfinished=True)[0]) == ["done", "running"]
    text = write_report(tmp_path).read_text()
    assert "| done |" in text and "| running |" not in text
    assert "Not reported (run folders without done.json: still running or killed): `running`." in text
