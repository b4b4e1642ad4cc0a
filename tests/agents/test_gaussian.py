"""Linear Gaussian ACE / OffPAC on the DPG counterexample: densities, bad input, and a short sampled run."""

import pytest
import torch

from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp
from emphatic_rl.exact import ContinuousLab
from emphatic_rl.exact.continuous import gaussian_log_prob, run_sampled_gaussian_ace

D = torch.float64


def test_log_prob_matches_torch_normal_and_std_is_positive_by_construction():
    mean, log_std, action = torch.randn(50, dtype=D), 3 * torch.randn(50, dtype=D), torch.randn(50, dtype=D)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(action)
    assert torch.allclose(gaussian_log_prob(mean, log_std, action), expected)
    assert bool((log_std.exp() > 0).all())  # any real log_std is a valid policy


def test_needs_a_gaussian_lab_and_valid_eta():
    mdp = dpg_counterexample_mdp()
    with pytest.raises(ValueError, match="policy='gaussian'"):
        run_sampled_gaussian_ace(ContinuousLab(mdp, "deterministic"), episodes=1, runs=1)
    with pytest.raises(ValueError, match="eta must be in"):
        run_sampled_gaussian_ace(ContinuousLab(mdp, "gaussian"), etas=(1.5,), episodes=1, runs=1)


def test_short_run_eta_zero_moves_the_aliased_mean_the_semi_gradient_way():
    """OffPAC (eta = 0) pushes the aliased mean up (the semi-gradient direction of the counterexample), ACE (eta = 1)
    pushes it down, on average over runs; objectives are finite exact J values."""
    lab = ContinuousLab(dpg_counterexample_mdp(), "gaussian")
    result = run_sampled_gaussian_ace(lab, (0.0, 1.0), alpha=0.02, episodes=150, runs=8, checkpoints=1)
    assert bool(torch.isfinite(result.objective).all())
    aliased_mean = result.final_theta[:, :, 1].mean(1)
    expected = [lab.expected_update("ace", torch.zeros(3), eta=eta)[1] for eta in (0.0, 1.0)]
    assert expected[0] > 0 > expected[1]
    assert float(aliased_mean[0]) > float(aliased_mean[1])
