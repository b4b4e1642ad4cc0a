"""``emphatic_rl.emphatic``: each equation against a hand computation (floats, torch float64, numba), and the
"single home" check that no other module of the package writes the emphatic equations again."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from emphatic_rl import emphatic
from emphatic_rl.emphatic import (
    actor_coefficient,
    critic_emphasis,
    emphatic_weighting,
    followon_trace,
    learned_emphasis_loss,
    learned_emphasis_start_target,
    learned_emphasis_target,
)

# ------------------------------------------------------------------------------------------------ hand computations
# Dyadic numbers, so every hand result below is exact in binary floating point and compared with ``==``.
CASES = [
    # (function, positional args, keyword args, hand result)
    (followon_trace, (1.0, 0.75, 2.0, 1.5), {}, 1.0 + 0.75 * 2.0 * 1.5),  # 3.25
    (followon_trace, (1.0, 0.75, 2.0, 1.5), {"normalize": True}, 0.25 * 1.0 + 0.75 * 2.0 * 1.5),  # 2.5
    (followon_trace, (2.0, 0.0, 8.0, 5.0), {}, 2.0),  # gamma_t = 0 cuts the trace at an episode start
    (emphatic_weighting, (2.0, 5.0, 0.25), {}, 0.75 * 2.0 + 0.25 * 5.0),  # 2.75
    (emphatic_weighting, (2.0, 5.0, 0.0), {}, 2.0),  # eta = 0: OffPAC, M = i
    (emphatic_weighting, (2.0, 5.0, 1.0), {}, 5.0),  # eta = 1: ACE, M = F
    (critic_emphasis, (2.0, 5.0, 0.25), {}, 0.25 * 2.0 + 0.75 * 5.0),  # 4.25
    (critic_emphasis, (2.0, 5.0, 1.0), {}, 2.0),  # lambda = 1: M^c = i
    (learned_emphasis_target, (1.0, 0.5, 3.0, 2.0), {}, 1.0 + 0.5 * 3.0 * 2.0),  # 4.0
    (learned_emphasis_target, (1.0, 0.5, 3.0, 2.0), {"normalize": True}, 0.5 * 1.0 + 0.5 * 3.0 * 2.0),  # 3.5
    (learned_emphasis_target, (1.0, 0.0, 3.0, 2.0), {}, 1.0),  # gamma_{t+1} = 0: no bootstrap
    (learned_emphasis_start_target, (2.0, 0.0), {}, 2.0),
    (learned_emphasis_start_target, (2.0, 0.0), {"normalize": True}, 2.0),  # gamma_0 = 0: i_0 either way
    (learned_emphasis_start_target, (2.0, 0.25), {}, 2.0),
    (learned_emphasis_start_target, (2.0, 0.25), {"normalize": True}, 1.5),
    (learned_emphasis_loss, (3.0, 1.0), {}, 0.5 * 2.0 * 2.0),  # 2.0
    (learned_emphasis_loss, (1.0, 3.0), {}, 2.0),
    (actor_coefficient, (2.0, 1.5, -0.5), {}, -1.5),
]
IDS = [f"{fn.__name__}-{i}" for i, (fn, *_rest) in enumerate(CASES)]


@pytest.mark.parametrize(("function", "args", "kwargs", "expected"), CASES, ids=IDS)
def test_floats_match_the_hand_computation(function, args, kwargs, expected):
    assert function(*args, **kwargs) == expected


@pytest.mark.parametrize(("function", "args", "kwargs", "expected"), CASES, ids=IDS)
def test_torch_float64_matches_the_hand_computation(function, args, kwargs, expected):
    tensors = [torch.tensor([value, value], dtype=torch.float64) for value in args]
    result = function(*tensors, **kwargs)
    assert result.dtype == torch.float64
    assert result.tolist() == [expected, expected]


@pytest.mark.parametrize(("function", "args", "kwargs", "expected"), CASES, ids=IDS)
def test_mixed_python_scalars_and_tensors(function, args, kwargs, expected):
    """The deep agents pass Python floats (eta, gamma, uniform interest) next to tensors."""
    mixed = [torch.tensor([value], dtype=torch.float64) if k % 2 else value for k, value in enumerate(args)]
    result = function(*mixed, **kwargs)  # a float where the tensor argument is not used (start target, i_0)
    assert torch.as_tensor(result).reshape(-1).tolist() == [expected]


def test_autograd_passes_through():
    prediction = torch.tensor([3.0, -1.0], dtype=torch.float64, requires_grad=True)
    learned_emphasis_loss(prediction, torch.tensor([1.0, 1.0], dtype=torch.float64)).sum().backward()
    assert prediction.grad.tolist() == [2.0, -2.0]  # d/dp 0.5 (p - t)^2 = p - t


numba = pytest.importorskip("numba")


@pytest.mark.parametrize(("function", "args", "kwargs", "expected"), CASES, ids=IDS)
def test_numba_compiles_each_function_unchanged(function, args, kwargs, expected):
    compiled = numba.njit(function)
    assert compiled(*args, **kwargs) == expected  # scalars
    arrays = [np.array([value, value]) for value in args]
    np.testing.assert_array_equal(compiled(*arrays, **kwargs), np.array([expected, expected]))


def test_numba_follow_on_recursion_matches_python_and_the_hand_values():
    """``F_t`` along a stream with an episode restart at t = 3 (``gamma_3 = 0``), ``F_{-1} = 0``, ``rho_{-1} = 1``."""
    gamma = np.array([0.0, 0.5, 0.5, 0.0, 0.5])
    rho = np.array([2.0, 1.0, 4.0, 1.0, 1.0])
    interest = np.ones(5)
    step = numba.njit(followon_trace)

    @numba.njit
    def run(interest, gamma, rho):
        out = np.empty_like(interest)
        previous_followon, previous_rho = 0.0, 1.0
        for t in range(interest.shape[0]):
            previous_followon = step(interest[t], gamma[t], previous_rho, previous_followon)
            previous_rho = rho[t]
            out[t] = previous_followon
        return out

    python = []
    previous_followon, previous_rho = 0.0, 1.0
    for t in range(5):
        previous_followon = followon_trace(float(interest[t]), float(gamma[t]), previous_rho, previous_followon)
        previous_rho = float(rho[t])
        python.append(previous_followon)
    hand = [1.0, 1.0 + 0.5 * 2.0 * 1.0, 1.0 + 0.5 * 1.0 * 2.0, 1.0, 1.0 + 0.5 * 1.0 * 1.0]
    assert python == hand
    assert run(interest, gamma, rho).tolist() == hand


# ------------------------------------------------------------------------------------------------ one home
PACKAGE = Path(emphatic.__file__).resolve().parent
HOME = "emphatic_rl/emphatic.py"

# modules allowed to write the equations themselves while they are being switched to emphatic_rl.emphatic
PENDING: set[str] = set()  # modules still to be switched to emphatic_rl.emphatic (none left)

ETA = re.compile(r"(^|_)eta$", re.IGNORECASE)  # eta, self.eta, o.eta, m_eta; not theta, beta, zeta
LAMBDA = re.compile(r"(^|_)(lambda_?|lam|lmbda|trace_decay)$", re.IGNORECASE)
GAMMA = re.compile(r"gamma", re.IGNORECASE)
RHO = re.compile(r"(^|_)rho($|_)", re.IGNORECASE)


def _label(node: ast.AST) -> str | None:
    """The name an operand is read from: ``eta``, ``o.eta`` -> ``eta``, ``rho.clamp(...)`` -> ``rho``,
    ``v[s]`` -> ``v``; ``None`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _label(node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):  # rho.clamp(...), x.detach()
        return _label(node.func.value)
    return None


def _factors(node: ast.AST) -> list[ast.AST]:
    """The factors of a product chain ``a * b * (c * d)``; ``[node]`` for a non-product."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _factors(node.left) + _factors(node.right)
    return [node]


def _one_minus(node: ast.AST, pattern: re.Pattern) -> bool:
    """``(1 - X)`` / ``(1.0 - X)`` with ``X`` named by ``pattern``."""
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Sub)
        and isinstance(node.left, ast.Constant)
        and node.left.value in (1, 1.0)
        and isinstance(node.right, ast.Name | ast.Attribute)
        and bool(pattern.search(_label(node.right) or ""))
    )


def _named(node: ast.AST, pattern: re.Pattern) -> bool:
    return isinstance(node, ast.Name | ast.Attribute) and bool(pattern.search(_label(node) or ""))


def _convex_combination(node: ast.BinOp, pattern: re.Pattern) -> bool:
    """``(1 - X) * A + X * B`` (either order, any product chains) with ``X`` named by ``pattern``."""
    left, right = _factors(node.left), _factors(node.right)
    for one, other in ((left, right), (right, left)):
        if any(_one_minus(f, pattern) for f in one) and any(_named(f, pattern) for f in other):
            return True
    return False


def _followon_recursion(node: ast.BinOp) -> bool:
    """``X + gamma * rho * F`` (a product of a gamma, a rho and at least one more factor added to something)."""
    for side in (node.left, node.right):
        factors = _factors(side)
        labels = [_label(f) or "" for f in factors]
        if len(factors) >= 3 and any(GAMMA.search(x) for x in labels) and any(RHO.search(x) for x in labels):
            return True
    return False


WEIGHTING = re.compile(r"weighting|(^|_)m(_t)?$", re.IGNORECASE)  # M_t by its names: weighting, m, m_t
DELTA = re.compile(r"delta|td_error", re.IGNORECASE)


def _actor_coefficient(node: ast.BinOp) -> bool:
    """``rho * M * delta`` (one product chain with a rho, an emphatic weighting and a TD error among its factors)."""
    labels = [_label(f) or "" for f in _factors(node)]
    return all(any(pattern.search(x) for x in labels) for pattern in (RHO, WEIGHTING, DELTA))


def emphatic_copies(source: str) -> list[tuple[int, str]]:
    """``(line, shape)`` of every emphatic equation written in ``source`` (docstrings and comments are no code)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and _actor_coefficient(node):
            found.append((node.lineno, "rho M delta: call emphatic.actor_coefficient"))
            continue
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
            continue
        if _convex_combination(node, ETA):
            found.append((node.lineno, "M_t = (1 - eta) i + eta F: call emphatic.emphatic_weighting"))
        elif _convex_combination(node, LAMBDA):
            found.append((node.lineno, "M^c = lambda i + (1 - lambda) F: call emphatic.critic_emphasis"))
        elif _followon_recursion(node):
            found.append((node.lineno, "i + gamma rho F: call emphatic.followon_trace / learned_emphasis_target"))
    return found


def _modules() -> list[tuple[str, Path]]:
    return [(f"emphatic_rl/{path.relative_to(PACKAGE).as_posix()}", path) for path in sorted(PACKAGE.rglob("*.py"))]


def test_the_emphatic_equations_have_one_home():
    offences = []
    for name, path in _modules():
        if name == HOME or name in PENDING:
            continue
        offences += [f"{name}:{line}: {shape}" for line, shape in emphatic_copies(path.read_text())]
    assert not offences, "emphatic equations written outside emphatic_rl/emphatic.py:\n" + "\n".join(offences)


def test_pending_modules_exist():
    """Keep ``PENDING`` honest: its entries are real modules (a renamed one would silently escape the check)."""
    names = {name for name, _ in _modules()}
    assert PENDING <= names, sorted(PENDING - names)


def test_the_home_module_itself_is_found_by_the_check():
    """The detector sees the definitions in emphatic.py (else the check above would pass vacuously)."""
    shapes = {shape.split(":")[0] for _, shape in emphatic_copies((PACKAGE / "emphatic.py").read_text())}
    assert shapes == {
        "M_t = (1 - eta) i + eta F",
        "M^c = lambda i + (1 - lambda) F",
        "i + gamma rho F",
        "rho M delta",
    }


@pytest.mark.parametrize(
    "code",
    [
        "m = (1 - eta) * i + eta * f",
        "m = (1.0 - o.eta) * interest + o.eta * followon",
        "m = (1 - self.eta) * interest_t + self.eta * followon",
        "w = eta * m + (1.0 - eta) * self.interest_weights",
        "w = (1.0 - eta) * d_i + eta * self.d_mu * fhat",
        "w = (1 - o.eta) + o.eta * emphasis",  # uniform interest, no i factor
        "c = self.trace_decay * t.interest + (1 - self.trace_decay) * t.followon",
        "c = lam * i + (1.0 - lam) * f",
        "f = i_t + gamma_t * rho_prev * f",
        "f = interest + gamma * self.previous_rho * self.previous_followon",
        "y = (1 - gamma) + gamma * rho.clamp(max=c) * carried",
        "c = alpha * rho_t * weighting * td_error",
        "c = (rho * m_t * delta)[:, None]",
    ],
)
def test_the_detector_flags_each_shape(code):
    assert emphatic_copies(code), code


@pytest.mark.parametrize(
    "code",
    [
        '"""M_t = (1 - eta) * i + eta * F"""',  # a docstring is no code
        "p = (1 - tau) * target + tau * online",  # Polyak averaging
        "x = (1 - theta) * a + theta * b",  # theta ends in "eta" but is not eta
        "a = aliens * keep + wave * (1 - keep)",
        "prob = epsilon / n + (1.0 - epsilon) * greedy",
        "target = reward + gamma * v",
        "m = emphatic_weighting(i, f, eta)",
        "c = alpha * actor_coefficient(rho, weighting, delta)",
        "loss = 0.5 * rho_clipped * delta * delta",  # a weighted TD loss: no emphatic weighting
    ],
)
def test_the_detector_leaves_other_arithmetic_alone(code):
    assert not emphatic_copies(code), code
