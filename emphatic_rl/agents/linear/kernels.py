"""Compiled (numba) population step of the linear actor-critic: the CPU backend of ``ActorCritic``.

One call advances all ``P`` learners by one transition of each of the ``R`` behaviour streams, fused: interest and
discounts, ``rho_t``, the emphasis ``F_t`` (none / follow-on trace / learned ``fhat``), ``M_t``, ``delta_t``, the
critic (TD, TDC/GTD, TDRC, ETD, each with lambda traces) and the sampled actor update. Scalars are computed in float64
whatever the state's dtype (float32 state is rounded when stored). It works in place on the
numpy views of the agent's torch state tensors (shared memory), so checkpoints, freezing and the torch evaluation
code see the same numbers.

The emphatic equations (``F_t``, ``M_t``, ``M^c_t``, the learned-emphasis targets, the actor coefficient) are the
functions of ``emphatic_rl.emphatic``, compiled here unchanged; the critic update lines are this backend's copy of
``emphatic_rl.agents.linear.critics`` (the torch backend), and the tests hold both to the same reference traces.

Cost. Features are binary (active indices, ``K`` per state). A learner whose critic has ``lambda = 0`` touches only
the ``K`` active entries of each vector: its eligibility trace is ``z_t = c_t x_t`` (``c_t = rho_t`` or
``rho_t M^c_t``), kept as the scalar ``c_t`` and the stream's indices and written out densely only when the state
is read (``materialize_sparse_traces``). TDRC's decay of ``h`` by ``(1 - alpha_h beta)`` at every step would touch
all ``d`` entries; those learners keep ``h = h_scale * h_raw`` and decay the scalar instead (``h_raw`` is rescaled
when ``h_scale`` gets small, and written back as ``h`` whenever the state is read: ``materialize_correction``).
A learner with ``lambda > 0`` keeps a dense trace and pays ``O(d)`` per step.
"""

from __future__ import annotations

import numba
import numpy as np

from emphatic_rl.emphatic import (
    actor_coefficient,
    critic_emphasis,
    emphatic_weighting,
    followon_trace,
    learned_emphasis_start_target,
    learned_emphasis_target,
)

__all__ = [
    "CRITIC_CODES",
    "EMPHASIS_CODES",
    "INTEREST_CODES",
    "population_step",
    "population_step_packed",
    "materialize_sparse_traces",
    "materialize_correction",
]

#: critic name -> kernel code (GQ goes with the all-actions actor; the oracle and dense features run on torch only)
CRITIC_CODES = {"td": 0, "tdc": 1, "gtd": 1, "tdrc": 2, "etd": 3, "gq": 4}
#: emphasis name -> kernel code (the ideal trace runs on the torch backend only)
EMPHASIS_CODES = {"none": 0, "followon": 1, "learned": 2}
INTEREST_CODES = {"uniform": 0, "episodic": 1}

_inline = numba.njit(inline="always", cache=True)
_followon_trace = _inline(followon_trace)
_emphatic_weighting = _inline(emphatic_weighting)
_critic_emphasis = _inline(critic_emphasis)
_learned_emphasis_target = _inline(learned_emphasis_target)
_learned_emphasis_start_target = _inline(learned_emphasis_start_target)
_actor_coefficient = _inline(actor_coefficient)

#: ``h_raw`` is rescaled into ``h`` when ``h_scale`` falls below this (float32 and float64 alike)
_SCALE_FLOOR = 1e-12


@numba.njit(cache=True, nogil=True, inline="always")
def _sparse_sum(vector, indices):
    total = 0.0
    for k in range(indices.shape[0]):
        total += vector[indices[k]]
    return total


@numba.njit(cache=True, nogil=True, inline="always")
def _shifted_logits(theta, p, indices, out, exps):
    """``out[a] = theta_{p,a} . x - max_b theta_{p,b} . x`` for active ``indices`` and ``exps[a] = exp(out[a])``;
    returns ``sum_a exps[a]`` (the steps of torch's ``log_softmax`` / ``softmax``)."""
    num_actions = out.shape[0]
    for a in range(num_actions):
        total = 0.0
        for k in range(indices.shape[0]):
            total += theta[p, a, indices[k]]
        out[a] = total
    largest = out[0]
    for a in range(1, num_actions):
        largest = max(largest, out[a])
    normalizer = 0.0
    for a in range(num_actions):
        out[a] -= largest
        exps[a] = np.exp(out[a])
        normalizer += exps[a]
    return normalizer


@numba.njit(cache=True, nogil=True)
def population_step(
    # per stream [R]
    actor_index,  # int64[R, K]: x(S_t), the actor's active features
    actor_next_index,  # int64[R, K]: x(S_{t+1})
    critic_index,  # int64[R, Kc]: the critic's (and fhat's) features of S_t
    critic_next_index,  # int64[R, Kc]
    action,  # int64[R]
    reward,  # float[R]
    terminated,  # bool[R]
    truncated,  # bool[R]
    episode_start,  # bool[R]: S_t is the first state of an episode (gamma_t = 0)
    stream_start,  # bool[R]: S_t is the first state of the stream
    behaviour_log_prob,  # float[R]: log mu(A_t|S_t)
    # per learner [P]
    stream_of,
    frozen,
    alpha_actor,
    alpha_critic,
    alpha_h,
    alpha_emphasis,
    trace_decay,
    eta,
    # state (in place)
    theta,  # [P, A, d]
    weights,  # [P, dc]: critic w
    trace,  # [P, dc]: dense trace (learners with lambda > 0)
    trace_coef,  # [P]: z = trace_coef * x(S_t) for learners with lambda = 0
    correction,  # [P, dc]: h_raw (TDC / TDRC)
    correction_scale,  # [P]: h = correction_scale * h_raw
    fhat,  # [P, dc]: learned emphasis weights
    action_weights,  # [P, A, dc]: GQ's q weights
    action_trace,  # [P, A, dc]: GQ's trace
    action_correction,  # [P, A, dc]: GQ's h
    previous_followon,  # [P]
    previous_rho,  # [P]
    # constants
    gamma,
    beta,
    critic_code,
    emphasis_code,
    interest_code,
    normalize,
    timeout_as_terminal,
    fit_stream_start,
    # outputs [P]
    out_td_error,
    out_followon,
    out_weighting,
    out_rho,
):
    num_learners, num_actions, _ = theta.shape
    num_active = actor_index.shape[1]
    num_critic_active = critic_index.shape[1]
    zero = 0.0
    one = 1.0
    logits = np.empty(num_actions, dtype=np.float64)
    gradient = np.empty(num_actions, dtype=np.float64)
    next_probs = np.empty(num_actions, dtype=np.float64)
    probs = np.empty(num_actions, dtype=np.float64)
    q_values = np.empty(num_actions, dtype=np.float64)
    behaviour_prob = np.empty(behaviour_log_prob.shape[0], dtype=np.float64)
    for r in range(behaviour_log_prob.shape[0]):
        behaviour_prob[r] = np.exp(behaviour_log_prob[r])  # mu(A_t|S_t), once per stream
    for p in range(num_learners):
        if frozen[p]:
            out_td_error[p] = np.nan
            out_followon[p] = np.nan
            out_weighting[p] = np.nan
            out_rho[p] = np.nan
            continue
        r = stream_of[p]
        x_t = actor_index[r]
        c_t = critic_index[r]
        c_tp1 = critic_next_index[r]
        a_t = action[r]
        ends_flow = terminated[r] or (timeout_as_terminal and truncated[r])
        gamma_t = zero if episode_start[r] else gamma
        gamma_tp1 = zero if ends_flow else gamma
        if interest_code == 0:
            interest_t = one
            next_interest = one
        else:
            interest_t = one if gamma_t == zero else zero
            next_interest = one if gamma_tp1 == zero else zero

        # rho_t with theta before this step's updates
        normalizer = _shifted_logits(theta, p, x_t, logits, probs)
        for a in range(num_actions):
            probs[a] /= normalizer  # pi(a|S_t), as torch's softmax
        rho = probs[a_t] / behaviour_prob[r]  # pi / mu (one transcendental fewer per learner than exp(log pi - log mu))

        # F_t
        if emphasis_code == 0:
            followon = interest_t
        elif emphasis_code == 1:
            followon = _followon_trace(interest_t, gamma_t, previous_rho[p], previous_followon[p], normalize)
            previous_followon[p] = followon
            previous_rho[p] = rho
        else:
            step = alpha_emphasis[p]
            if episode_start[r] and (fit_stream_start or not stream_start[r]):
                start_error = _learned_emphasis_start_target(interest_t, gamma_t, normalize) - _sparse_sum(
                    fhat[p], c_t
                )
                for k in range(num_critic_active):
                    fhat[p, c_t[k]] += step * start_error
            followon = _sparse_sum(fhat[p], c_t)
            if not ends_flow:
                target = _learned_emphasis_target(next_interest, gamma_tp1, rho, followon, normalize)
                error = target - _sparse_sum(fhat[p], c_tp1)
                for k in range(num_critic_active):
                    fhat[p, c_tp1[k]] += step * error
        weighting = _emphatic_weighting(interest_t, followon, eta[p])

        lam = trace_decay[p]
        alpha = alpha_critic[p]
        if critic_code == 4:
            # GQ(lambda) with state-action features x(s, a) = x(s) in block a
            normalizer_next = _shifted_logits(theta, p, actor_next_index[r], q_values, next_probs)
            next_value = zero
            for a in range(num_actions):
                next_probs[a] /= normalizer_next  # pi(a|S_{t+1}), as torch's softmax
                next_value += next_probs[a] * _sparse_sum(action_weights[p, a], c_tp1)
            td_error = reward[r] + gamma_tp1 * next_value - _sparse_sum(action_weights[p, a_t], c_t)
            decay = rho * gamma_t * lam
            trace_dot_h = zero
            for a in range(num_actions):
                for j in range(action_trace.shape[2]):
                    action_trace[p, a, j] *= decay
            for k in range(num_critic_active):
                action_trace[p, a_t, c_t[k]] += rho
            for a in range(num_actions):
                for j in range(action_trace.shape[2]):
                    trace_dot_h += action_trace[p, a, j] * action_correction[p, a, j]
            h_taken = _sparse_sum(action_correction[p, a_t], c_t)
            step = alpha * td_error
            step_h = alpha_h[p] * td_error
            for a in range(num_actions):
                for j in range(action_trace.shape[2]):
                    action_weights[p, a, j] += step * action_trace[p, a, j]
            coef = -alpha * gamma_tp1 * (one - lam) * trace_dot_h
            for a in range(num_actions):
                for k in range(num_critic_active):
                    action_weights[p, a, c_tp1[k]] += coef * next_probs[a]
            for a in range(num_actions):
                for j in range(action_trace.shape[2]):
                    action_correction[p, a, j] += step_h * action_trace[p, a, j]
            for k in range(num_critic_active):
                action_correction[p, a_t, c_t[k]] += -alpha_h[p] * h_taken
        else:
            # delta_t with the critic weights before the critic update
            td_error = reward[r] + gamma_tp1 * _sparse_sum(weights[p], c_tp1) - _sparse_sum(weights[p], c_t)

            # the critic
            feature_scale = _critic_emphasis(interest_t, followon, lam) if critic_code == 3 else one
            if lam == zero:
                coef = rho * feature_scale  # z_t = coef * x(S_t)
                trace_coef[p] = coef
                step = alpha * td_error
                for k in range(num_critic_active):
                    weights[p, c_t[k]] += step * coef
                if critic_code == 1 or critic_code == 2:
                    scale = correction_scale[p]
                    h_dot_x = scale * _sparse_sum(correction[p], c_t)
                    trace_dot_h = coef * h_dot_x
                    next_coef = -alpha * gamma_tp1 * trace_dot_h
                    for k in range(num_critic_active):
                        weights[p, c_tp1[k]] += next_coef
                    step_h = alpha_h[p]
                    if critic_code == 2:
                        scale = scale * (one - step_h * beta)
                        if scale < _SCALE_FLOOR:
                            for j in range(correction.shape[1]):
                                correction[p, j] *= scale
                            scale = one
                        correction_scale[p] = scale
                    added = (step_h * td_error * coef - step_h * h_dot_x) / scale
                    for k in range(num_critic_active):
                        correction[p, c_t[k]] += added
            else:
                decay = rho * gamma_t * lam
                for j in range(trace.shape[1]):
                    trace[p, j] *= decay
                added = rho * feature_scale
                for k in range(num_critic_active):
                    trace[p, c_t[k]] += added
                step = alpha * td_error
                if critic_code == 0 or critic_code == 3:
                    for j in range(weights.shape[1]):
                        weights[p, j] += step * trace[p, j]
                else:
                    scale = correction_scale[p]
                    if scale != one:  # a learner that had lambda = 0 before a checkpoint: keep h plain from now on
                        for j in range(correction.shape[1]):
                            correction[p, j] *= scale
                        correction_scale[p] = one
                    trace_dot_h = zero
                    for j in range(trace.shape[1]):
                        trace_dot_h += trace[p, j] * correction[p, j]
                    h_dot_x = _sparse_sum(correction[p], c_t)
                    for j in range(weights.shape[1]):
                        weights[p, j] += step * trace[p, j]
                    next_coef = -alpha * gamma_tp1 * (one - lam) * trace_dot_h
                    for k in range(num_critic_active):
                        weights[p, c_tp1[k]] += next_coef
                    step_h = alpha_h[p]
                    keep = one - step_h * beta if critic_code == 2 else one
                    step_delta = step_h * td_error
                    for j in range(correction.shape[1]):
                        correction[p, j] = correction[p, j] * keep + step_delta * trace[p, j]
                    for k in range(num_critic_active):
                        correction[p, c_t[k]] += -step_h * h_dot_x

        if critic_code == 4:
            # all actions: theta += alpha_actor M_t sum_a pi(a|S_t) q(S_t, a) grad ln pi(a|S_t), q after the update
            baseline = zero
            for a in range(num_actions):
                q_values[a] = _sparse_sum(action_weights[p, a], c_t)
                baseline += probs[a] * q_values[a]
            coef_all = alpha_actor[p] * weighting
            for a in range(num_actions):
                gradient[a] = coef_all * probs[a] * (q_values[a] - baseline)
        else:
            # sampled: theta += alpha_actor rho_t M_t delta_t grad ln pi(A_t|S_t)
            coef_actor = alpha_actor[p] * _actor_coefficient(rho, weighting, td_error)
            for a in range(num_actions):
                gradient[a] = coef_actor * ((one if a == a_t else zero) - probs[a])
        for a in range(num_actions):
            for k in range(num_active):
                theta[p, a, x_t[k]] += gradient[a]

        out_td_error[p] = td_error
        out_followon[p] = followon
        out_weighting[p] = weighting
        out_rho[p] = rho


@numba.njit(cache=True, nogil=True)
def population_step_packed(
    actor_index,
    actor_next_index,
    critic_index,
    critic_next_index,
    action,
    reward,
    stream_flags,  # bool[4, R]: terminated, truncated, episode_start, stream_start
    behaviour_log_prob,
    stream_of,
    frozen,
    hyperparameters,  # [6, P]: alpha_actor, alpha_critic, alpha_h, alpha_emphasis, trace_decay, eta
    theta,
    weights,
    trace,
    correction,
    fhat,
    action_block,  # [3, P, A, dc]: GQ's q weights, trace and h (empty for the state-value critics)
    scalars,  # [4, P]: trace_coef, correction_scale, previous_followon, previous_rho
    float_constants,  # [2]: gamma, beta
    int_constants,  # [6]: critic code, emphasis code, interest code, normalize, timeout_as_terminal, fit_stream_start
    out,  # [4, P]: td_error, followon, weighting, rho
):
    """``population_step`` with its per-learner vectors and constants packed (fewer arguments: the dispatch of a
    compiled call costs per argument, and at small ``P`` that is most of a step). Afterwards sets
    ``episode_start = terminated | truncated`` and ``stream_start = False`` for the next step."""
    population_step(
        actor_index,
        actor_next_index,
        critic_index,
        critic_next_index,
        action,
        reward,
        stream_flags[0],
        stream_flags[1],
        stream_flags[2],
        stream_flags[3],
        behaviour_log_prob,
        stream_of,
        frozen,
        hyperparameters[0],
        hyperparameters[1],
        hyperparameters[2],
        hyperparameters[3],
        hyperparameters[4],
        hyperparameters[5],
        theta,
        weights,
        trace,
        scalars[0],
        correction,
        scalars[1],
        fhat,
        action_block[0],
        action_block[1],
        action_block[2],
        scalars[2],
        scalars[3],
        float_constants[0],
        float_constants[1],
        int_constants[0],
        int_constants[1],
        int_constants[2],
        int_constants[3] != 0,
        int_constants[4] != 0,
        int_constants[5] != 0,
        out[0],
        out[1],
        out[2],
        out[3],
    )
    for r in range(stream_flags.shape[1]):
        stream_flags[2, r] = stream_flags[0, r] or stream_flags[1, r]
        stream_flags[3, r] = False


@numba.njit(cache=True, nogil=True)
def materialize_sparse_traces(trace, trace_coef, trace_decay, critic_index, stream_of, frozen):
    """Write ``z = trace_coef * x(S_t)`` densely for the learners with ``lambda = 0`` (``critic_index``: the
    critic's active features of the last step's ``S_t``, per stream)."""
    for p in range(trace.shape[0]):
        if trace_decay[p] != 0.0 or frozen[p]:
            continue
        for j in range(trace.shape[1]):
            trace[p, j] = 0.0
        indices = critic_index[stream_of[p]]
        for k in range(indices.shape[0]):
            trace[p, indices[k]] += trace_coef[p]


@numba.njit(cache=True, nogil=True)
def materialize_correction(correction, correction_scale):
    """``h = h_scale * h_raw`` written back into ``correction``; ``h_scale = 1``."""
    for p in range(correction.shape[0]):
        scale = correction_scale[p]
        if scale != 1.0:
            for j in range(correction.shape[1]):
                correction[p, j] *= scale
            correction_scale[p] = 1.0
