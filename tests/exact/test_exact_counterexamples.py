"""The paper's qualitative outcomes on the counterexamples (Imani, Graves and White 2018), and clear errors."""

import pytest
import torch

from emphatic_rl.envs.counterexamples import (
    baird_mdp,
    collision_mdp,
    dpg_counterexample_mdp,
    long_counterexample_mdp,
    three_state_counterexample_mdp,
)
from emphatic_rl.envs.tabular import TabularMDP
from emphatic_rl.exact import ContinuousLab, DiscreteLab, run_sampled_ace

D = torch.float64


def test_three_state_distribution_and_objective_match_the_closed_form():
    lab = DiscreteLab(three_state_counterexample_mdp())
    assert torch.allclose(lab.d_mu, torch.tensor([0.5, 0.125, 0.375], dtype=D))
    theta = torch.tensor([[0.7, -0.3], [-0.2, 0.9]], dtype=D)
    pi = lab.policy(theta)
    p, q = pi[0, 0], pi[1, 0]
    closed_form = 0.5 * (2 * p * q + (1 - p) * (1 - q)) + 0.25 * q + 0.375 * (1 - q)
    assert torch.allclose(lab.objective(theta), closed_form)
    assert lab.best_corner_objective() == (pytest.approx(1.25), [0, 0])


def test_three_state_expected_ascent_offpac_to_0875_and_ace_to_125():
    lab = DiscreteLab(three_state_counterexample_mdp())
    offpac = lab.ascent("offpac", torch.zeros(2, 2), steps=300, lr=20.0)
    ace = lab.ascent("ace", torch.zeros(2, 2), steps=300, lr=20.0, eta=1.0)
    assert offpac.final_objective == pytest.approx(0.875, abs=0.002)
    assert offpac.final_objective < 0.875
    assert ace.final_objective == pytest.approx(1.25, abs=0.002)
    # OffPAC ends with a1 in both groups (v = [1, 0, 1]); ACE with a0 in both (p = q = 1)
    assert offpac.final_policy[0][1] > 0.99 and offpac.final_policy[1][1] > 0.99
    assert ace.final_policy[0][0] > 0.99 and ace.final_policy[1][0] > 0.99


def check_sampled_outcome(result, runs):
    offpac, ace = result.final_objective
    assert float(offpac.max()) <= 0.8751 and 0.84 < float(offpac.mean()) <= 0.875
    high = int((ace >= 1.2).sum())
    assert high >= int(0.75 * runs)
    assert bool((ace[ace < 1.2] < 0.9).all())  # the rest stuck near the local optimum 0.875
    assert 1.1 < float(ace.mean()) < 1.25


def test_three_state_sampled_runs_reduced():
    lab = DiscreteLab(three_state_counterexample_mdp())
    result = run_sampled_ace(lab, (0.0, 1.0), alpha=0.1, episodes=1000, runs=16, seed=1)
    check_sampled_outcome(result, 16)


@pytest.mark.slow
def test_three_state_sampled_runs_n18_protocol():
    """The N18 fig. 1 protocol re-simulated: alpha 0.1, 2000 episodes, 30 runs: OffPAC 0.867, ACE 1.19-1.21."""
    lab = DiscreteLab(three_state_counterexample_mdp())
    for seed in (0, 1):
        result = run_sampled_ace(lab, (0.0, 1.0), alpha=0.1, episodes=2000, runs=30, seed=seed)
        check_sampled_outcome(result, 30)
        assert 1.15 < float(result.final_objective[1].mean()) < 1.24


def test_long_counterexample_semi_gradient_is_worse_and_ace_reaches_j_star():
    lab = DiscreteLab(long_counterexample_mdp(5))
    j_star, _ = lab.best_corner_objective()
    assert j_star == pytest.approx(
        2 * (1 - float(lab.d_mu[10]))
    )  # everything reaches +2 except the aliased R5
    offpac = lab.ascent("offpac", torch.zeros(2, 10), steps=300, lr=20.0)
    ace = lab.ascent("ace", torch.zeros(2, 10), steps=300, lr=20.0)
    assert offpac.final_objective == pytest.approx(1.0, abs=0.01)
    assert ace.final_objective == pytest.approx(j_star, abs=0.002)
    assert j_star - offpac.final_objective > 0.8


def test_dpg_counterexample_dpg_is_worse_and_emphatic_dpg_reaches_j_star():
    lab = ContinuousLab(dpg_counterexample_mdp(), "deterministic")
    j_star, corner = lab.best_corner_objective()
    p1 = float(lab.d_mu[1] / lab.d_mu[0])
    assert j_star == pytest.approx(1 + p1, abs=1e-9) and corner == [-40.0, -40.0]
    dpg = lab.ascent("dpg", torch.zeros(2), steps=300, lr=20.0)
    emphatic = lab.ascent("emphatic-dpg", torch.zeros(2), steps=300, lr=20.0)
    assert dpg.final_objective < 0.5 + 0.5 * (1 - p1) + 1e-9  # semi-gradient corner (+inf, +inf)
    assert dpg.final_objective > 0.84
    assert emphatic.final_objective == pytest.approx(j_star, abs=0.002)
    # the aliased action goes the wrong way under DPG and the right way under emphatic DPG
    assert dpg.final_policy["action"][1] > 3 and emphatic.final_policy["action"][1] < -3


def test_collision_and_baird_values():
    collision = DiscreteLab(collision_mdp())
    v = collision.policy_values(collision.mdp.target_policy)
    assert torch.allclose(v, 0.9 ** (7 - torch.arange(8, dtype=D)))
    baird = DiscreteLab(baird_mdp())
    assert torch.allclose(baird.d_mu, torch.full((7,), 1 / 7, dtype=D))
    assert torch.allclose(baird.policy_values(baird.mdp.target_policy), torch.zeros(7, dtype=D))


def test_bad_inputs_raise_one_clear_error():
    mdp = three_state_counterexample_mdp()
    P = mdp.transition.clone()
    P[1, 0, 0] = 0.9
    with pytest.raises(ValueError, match=r"rows must sum to 1.*P\[1, 0, :\] sums to 0.9"):
        TabularMDP(
            P, mdp.reward, mdp.discount, mdp.start, mdp.actor_features, mdp.critic_features, mdp.behaviour
        )
    with pytest.raises(
        ValueError, match="probability 0 to action 1 in state 0 of collision.*mu\\(a\\|s\\) > 0"
    ):
        DiscreteLab(collision_mdp()).expected_update("offpac", torch.zeros(2, 8))
    lab = DiscreteLab(mdp)
    with pytest.raises(ValueError, match=r"theta has shape \(3, 2\), expected \(2, 2\)"):
        lab.expected_update("ace", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'; allowed: true, offpac, ace"):
        lab.expected_update("reinforce", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="'dpg' does not apply to a linear softmax policy"):
        lab.expected_update("dpg", torch.zeros(2, 2))
    # the true gradient and all-actions need no importance ratio: allowed on Collision
    assert DiscreteLab(collision_mdp()).true_gradient(torch.zeros(2, 8)).shape == (2, 8)
