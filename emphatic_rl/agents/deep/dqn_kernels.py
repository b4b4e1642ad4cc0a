"""Compiled CPU kernels (numba) of DQN's acting and gradient step for a population of MLP Q-networks.

On the CPU at DQN's usual sizes (CartPole, a 4-128-128-2 MLP, batches of 128) a torch gradient step is about forty
tensor operations whose fixed cost (a few microseconds each, plus the Python around them) is as large as the
arithmetic. Here each is one compiled call on the agent's flat ``[P, D]`` parameters (the same memory as the torch
tensors, shared through numpy views, so the modules, checkpoints and the optimiser's state stay valid):

- :func:`act_epsilon_greedy`: every member's forward on its ``[E, obs]`` observations, the argmax, the
  epsilon-greedy choice from random numbers drawn by the caller (from the agent's ``torch.Generator``, the same
  draws as the torch path) and ``log mu(a|s)``;
- :func:`gradient_step`: per member, the target network's forward on ``next_obs`` (double Q: also the online
  network's), the TD targets, the online forward, the Huber loss, the written-out backward, the member's gradient
  norm clipping and Adam, with the matrix products through BLAS (``np.dot``).

Parameter layout of one member's row (the order of ``PopulationMLP.parameters()``): for each layer ``l`` with widths
``n_in -> n_out``, the weight ``[n_in, n_out]`` (row-major; ``y = x @ W + b``) then the bias ``[n_out]``. ``sizes``
is the ``int64`` vector of widths ``(obs_dim, *hidden, num_actions)``; ReLU after every layer but the last.

Adam follows ``torch.optim.Adam`` (no weight decay, no AMSGrad): with ``t`` the updated step count, ``m <- b1 m + (1 -
b1) g``, ``v <- b2 v + (1 - b2) g^2``, ``theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
The results equal the torch path's to float32 rounding (``tests/agents/test_dqn_kernels.py``), not bit for bit: the sums
run in another order.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
from numba import njit

#: cached compilation; reassociation and contraction (FMA) only, so that NaN and infinity propagate as in torch (a
#: diverged member is detected by its non-finite parameters); numpy's error model (a division by zero gives inf or
#: NaN, as in torch, instead of raising), which also lets the elementwise loops vectorise (Adam: 60 -> 10 us)
_OPTIONS: dict = {"cache": True, "fastmath": {"reassoc", "contract"}, "error_model": "numpy"}


def limit_blas_threads(num_threads: int) -> bool:
    """Give the OpenBLAS that SciPy ships (the BLAS behind numba's ``np.dot``) ``num_threads`` threads.

    OpenBLAS otherwise starts one thread per core for products as small as DQN's 128x128 ones, whose waiting threads
    cost more than they gain (on a shared 2-core machine the loop ran 10x slower in CPU time). Process-wide for that
    library (SciPy's own BLAS calls too); best effort: returns ``False`` where no such library is found (other BLAS
    builds, other platforms), leaving the BLAS's own setting (``OPENBLAS_NUM_THREADS``)."""
    import scipy.linalg.cython_blas  # noqa: F401 (loads SciPy's BLAS)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and "scipy" in line}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(library, name):
                getattr(library, name)(ctypes.c_int(int(num_threads)))
                done = True
                break
    return done


def workspace_size(sizes: np.ndarray, rows: int) -> int:
    """Floats of scratch memory :func:`mlp_forward` needs for ``rows`` inputs."""
    return rows * int(sizes[1:].sum())


def gradient_workspace_size(sizes: np.ndarray, batch_size: int) -> int:
    """Floats of scratch memory :func:`gradient_step` needs: two forwards, two gradient buffers, the targets."""
    widest = int(sizes[1:].max())
    return 2 * workspace_size(sizes, batch_size) + 2 * batch_size * widest + batch_size


@njit(**_OPTIONS)
def mlp_forward(params, sizes, x, work):
    """``x [B, n_in] -> [B, num_actions]`` through one member's MLP (``params``: its ``[D]`` row).

    Every layer's output (after its ReLU) is written to ``work`` in layer order; the returned output is a view of
    ``work`` (the backward reads the hidden outputs from there)."""
    rows = x.shape[0]
    layers = sizes.shape[0] - 1
    inputs = x
    p_at = 0
    w_at = 0
    for layer in range(layers):
        n_in = sizes[layer]
        n_out = sizes[layer + 1]
        weight = params[p_at : p_at + n_in * n_out].reshape((n_in, n_out))
        bias = params[p_at + n_in * n_out : p_at + n_in * n_out + n_out]
        out = work[w_at : w_at + rows * n_out].reshape((rows, n_out))
        np.dot(inputs, weight, out)
        if layer < layers - 1:
            for i in range(rows):
                for j in range(n_out):
                    value = out[i, j] + bias[j]
                    out[i, j] = 0.0 if value < 0.0 else value  # ReLU; NaN stays NaN, as in torch
        else:
            for i in range(rows):
                for j in range(n_out):
                    out[i, j] += bias[j]
        inputs = out
        p_at += n_in * n_out + n_out
        w_at += rows * n_out
    return inputs


@njit(**_OPTIONS)
def _argmax(row):
    """The first index of the largest value (NaN counts as the largest, as in ``torch.argmax``)."""
    best = 0
    for a in range(1, row.shape[0]):
        if row[a] > row[best] or (math.isnan(row[a]) and not math.isnan(row[best])):
            best = a
    return best


@njit(**_OPTIONS)
def act_epsilon_greedy(
    params, sizes, obs, epsilon, explore_draw, random_action, log_greedy, log_other, work, action, log_prob
):
    """Epsilon-greedy actions of every member.

    Args:
        params: ``float32[P, D]``, the online parameters.
        sizes: ``int64`` layer widths ``(obs_dim, *hidden, num_actions)``.
        obs: ``float32[P, E, obs_dim]``.
        epsilon: ``float32``; copy ``(p, e)`` explores where ``explore_draw[p, e] < epsilon``.
        explore_draw: ``float32[P, E]``, uniform in ``[0, 1)``.
        random_action: ``int64[P, E]``, the action of an exploring copy.
        log_greedy: ``log mu(a|s)`` of the greedy action.
        log_other: ``log mu(a|s)`` of any other action.
        work: scratch, at least ``workspace_size(sizes, E)`` floats.
        action: ``int64[P, E]``, written.
        log_prob: ``float32[P, E]``, written.
    """
    for p in range(obs.shape[0]):
        q = mlp_forward(params[p], sizes, obs[p], work)
        for e in range(obs.shape[1]):
            greedy = _argmax(q[e])
            chosen = random_action[p, e] if explore_draw[p, e] < epsilon else greedy
            action[p, e] = chosen
            log_prob[p, e] = log_greedy if chosen == greedy else log_other


@njit(**_OPTIONS)
def gradient_step(
    params,
    target_params,
    grad,
    exp_avg,
    exp_avg_sq,
    step,
    active,
    sizes,
    obs,
    action,
    reward,
    terminated,
    next_obs,
    gamma,
    double_q,
    max_grad_norm,
    lr,
    beta1,
    beta2,
    eps,
    work,
    loss,
    q_mean,
):
    """One DQN gradient step of every member, in place.

    Args:
        params: ``float32[P, D]``, the online parameters (updated).
        target_params: ``float32[P, D]``, the target network's parameters.
        grad: ``float32[P, D]``, written: the clipped gradient (zero for inactive members).
        exp_avg: ``float32[P, D]``, Adam's first moments (updated).
        exp_avg_sq: ``float32[P, D]``, Adam's second moments (updated).
        step: ``float32[1]``, Adam's step count (shared by the members), incremented.
        active: ``bool[P]``; an inactive (frozen) member's parameters and moments are left as they are.
        sizes: ``int64`` layer widths ``(obs_dim, *hidden, num_actions)``.
        obs: ``float32[P, B, obs_dim]``, member ``p``'s batch of ``S_t``.
        action: ``int64[P, B]``.
        reward: ``float32[P, B]``.
        terminated: ``bool[P, B]``.
        next_obs: ``float32[P, B, obs_dim]``, the true ``S_{t+1}``.
        gamma: the discount.
        double_q: the double-Q target.
        max_grad_norm: each member's gradient norm is clipped to this.
        lr: Adam's step size.
        beta1: Adam's first-moment decay.
        beta2: Adam's second-moment decay.
        eps: Adam's epsilon.
        work: scratch, at least ``gradient_workspace_size(sizes, B)`` floats.
        loss: ``float32[P]``, written: the mean Huber loss of the batch.
        q_mean: ``float32[P]``, written: the mean ``Q(s, a)`` of the batch.
    """
    num_members, batch = action.shape
    layers = sizes.shape[0] - 1
    num_actions = sizes[layers]
    widest = 0
    for layer in range(1, layers + 1):
        widest = max(widest, sizes[layer])
    forward_size = 0
    for layer in range(1, layers + 1):
        forward_size += batch * sizes[layer]
    online_work = work[:forward_size]
    target_work = work[forward_size : 2 * forward_size]
    grad_a = work[2 * forward_size : 2 * forward_size + batch * widest]
    grad_b = work[2 * forward_size + batch * widest : 2 * forward_size + 2 * batch * widest]
    targets = work[2 * forward_size + 2 * batch * widest : 2 * forward_size + 2 * batch * widest + batch]

    step[0] += 1.0
    t = np.float64(step[0])
    step_size = np.float32(lr / (1.0 - beta1**t))
    bias_correction2_sqrt = np.float32(math.sqrt(1.0 - beta2**t))
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    one_minus_b1 = np.float32(1.0 - beta1)
    one_minus_b2 = np.float32(1.0 - beta2)
    eps32 = np.float32(eps)
    gamma32 = np.float32(gamma)
    inv_batch = np.float32(1.0 / batch)

    for p in range(num_members):
        # TD targets r + gamma (1 - terminated) max_a Q_target(s', a)   (double Q: Q_target(s', argmax_a Q(s', a)))
        next_q = mlp_forward(target_params[p], sizes, next_obs[p], target_work)
        if double_q:
            online_next_q = mlp_forward(params[p], sizes, next_obs[p], online_work)
            for b in range(batch):
                targets[b] = next_q[b, _argmax(online_next_q[b])]
        else:
            for b in range(batch):
                best = next_q[b, 0]
                for a in range(1, num_actions):
                    if next_q[b, a] > best or math.isnan(next_q[b, a]):
                        best = next_q[b, a]
                targets[b] = best
        for b in range(batch):
            value = np.float32(0.0) if terminated[p, b] else targets[b]
            targets[b] = reward[p, b] + gamma32 * value

        # forward, Huber loss, d loss / d q (clamp(q - y, -1, 1) / B at the taken action)
        q = mlp_forward(params[p], sizes, obs[p], online_work)
        grad_q = grad_a[: batch * num_actions].reshape((batch, num_actions))
        grad_q[:] = 0.0
        loss_sum = 0.0
        q_sum = 0.0
        for b in range(batch):
            taken = q[b, action[p, b]]
            diff = taken - targets[b]
            size = abs(diff)
            loss_sum += 0.5 * diff * diff if size < 1.0 else size - 0.5
            q_sum += taken
            clamped = -1.0 if diff < -1.0 else (1.0 if diff > 1.0 else diff)  # NaN stays NaN, as torch.clamp
            grad_q[b, action[p, b]] = clamped * inv_batch
        loss[p] = loss_sum / batch
        q_mean[p] = q_sum / batch
        member_grad = grad[p]
        if not active[p]:
            member_grad[:] = 0.0
            continue

        # written-out backward, last layer first; hidden outputs of the forward are in online_work
        upstream = grad_q
        p_end = member_grad.shape[0]
        w_end = forward_size
        for layer in range(layers - 1, -1, -1):
            n_in = sizes[layer]
            n_out = sizes[layer + 1]
            w_end -= batch * n_out
            p_at = p_end - n_in * n_out - n_out
            if layer > 0:
                inputs = online_work[w_end - batch * n_in : w_end].reshape((batch, n_in))
            else:
                inputs = obs[p]
            np.dot(inputs.T, upstream, member_grad[p_at : p_at + n_in * n_out].reshape((n_in, n_out)))
            bias_grad = member_grad[p_at + n_in * n_out : p_end]
            bias_grad[:] = 0.0
            for b in range(batch):
                for j in range(n_out):
                    bias_grad[j] += upstream[b, j]
            if layer > 0:  # through the weights and the ReLU before them (its output is this layer's input)
                weight = params[p, p_at : p_at + n_in * n_out].reshape((n_in, n_out))
                scratch = grad_b if layer % 2 == (layers - 1) % 2 else grad_a
                down = scratch[: batch * n_in].reshape((batch, n_in))
                np.dot(upstream, weight.T, down)
                for b in range(batch):
                    for j in range(n_in):
                        if not inputs[b, j] > 0.0:  # torch's threshold_backward
                            down[b, j] = 0.0
                upstream = down
            p_end = p_at

        # the member's gradient norm clipped to max_grad_norm, then Adam
        squares = 0.0
        for i in range(member_grad.shape[0]):
            squares += np.float64(member_grad[i]) * member_grad[i]
        scale = max_grad_norm / (math.sqrt(squares) + 1e-6)
        scale = np.float32(1.0 if scale > 1.0 else scale)  # NaN stays NaN, as torch.clamp
        member_params = params[p]
        m = exp_avg[p]
        v = exp_avg_sq[p]
        for i in range(member_grad.shape[0]):
            g = member_grad[i] * scale
            member_grad[i] = g
            m[i] = b1 * m[i] + one_minus_b1 * g
            v[i] = b2 * v[i] + one_minus_b2 * g * g
            member_params[i] -= step_size * m[i] / (math.sqrt(v[i]) / bias_correction2_sqrt + eps32)
