"""Linear softmax policies for a population of learners."""

from __future__ import annotations

import torch

from emphatic_rl.features import action_values, add_action_scaled_


class LinearSoftmaxPolicy:
    """``pi(a|s) ∝ exp(theta_a . x(s))`` for ``P`` learners at once; ``theta: [P, A, d]``, initialised to 0
    (the uniform policy, as in the authors' code).

    Features are active indices ``int64[P, K]`` / ``int64[P, E, K]`` or dense ``float[P, d]`` / ``float[P, E, d]``.
    ``grad_theta ln pi(a|s)`` has row ``b`` equal to ``(1[b = a] - pi(b|s)) x(s)``.
    """

    def __init__(
        self,
        num_actions: int,
        num_features: int,
        population_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_actions = num_actions
        self.num_features = num_features
        self.theta = torch.zeros(population_size, num_actions, num_features, dtype=dtype, device=device)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[P, A]`` for ``[P, K|d]`` features, ``[P, E, A]`` for ``[P, E, K|d]``."""
        return action_values(self.theta, features)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """``log pi(.|s)``: ``[P, A]`` or ``[P, E, A]``."""
        return torch.log_softmax(self.logits(features), dim=-1)

    def probs(self, features: torch.Tensor) -> torch.Tensor:
        """``pi(.|s)``: ``[P, A]`` or ``[P, E, A]``."""
        return torch.softmax(self.logits(features), dim=-1)

    def sample(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions ``int64[P]`` or ``int64[P, E]`` drawn from ``pi``."""
        probs = self.probs(features)
        flat = probs.reshape(-1, self.num_actions)
        return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])

    def greedy(self, features: torch.Tensor) -> torch.Tensor:
        """``argmax_a pi(a|s)``: ``int64[P]`` or ``int64[P, E]`` (lowest index on ties)."""
        return self.logits(features).argmax(-1)

    def add_grad_log_prob_(
        self, features: torch.Tensor, coef: torch.Tensor, probs: torch.Tensor, action: torch.Tensor
    ) -> None:
        """In place ``theta_p += coef_p * grad ln pi(action_p | s_p)`` for features ``[P, K|d]``, ``coef: [P]``,
        ``probs = pi(.|s): [P, A]``, ``action: int64[P]``."""
        one_hot = torch.nn.functional.one_hot(action, self.num_actions).to(probs.dtype)
        add_action_scaled_(self.theta, features, coef[:, None] * (one_hot - probs))

    def add_all_actions_(
        self, features: torch.Tensor, coef: torch.Tensor, probs: torch.Tensor, q_values: torch.Tensor
    ) -> None:
        """In place ``theta_p += coef_p * sum_a grad pi(a|s_p) q_p(s_p, a)`` (the all-actions update).

        For a softmax, ``sum_a pi_a q_a grad ln pi_a`` has row ``b`` equal to ``pi_b (q_b - sum_a pi_a q_a) x``.
        ``q_values: [P, A]``.
        """
        baseline = (probs * q_values).sum(-1, keepdim=True)
        add_action_scaled_(self.theta, features, coef[:, None] * probs * (q_values - baseline))
