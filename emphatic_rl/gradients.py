"""Compare gradient estimators with the true off-policy gradient on a tabular MDP (the ``emphatic-rl gradients``
command; its flags are the fields of :class:`GradientsOptions`).

Examples::

    emphatic-rl gradients --env counterexample-three-state --estimators true,offpac,ace --ascent --steps 300 --lr 20
    emphatic-rl gradients --env counterexample-dpg --estimators dpg,emphatic-dpg --ascent --json
    emphatic-rl gradients --env counterexample-three-state --theta random --samples 200000

The human output is a table: J, the true gradient's norm, and for each estimator its expected update's cosine
with the true gradient and its relative bias ``|E[update] - grad J| / |grad J|`` (and, with ``--ascent``, the
J reached by following its expected update; with ``--samples``, a Monte Carlo check of the sampled estimator).
``--json`` prints one JSON object with keys ``env``, ``J``, ``J_star``, ``true_gradient`` and ``estimators``
(per estimator: ``expected_update``, ``cosine``, ``relative_bias``, and ``final_J``, ``final_policy``,
``J_trajectory`` with ``--ascent``, ``monte_carlo`` with ``--samples``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.envs.counterexamples import MDP_BUILDERS, make_mdp
from emphatic_rl.envs.tabular import TabularMDP
from emphatic_rl.exact.lab import (
    DTYPE,
    INTERESTS,
    ContinuousLab,
    DiscreteLab,
    Lab,
    check_estimator_names,
)
from emphatic_rl.exact.sampled import monte_carlo_updates, sampled_estimator_names

POLICIES = ("auto", "softmax", "deterministic", "gaussian")
STREAMS = 200


@dataclass
class GradientsOptions:
    """What ``emphatic-rl gradients`` computes (the command's flags, by the same names).

    - ``env``: a tabular env of ``MDP_BUILDERS``; ``env_option``: its builder's ``KEY=VALUE`` options.
    - ``policy``: one of ``POLICIES`` (``"auto"``: softmax for discrete actions; for a real action deterministic
      unless a stochastic estimator is asked).
    - ``theta``: ``"zeros"``, ``"random"`` (seeded by ``seed``) or a file (``.json`` list, ``.pt`` or ``.npy``).
    - ``eta``: ACE's ``eta`` in ``[0, 1]``; ``interest``: one of ``INTERESTS``.
    - ``estimators``: comma-separated names (``None``: every one that applies).
    - ``ascent``: follow each estimator's expected update for ``steps`` steps of size ``lr``.
    - ``samples``: a Monte Carlo check with this many sampled updates (0: none); ``plot``: a PNG of the ascents.
    - ``progress``: a progress bar over the estimators with ``ascent`` or ``samples``.
    """

    env: str
    env_option: list[str] = field(default_factory=list)
    policy: str = "auto"
    theta: str = "zeros"
    seed: int = 0
    eta: float = 1.0
    interest: str = "uniform"
    estimators: str | None = None
    ascent: bool = False
    steps: int = 300
    lr: float = 20.0
    samples: int = 0
    plot: str | None = None
    progress: bool = False


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--env-option must be KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _load_theta(spec: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    if spec == "zeros":
        return torch.zeros(shape, dtype=DTYPE)
    if spec == "random":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--theta must be zeros, random or an existing file, got {spec!r}")
    if path.suffix not in (".json", ".pt", ".npy"):
        raise ValueError(f"--theta file must end in .json, .pt or .npy, got {path.name!r}")
    try:
        if path.suffix == ".json":
            value: Any = json.loads(path.read_text())
        elif path.suffix == ".pt":
            from emphatic_rl.checkpoints import load_checkpoint

            value = load_checkpoint(path)
        else:
            import numpy as np

            value = np.load(path, allow_pickle=False)
        return torch.as_tensor(value, dtype=DTYPE)
    except (ValueError, TypeError, RuntimeError, OSError, EOFError, UnicodeDecodeError) as error:
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"--theta file {str(path)!r} does not hold an array of numbers of shape {list(shape)}: {detail}"
        ) from None


def build_lab(args: GradientsOptions) -> tuple[Lab, list[str]]:
    """Validate every option and build the lab; returns ``(lab, estimator names)``. Raises ``ValueError``."""
    if args.env not in MDP_BUILDERS:
        raise ValueError(f"unknown env {args.env!r} for gradients; allowed: {', '.join(MDP_BUILDERS)}")
    if args.policy not in POLICIES:
        raise ValueError(f"unknown --policy {args.policy!r}; allowed: {', '.join(POLICIES)}")
    if args.interest not in INTERESTS:
        raise ValueError(f"unknown --interest {args.interest!r}; allowed: {', '.join(INTERESTS)}")
    if args.steps < 1 or not args.lr > 0:
        raise ValueError(f"--steps must be >= 1 and --lr > 0, got {args.steps} and {args.lr}")
    if args.samples < 0:
        raise ValueError(f"--samples must be >= 0, got {args.samples}")
    if args.plot and not args.ascent:
        raise ValueError("--plot draws the ascent: add --ascent")
    if not 0.0 <= args.eta <= 1.0:  # also refuses nan and inf
        raise ValueError(f"--eta must be in [0, 1] (0: OffPAC, 1: ACE), got {args.eta}")
    estimators = [name.strip() for name in args.estimators.split(",")] if args.estimators else None
    if estimators is not None:
        check_estimator_names(estimators)
    options = dict(_parse_option(text) for text in args.env_option)
    try:
        mdp = make_mdp(args.env, **options)
    except TypeError as error:
        raise ValueError(f"bad --env-option for {args.env}: {error}") from None
    if isinstance(mdp, TabularMDP):
        if args.policy not in ("auto", "softmax"):
            raise ValueError(f"{args.env} has discrete actions: --policy must be softmax, got {args.policy!r}")
        lab: Lab = DiscreteLab(mdp, args.interest)
    else:
        policy = args.policy
        if policy == "auto":
            stochastic = estimators is not None and any(n not in ("true", "dpg", "emphatic-dpg") for n in estimators)
            policy = "gaussian" if stochastic else "deterministic"
        if policy == "softmax":
            raise ValueError(f"{args.env} has a real action: --policy must be deterministic or gaussian")
        lab = ContinuousLab(mdp, policy, args.interest)
    if estimators is None:
        estimators = list(lab.available_estimators)
        if isinstance(lab, DiscreteLab) and lab.uncovered_actions():
            estimators = [name for name in estimators if name in ("true", "all-actions")]
    lab.check_estimators(estimators)
    if args.samples:
        if not isinstance(lab, DiscreteLab):
            raise ValueError("--samples (Monte Carlo) is available for discrete-action envs only")
        if not any(name in sampled_estimator_names() for name in estimators):
            raise ValueError(f"--samples needs one of the sampled estimators {', '.join(sampled_estimator_names())}")
    return lab, estimators


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return None
    return float((a * b).sum()) / (na * nb)


def compute(args: GradientsOptions, lab: Lab, estimators: list[str]) -> dict[str, Any]:
    """All the numbers of the report, as a JSON-ready dict."""
    theta = lab.check_theta(_load_theta(args.theta, lab.theta_shape, args.seed))
    true = lab.true_gradient(theta)
    true_norm = float(true.norm())
    try:
        j_star: float | None = lab.best_corner_objective()[0]
    except ValueError:
        j_star = None
    report: dict[str, Any] = {
        "env": args.env,
        "policy": lab.parameterization,
        "interest": args.interest,
        "eta": args.eta,
        "theta": theta.tolist(),
        "J": float(lab.objective(theta)),
        "J_star": j_star,
        "true_gradient": true.tolist(),
        "true_gradient_norm": true_norm,
        "estimators": {},
    }
    names: Any = estimators
    if args.progress and (args.ascent or args.samples):  # seconds to minutes per estimator
        from tqdm import tqdm

        names = tqdm(estimators, desc="estimators", unit="estimator", dynamic_ncols=True, leave=False)
    for name in names:
        update = lab.expected_update(name, theta, args.eta)
        entry: dict[str, Any] = {
            "expected_update": update.tolist(),
            "cosine": _cosine(update, true),
            "relative_bias": float((update - true).norm()) / true_norm if true_norm > 0 else None,
        }
        if args.ascent:
            result = lab.ascent(name, theta, args.steps, args.lr, args.eta)
            entry["final_J"] = result.final_objective
            entry["final_policy"] = result.final_policy
            entry["final_theta"] = result.thetas[-1].tolist()
            entry["J_trajectory"] = result.objective.tolist()
            entry["_thetas"] = result.thetas
        if args.samples and name in sampled_estimator_names():
            steps = max(2, math.ceil(args.samples / STREAMS))
            assert isinstance(lab, DiscreteLab)  # build_lab allows --samples on discrete-action envs only
            mc = monte_carlo_updates(lab, theta, name, args.eta, num_streams=STREAMS, num_steps=steps, seed=args.seed)
            entry["monte_carlo"] = mc.as_dict()
        report["estimators"][name] = entry
    return report


def format_table(report: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"env {report['env']}   interest {report['interest']}   eta {report['eta']}",
        f"policy: {report['policy']}",
        f"J = {report['J']:.6f}   |true gradient| = {report['true_gradient_norm']:.6g}   "
        f"J* (best corner) = {fmt(report['J_star'], '.6f')}",
        "",
    ]
    any_ascent = any("final_J" in e for e in report["estimators"].values())
    any_mc = any("monte_carlo" in e for e in report["estimators"].values())
    header = f"{'estimator':<14}{'cosine':>10}{'rel. bias':>12}{'|update|':>12}"
    header += f"{'final J':>12}" if any_ascent else ""
    header += f"{'MC max|z|':>12}{'MC var':>12}" if any_mc else ""
    lines += [header, "-" * len(header)]
    for name, entry in report["estimators"].items():
        norm = float(torch.tensor(entry["expected_update"]).norm())
        row = f"{name:<14}{fmt(entry['cosine']):>10}{fmt(entry['relative_bias']):>12}{norm:>12.4g}"
        if any_ascent:
            row += f"{fmt(entry.get('final_J'), '.6f'):>12}"
        if any_mc:
            mc = entry.get("monte_carlo")
            row += f"{fmt(mc and mc['max_abs_z'], '.2f'):>12}{fmt(mc and mc['total_variance'], '.4g'):>12}"
        lines.append(row)
    if any_mc:
        lines.append("MC max|z|: largest |sampled mean - exact expected update| / standard error (unbiased: ~< 4)")
    return "\n".join(lines)


def plot_ascents(path: str, lab: Lab, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Two effective parameters: 2-action softmax on 2 features (logit differences), or a 2-d deterministic policy.
    coords: Callable[[torch.Tensor], torch.Tensor] | None = None
    if isinstance(lab, DiscreteLab) and lab.theta_shape == (2, 2):

        def logit_coords(theta: torch.Tensor) -> torch.Tensor:
            return theta[..., 0, :] - theta[..., 1, :]

        coords = logit_coords

        def objective_grid(z: torch.Tensor) -> torch.Tensor:
            theta = torch.stack([z, torch.zeros_like(z)], dim=-2)
            return lab.batched_objective_of_theta(theta.reshape(-1, 2, 2)).reshape(z.shape[:-1])

        axis_labels = ("logit a0 - a1, feature 0", "logit a0 - a1, feature 1")
    elif isinstance(lab, ContinuousLab) and lab.theta_shape == (2,):

        def theta_coords(theta: torch.Tensor) -> torch.Tensor:
            return theta

        coords = theta_coords

        def objective_grid(z: torch.Tensor) -> torch.Tensor:
            flat = z.reshape(-1, 2)
            return torch.stack([lab.objective(u) for u in flat]).reshape(z.shape[:-1])

        axis_labels = ("u[0]", "u[1]")
    figure, axes = plt.subplots(1, 2 if coords else 1, figsize=(11 if coords else 6, 4.5), squeeze=False)
    for name, entry in report["estimators"].items():
        axes[0, 0].plot(entry["J_trajectory"], label=name)
    if report["J_star"] is not None:
        axes[0, 0].axhline(report["J_star"], color="k", linestyle=":", label="J* (best corner)")
    axes[0, 0].set(xlabel="ascent step", ylabel="J_mu", title=f"expected-update ascent on {report['env']}")
    axes[0, 0].legend()
    if coords:
        paths = {name: coords(entry["_thetas"]) for name, entry in report["estimators"].items()}
        every = torch.cat(list(paths.values()))
        low = torch.minimum(every.min(0).values, torch.tensor(-3.0, dtype=DTYPE)) - 0.5
        high = torch.maximum(every.max(0).values, torch.tensor(3.0, dtype=DTYPE)) + 0.5
        g0 = torch.linspace(float(low[0]), float(high[0]), 41, dtype=DTYPE)
        g1 = torch.linspace(float(low[1]), float(high[1]), 41, dtype=DTYPE)
        grid = torch.stack(torch.meshgrid(g0, g1, indexing="xy"), dim=-1)
        with torch.no_grad():
            values = objective_grid(grid)
        contour = axes[0, 1].contourf(g0, g1, values, levels=30, cmap="viridis")
        figure.colorbar(contour, ax=axes[0, 1], label="J_mu")
        for name, path_coords in paths.items():
            axes[0, 1].plot(path_coords[:, 0], path_coords[:, 1], marker=".", markersize=2, label=name)
        axes[0, 1].set(xlabel=axis_labels[0], ylabel=axis_labels[1], title="policy path on the J landscape")
        axes[0, 1].legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(path).with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=110)
    temporary.replace(path)
    plt.close(figure)
