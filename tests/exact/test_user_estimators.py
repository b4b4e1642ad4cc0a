"""User-defined estimators in the exact lab: expected update, bias, ascent, Monte Carlo; the README example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from emphatic_rl.envs.counterexamples import three_state_counterexample_mdp
from emphatic_rl.exact import (
    USER_ESTIMATORS,
    ContinuousLab,
    DiscreteLab,
    monte_carlo_updates,
    register_estimator,
    unregister_estimator,
)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _clean_registry():
    before = set(USER_ESTIMATORS)
    yield
    for name in set(USER_ESTIMATORS) - before:
        unregister_estimator(name)


def _readme_estimator_block() -> str:
    text = README.read_text()
    start = text.index("**Testing a new estimator for bias.**")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None
    return block.group(1)


def test_readme_estimator_example_runs_in_under_20_lines(capsys):
    code = _readme_estimator_block()
    assert len([line for line in code.splitlines() if line.strip()]) < 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    lab, theta = namespace["lab"], namespace["theta"]
    # half-ACE's expected update is the mean of OffPAC's and ACE's, so its bias is half OffPAC's
    assert namespace["bias"] == pytest.approx(0.5 * lab.relative_bias("offpac", theta), rel=1e-12)
    assert namespace["final_J"] == pytest.approx(lab.ascent("half-ace", theta, 300, 20.0).final_objective)
    assert namespace["check"].max_abs_z() < 4.5
    assert "relative bias 0.447" in capsys.readouterr().out


def test_registered_estimator_is_a_first_class_estimator():
    lab = DiscreteLab(three_state_counterexample_mdp())
    theta = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)

    @register_estimator("ace-copy")
    def ace_copy(lab, theta, eta):
        return lab.expected_update("ace", theta, eta)

    assert "ace-copy" in lab.applicable_estimators()
    torch.testing.assert_close(lab.bias("ace-copy", theta), lab.bias("ace", theta), rtol=0, atol=0)
    assert lab.relative_bias("ace-copy", theta) < 1e-10  # ACE (eta = 1) is unbiased
    assert lab.ascent("ace-copy", theta, 5, 1.0).final_objective == lab.ascent("ace", theta, 5, 1.0).final_objective
    with pytest.raises(ValueError, match="no sampled form for estimator 'ace-copy'"):
        monte_carlo_updates(lab, theta, "ace-copy")
    with pytest.raises(ValueError, match="estimator name 'ace' is already taken"):
        register_estimator("ace", ace_copy)
    # it applies to the labs it names only (default: the discrete lab)
    from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp

    continuous = ContinuousLab(dpg_counterexample_mdp())
    with pytest.raises(ValueError, match="estimator 'ace-copy' does not apply"):
        continuous.expected_update("ace-copy", torch.zeros(continuous.theta_shape))


def test_monte_carlo_detects_a_sampled_form_that_does_not_match_its_expectation():
    lab = DiscreteLab(three_state_counterexample_mdp())
    theta = torch.zeros(2, 2, dtype=torch.float64)

    def offpac_expected(lab, theta, eta):  # claims OffPAC's expectation...
        return lab.expected_update("offpac", theta)

    def ace_sampled(step):  # ...but samples ACE's update
        return (step.rho * step.emphatic_weighting * step.delta)[:, None, None] * step.score

    def offpac_sampled(step):
        return (step.rho * step.interest * step.delta)[:, None, None] * step.score

    register_estimator("mismatched", offpac_expected, sampled=ace_sampled)
    register_estimator("my-offpac", offpac_expected, sampled=offpac_sampled)
    assert monte_carlo_updates(lab, theta, "mismatched", num_streams=400, num_steps=100).max_abs_z() > 10
    mine = monte_carlo_updates(lab, theta, "my-offpac", num_streams=400, num_steps=100, seed=1)
    builtin = monte_carlo_updates(lab, theta, "offpac", num_streams=400, num_steps=100, seed=1)
    torch.testing.assert_close(mine.mean, builtin.mean)  # the same draws, the same updates
    assert mine.max_abs_z() < 4.5


def test_bad_estimator_outputs_are_one_clear_error():
    lab = DiscreteLab(three_state_counterexample_mdp())
    register_estimator("wrong-shape", lambda lab, theta, eta: torch.zeros(3))
    with pytest.raises(ValueError, match=r"'wrong-shape': its expected update has shape \(3,\), expected \(2, 2\)"):
        lab.expected_update("wrong-shape", torch.zeros(2, 2))
    register_estimator("bad-sample", lambda lab, theta, eta: torch.zeros(2, 2), sampled=lambda step: step.rho)
    with pytest.raises(ValueError, match="its sampled form returned shape"):
        monte_carlo_updates(lab, torch.zeros(2, 2), "bad-sample", num_streams=4, num_steps=2, burn_in=0)
