"""Compiled CPU kernels (numba) of the classic-control envs and Puddle World.

On the CPU a batched torch step of these small envs is a few dozen torch operations whose fixed cost (a few
microseconds each) dominates at any batch size. Here one compiled call steps every copy: it checks the actions,
advances the physics, decides termination and truncation, writes the observations, rewards and flags into the
output arrays and lists the copies whose episode ended. The envs then draw the start states of exactly those
copies from their ``torch.Generator`` (the same draws as the torch backend on the CPU) and one more call writes
them in (:func:`restart_rows`). Start states therefore follow the same random stream on both backends.

Two layers:

- scalar physics, ``@njit(inline="always")`` functions of plain floats (``cartpole_dynamics``,
  ``cartpole_terminal``, ``mountain_car_dynamics``, ``acrobot_dynamics``, ``acrobot_observation``,
  ``pendulum_dynamics``, ``pendulum_observation``, ``puddle_world_dynamics``), written in Gymnasium's order of
  operations (float64), Puddle World's in the torch env's float32 order; the one definition of each task's
  equations, used by the batched kernels below, by the single-env fast path (:mod:`emphatic_rl.envs.scalar_classic`,
  which calls them from Python: numba compiles a Python-callable version of an inlined function too) and by any
  other compiled loop (evaluation rollouts, planning);
- batched kernels over ``N`` copies (``*_step``, ``*_observe``) that the envs call.

Calling convention of every ``*_step`` kernel: the actions arrive as the address of the caller's contiguous
``int64[N]`` (``float32[N, 1]`` torques for Pendulum) tensor data (:func:`pointer_to`: no numpy object per call); the
outputs are row ``slot`` of blocks of output arrays allocated for several steps at once (``obs_block[slot]`` is this
step's ``obs``; see ``CompiledBackendMixin`` in :mod:`emphatic_rl.envs.base`). The kernel returns ``-1 - n`` when copy
``n`` has an action outside the action set (or a non-finite torque where checked), before anything is changed; else
the number ``count`` of copies whose episode ended, listed in ``ended[:count]`` in increasing order.

Sine and cosine of one angle come from one libm ``sincos`` call (:func:`sincos`), which gives the same bits as ``sin``
and ``cos`` (the same glibc code) at about 60% of the price of the two calls.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils

from emphatic_rl.envs.classic import Acrobot, CartPole, MountainCar, Pendulum
from emphatic_rl.envs.minatar.kernels.common import KERNEL_OPTIONS
from emphatic_rl.envs.puddle_world import (
    GOAL,
    NOISE_STD,
    PUDDLE_PENALTY,
    PUDDLE_RADIUS,
    PUDDLE_SEGMENTS,
    STEP_SIZE,
)
from emphatic_rl.intrinsics import intrinsic

# Module-level constants are frozen into the compiled code.
CP_GRAVITY = CartPole.GRAVITY
CP_MASSPOLE = CartPole.MASSPOLE
CP_TOTAL_MASS = CartPole.TOTAL_MASS
CP_LENGTH = CartPole.LENGTH
CP_POLEMASS_LENGTH = CartPole.POLEMASS_LENGTH
CP_FORCE_MAG = CartPole.FORCE_MAG
CP_TAU = CartPole.TAU
CP_THETA_THRESHOLD = CartPole.THETA_THRESHOLD_RADIANS
CP_X_THRESHOLD = CartPole.X_THRESHOLD

MC_MIN_POSITION = MountainCar.MIN_POSITION
MC_MAX_POSITION = MountainCar.MAX_POSITION
MC_MAX_SPEED = MountainCar.MAX_SPEED
MC_GOAL_POSITION = MountainCar.GOAL_POSITION
MC_FORCE = MountainCar.FORCE
MC_GRAVITY = MountainCar.GRAVITY

AB_DT = Acrobot.DT
AB_L1 = Acrobot.LINK_LENGTH_1
AB_M1 = Acrobot.LINK_MASS_1
AB_M2 = Acrobot.LINK_MASS_2
AB_LC1 = Acrobot.LINK_COM_POS_1
AB_LC2 = Acrobot.LINK_COM_POS_2
AB_I = Acrobot.LINK_MOI
AB_G = Acrobot.GRAVITY
AB_MAX_VEL_1 = Acrobot.MAX_VEL_1
AB_MAX_VEL_2 = Acrobot.MAX_VEL_2

PD_MAX_SPEED = Pendulum.MAX_SPEED
PD_MAX_TORQUE = Pendulum.MAX_TORQUE
PD_DT = Pendulum.DT
PD_MASS = Pendulum.MASS
PD_LENGTH = Pendulum.LENGTH

PW_STEP = STEP_SIZE
PW_RADIUS = PUDDLE_RADIUS
PW_PENALTY = PUDDLE_PENALTY
PW_GOAL = GOAL
PW_NOISE_STD = NOISE_STD
# Puddle segments (start x, start y, end x, end y), as the float32 numbers the torch env computes with.
PW_SEGMENTS = np.array([[*start, *end] for start, end in PUDDLE_SEGMENTS], dtype=np.float32)
PW_START_LOW = (0.3, 0.7)  # x ~ U[0.3, 0.4), y ~ U[0.7, 0.8)
PW_START_WIDTH = 0.1


# ============================================================================================ shared pieces
@intrinsic
def sincos(typingctx, x):
    """``(sin(x), cos(x))`` of a float64: LLVM's ``sin`` and ``cos`` intrinsics side by side, which its code
    generator turns into one libm ``sincos`` call where the C library has one (glibc: the same bits as ``sin`` and
    ``cos`` separately; elsewhere the two calls)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType()])
        sine = builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.sin.f64"), [args[0]])
        cosine = builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.cos.f64"), [args[0]])
        return context.make_tuple(builder, signature.return_type, (sine, cosine))

    return types.UniTuple(types.float64, 2)(types.float64), codegen


@intrinsic
def pointer_to(typingctx, address, element):
    """The integer ``address`` as a pointer to values of ``element``'s type (index it like a 1-d array): the
    kernels read the caller's action tensor through ``tensor.data_ptr()``, cheaper per call than a numpy view."""
    pointer_type = types.CPointer(element)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, element), codegen


@njit(inline="always", **KERNEL_OPTIONS)
def end_of_step(n, terminal, elapsed, max_steps, terminated, truncated, ended, count):
    """Count copy ``n``'s step, apply the time limit (``max_steps <= 0``: none), write the flags; append ``n`` to
    ``ended`` if its episode ended (its step counter restarts at 0). Returns the new count of ended copies.

    Without branches (the flags of random episodes are unpredictable): ``ended[count]`` is always written (``count <=
    n``, so in bounds) and kept only when the count moves on."""
    steps = elapsed[n] + 1
    cut = (max_steps > 0) & (steps >= max_steps) & (not terminal)
    done = terminal | cut
    terminated[n] = terminal
    truncated[n] = cut
    elapsed[n] = 0 if done else steps
    ended[count] = n
    return count + done


@njit(inline="always", **KERNEL_OPTIONS)
def end_of_steps(num_envs, elapsed, max_steps, terminated, truncated, ended):
    """:func:`end_of_step` of every copy whose ``terminated`` flag is already written: the step counters and the
    time limit in one loop without a dependency between copies (which the compiler vectorises), the list of ended
    copies in a second. Returns the count of ended copies."""
    limit = max_steps if max_steps > 0 else np.int64(1) << 62
    for n in range(num_envs):
        steps = elapsed[n] + 1
        terminal = terminated[n]
        cut = (steps >= limit) & (not terminal)
        truncated[n] = cut
        elapsed[n] = 0 if terminal | cut else steps
    count = 0
    for n in range(num_envs):
        ended[count] = n
        count += terminated[n] | truncated[n]
    return count


@njit(**KERNEL_OPTIONS)
def first_bad_action_at(action_address, num_envs, num_actions):
    """``-1 - n`` for the first copy ``n`` whose action (of the ``int64[num_envs]`` at ``action_address``) is outside
    ``0 .. num_actions - 1``, else 0."""
    return first_bad_discrete(pointer_to(action_address, np.int64(0)), num_envs, num_actions)


@njit(inline="always", **KERNEL_OPTIONS)
def first_bad_discrete(actions, num_envs, num_actions):
    """:func:`first_bad_action_at` on the pointer ``actions``: a branch-free scan first (cheap), the search only
    when some action is bad."""
    bad = False
    for n in range(num_envs):
        bad |= (actions[n] < 0) | (actions[n] >= num_actions)
    if bad:
        for n in range(num_envs):
            if actions[n] < 0 or actions[n] >= num_actions:
                return -1 - n
    return 0


@njit(**KERNEL_OPTIONS)
def restart_rows(ended, count, fresh, all_drawn, state):
    """Put the ended copies in their start states: ``state[ended[k]] = fresh[k]`` (``all_drawn=False``: one drawn
    row per ended copy) or ``fresh[ended[k]]`` (``all_drawn=True``: a row drawn for every copy)."""
    for k in range(count):
        n = ended[k]
        row = n if all_drawn else k
        for j in range(state.shape[1]):
            state[n, j] = fresh[row, j]


@njit(**KERNEL_OPTIONS)
def observe_state_rows(rows, count, state, obs_block, slot):
    """``obs[n] = float32(state[n])`` for ``n`` in ``rows[:count]``, ``obs = obs_block[slot]`` (CartPole, Mountain
    Car)."""
    obs = obs_block[slot]
    for k in range(count):
        n = rows[k]
        for j in range(state.shape[1]):
            obs[n, j] = state[n, j]


# ============================================================================================ CartPole
@njit(inline="always", **KERNEL_OPTIONS)
def cartpole_euler(x, x_dot, theta, theta_dot, push_right, sintheta, costheta):
    """One Euler step of CartPole-v1 given ``sin(theta)`` and ``cos(theta)`` (Gymnasium's expressions, in its
    order). Returns the new ``(x, x_dot, theta, theta_dot)``."""
    force = CP_FORCE_MAG if push_right else -CP_FORCE_MAG
    temp = (force + CP_POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / CP_TOTAL_MASS
    thetaacc = (CP_GRAVITY * sintheta - costheta * temp) / (
        CP_LENGTH * (4.0 / 3.0 - CP_MASSPOLE * (costheta * costheta) / CP_TOTAL_MASS)
    )
    xacc = temp - CP_POLEMASS_LENGTH * thetaacc * costheta / CP_TOTAL_MASS
    return x + CP_TAU * x_dot, x_dot + CP_TAU * xacc, theta + CP_TAU * theta_dot, theta_dot + CP_TAU * thetaacc


_FOUR_FLOATS = types.UniTuple(types.float64, 4)


def _pack4(builder, four):
    """The four float64 of a numba 4-tuple as one LLVM ``<4 x double>`` vector (for the vector intrinsics below)."""
    value = ir.Constant(ir.VectorType(ir.DoubleType(), 4), ir.Undefined)
    for i in range(4):
        value = builder.insert_element(value, builder.extract_value(four, i), ir.Constant(ir.IntType(32), i))
    return value


@intrinsic
def cartpole_euler4(typingctx, x, x_dot, theta, theta_dot, force, sintheta, costheta):
    """:func:`cartpole_euler` of four copies at once, each argument a 4-tuple of float64 (``force``: +-10 N per copy):
    the same operations in the same order, as LLVM vector operations on ``<4 x double>`` (IEEE arithmetic is exact
    per lane, so each copy gets the bits of the scalar function; four divisions per copy become four vector
    divisions per four copies). Returns ``(x, x_dot, theta, theta_dot)``, each a 4-tuple."""
    if any(value != _FOUR_FLOATS for value in (x, x_dot, theta, theta_dot, force, sintheta, costheta)):
        return None
    result = types.UniTuple(_FOUR_FLOATS, 4)

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(ir.DoubleType(), 4)
        lanes = [ir.Constant(ir.IntType(32), i) for i in range(4)]

        def splat(number):
            return ir.Constant(vector, [ir.Constant(ir.DoubleType(), float(number))] * 4)

        def unpack(value):
            return context.make_tuple(builder, _FOUR_FLOATS, [builder.extract_element(value, lane) for lane in lanes])

        X, XD, TH, THD, F, S, C = (_pack4(builder, arg) for arg in args)
        mul, div, add, sub = builder.fmul, builder.fdiv, builder.fadd, builder.fsub
        mass, pml = splat(CP_TOTAL_MASS), splat(CP_POLEMASS_LENGTH)
        # temp = (force + pml * (theta_dot * theta_dot) * sintheta) / total_mass
        temp = div(add(F, mul(mul(pml, mul(THD, THD)), S)), mass)
        # thetaacc = (g * sintheta - costheta * temp) / (length * (4/3 - masspole * (costheta * costheta) / mass))
        share = div(mul(splat(CP_MASSPOLE), mul(C, C)), mass)
        thetaacc = div(
            sub(mul(splat(CP_GRAVITY), S), mul(C, temp)), mul(splat(CP_LENGTH), sub(splat(4.0 / 3.0), share))
        )
        # xacc = temp - pml * thetaacc * costheta / mass
        xacc = sub(temp, div(mul(mul(pml, thetaacc), C), mass))
        tau = splat(CP_TAU)
        new = (add(X, mul(tau, XD)), add(XD, mul(tau, xacc)), add(TH, mul(tau, THD)), add(THD, mul(tau, thetaacc)))
        return context.make_tuple(builder, signature.return_type, [unpack(value) for value in new])

    return result(x, x_dot, theta, theta_dot, force, sintheta, costheta), codegen


@intrinsic
def cartpole_terminal4(typingctx, x, theta):
    """:func:`cartpole_terminal` of four copies at once (``x`` and ``theta`` 4-tuples of float64): the four
    comparisons as vector comparisons, no branch. Returns a 4-tuple of booleans."""
    if x != _FOUR_FLOATS or theta != _FOUR_FLOATS:
        return None
    result = types.UniTuple(types.boolean, 4)

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(ir.DoubleType(), 4)
        lanes = [ir.Constant(ir.IntType(32), i) for i in range(4)]

        def outside(value, bound):
            low = builder.fcmp_ordered("<", value, ir.Constant(vector, [ir.Constant(ir.DoubleType(), -bound)] * 4))
            high = builder.fcmp_ordered(">", value, ir.Constant(vector, [ir.Constant(ir.DoubleType(), bound)] * 4))
            return builder.or_(low, high)

        X, TH = _pack4(builder, args[0]), _pack4(builder, args[1])
        ends = builder.or_(outside(X, CP_X_THRESHOLD), outside(TH, CP_THETA_THRESHOLD))
        return context.make_tuple(builder, result, [builder.extract_element(ends, lane) for lane in lanes])

    return result(x, theta), codegen


@njit(inline="always", **KERNEL_OPTIONS)
def cartpole_dynamics(x, x_dot, theta, theta_dot, push_right):
    """One Euler step of CartPole-v1 (Gymnasium's expressions, in its order). Returns the new
    ``(x, x_dot, theta, theta_dot)``."""
    sintheta, costheta = sincos(theta)
    return cartpole_euler(x, x_dot, theta, theta_dot, push_right, sintheta, costheta)


@njit(inline="always", **KERNEL_OPTIONS)
def cartpole_terminal(x, theta):
    """``|x| > 2.4`` or ``|theta| > 12 degrees``."""
    return x < -CP_X_THRESHOLD or x > CP_X_THRESHOLD or theta < -CP_THETA_THRESHOLD or theta > CP_THETA_THRESHOLD


@njit(inline="always", **KERNEL_OPTIONS)
def _force(action):
    """The force of a CartPole action, +10 N for 1 (push right), -10 N for 0: ``(2 a - 1) * 10`` (exact), without a
    branch (random actions make one mispredicted half the time)."""
    return np.float64(2 * action - 1) * CP_FORCE_MAG


@intrinsic
def store_float32x4(typingctx, array, row, four):
    """``array[row, 0:4] = four`` for a C-contiguous ``float32[M, >= 4]`` array and a 4-tuple of float64: the four
    conversions and the store as one vector conversion and one vector store (the same values as four element
    writes, each a float64 to float32 rounding)."""
    if not (
        isinstance(array, types.Array)
        and array.dtype == types.float32
        and array.ndim == 2
        and array.layout == "C"
        and four == _FOUR_FLOATS
    ):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        start = cgutils.get_item_pointer(
            context, builder, array_type, data, [args[1], context.get_constant(types.intp, 0)]
        )
        value = ir.Constant(ir.VectorType(ir.DoubleType(), 4), ir.Undefined)
        for i in range(4):
            value = builder.insert_element(value, builder.extract_value(args[2], i), ir.Constant(ir.IntType(32), i))
        narrow = ir.VectorType(ir.FloatType(), 4)
        builder.store(builder.fptrunc(value, narrow), builder.bitcast(start, narrow.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(array, row, four), codegen


@njit(inline="always", **KERNEL_OPTIONS)
def _cartpole_write(n, x, x_dot, theta, theta_dot, terminal, sutton_barto, state, obs, final_obs, reward, terminated):
    """Store copy ``n``'s new state, observations, termination flag and reward."""
    state[n, 0], state[n, 1], state[n, 2], state[n, 3] = x, x_dot, theta, theta_dot
    terminated[n] = terminal
    store_float32x4(obs, n, (x, x_dot, theta, theta_dot))
    store_float32x4(final_obs, n, (x, x_dot, theta, theta_dot))
    # Sutton & Barto: -1 on the terminal step, else +0 (0 - 1 or 0 - 0: never -0); otherwise +1; no branch on it
    reward[n] = np.float32(0.0) - np.float32(terminal) if sutton_barto else np.float32(1.0)


@njit(**KERNEL_OPTIONS)
def cartpole_step(
    action_address, state, elapsed, max_steps, sutton_barto, final_block, obs_block, reward_block, terminated_block,
    truncated_block, slot, ended, trig
):  # fmt: skip
    """Step every CartPole copy (see the module docstring for the arguments and the return value). ``trig``
    (``float64[N, 2]``) is scratch space: the sines and cosines are computed in a first pass of libm calls, the
    Euler steps in a second pass without calls (four copies at a time in vector operations,
    :func:`cartpole_euler4`, the last ``N % 4`` one by one), the step counters and the list of ended copies in a
    third (:func:`end_of_steps`)."""
    N = state.shape[0]
    actions = pointer_to(action_address, np.int64(0))
    bad = first_bad_discrete(actions, N, 2)
    if bad:
        return bad
    obs, final_obs, reward = obs_block[slot], final_block[slot], reward_block[slot]
    terminated, truncated = terminated_block[slot], truncated_block[slot]
    for n in range(N):
        trig[n, 0], trig[n, 1] = sincos(state[n, 2])
    grouped = N - N % 4
    for a in range(0, grouped, 4):
        b, c, d = a + 1, a + 2, a + 3
        x, x_dot, theta, theta_dot = cartpole_euler4(
            (state[a, 0], state[b, 0], state[c, 0], state[d, 0]),
            (state[a, 1], state[b, 1], state[c, 1], state[d, 1]),
            (state[a, 2], state[b, 2], state[c, 2], state[d, 2]),
            (state[a, 3], state[b, 3], state[c, 3], state[d, 3]),
            (_force(actions[a]), _force(actions[b]), _force(actions[c]), _force(actions[d])),
            (trig[a, 0], trig[b, 0], trig[c, 0], trig[d, 0]),
            (trig[a, 1], trig[b, 1], trig[c, 1], trig[d, 1]),
        )
        ends = cartpole_terminal4(x, theta)
        w, r, o, f, e = state, reward, obs, final_obs, terminated
        _cartpole_write(a, x[0], x_dot[0], theta[0], theta_dot[0], ends[0], sutton_barto, w, o, f, r, e)
        _cartpole_write(b, x[1], x_dot[1], theta[1], theta_dot[1], ends[1], sutton_barto, w, o, f, r, e)
        _cartpole_write(c, x[2], x_dot[2], theta[2], theta_dot[2], ends[2], sutton_barto, w, o, f, r, e)
        _cartpole_write(d, x[3], x_dot[3], theta[3], theta_dot[3], ends[3], sutton_barto, w, o, f, r, e)
    for n in range(grouped, N):
        x1, x_dot1, theta1, theta_dot1 = cartpole_euler(
            state[n, 0], state[n, 1], state[n, 2], state[n, 3], actions[n] == 1, trig[n, 0], trig[n, 1]
        )
        terminal = (x1 < -CP_X_THRESHOLD) | (x1 > CP_X_THRESHOLD) | (theta1 < -CP_THETA_THRESHOLD)
        terminal = terminal | (theta1 > CP_THETA_THRESHOLD)  # cartpole_terminal without branches
        _cartpole_write(
            n, x1, x_dot1, theta1, theta_dot1, terminal, sutton_barto, state, obs, final_obs, reward, terminated
        )
    return end_of_steps(N, elapsed, max_steps, terminated, truncated, ended)


# ============================================================================================ Mountain Car
@njit(inline="always", **KERNEL_OPTIONS)
def mountain_car_dynamics(position, velocity, action, goal_velocity):
    """One MountainCar-v0 step (Gymnasium's expressions, in its order). Returns ``(position, velocity,
    terminated)``."""
    velocity = velocity + (np.float64(action - 1) * MC_FORCE + math.cos(3 * position) * (-MC_GRAVITY))
    velocity = min(max(velocity, -MC_MAX_SPEED), MC_MAX_SPEED)
    position = min(max(position + velocity, MC_MIN_POSITION), MC_MAX_POSITION)
    if position == MC_MIN_POSITION and velocity < 0.0:
        velocity = 0.0
    return position, velocity, position >= MC_GOAL_POSITION and velocity >= goal_velocity


@njit(**KERNEL_OPTIONS)
def mountain_car_step(
    action_address, state, elapsed, max_steps, goal_velocity, final_block, obs_block, reward_block, terminated_block,
    truncated_block, slot, ended, scratch
):  # fmt: skip
    N = state.shape[0]
    actions = pointer_to(action_address, np.int64(0))
    bad = first_bad_discrete(actions, N, 3)
    if bad:
        return bad
    obs, final_obs, reward = obs_block[slot], final_block[slot], reward_block[slot]
    terminated, truncated = terminated_block[slot], truncated_block[slot]
    count = 0
    for n in range(N):
        position, velocity, terminal = mountain_car_dynamics(state[n, 0], state[n, 1], actions[n], goal_velocity)
        state[n, 0], state[n, 1] = position, velocity
        final_obs[n, 0] = obs[n, 0] = position
        final_obs[n, 1] = obs[n, 1] = velocity
        reward[n] = -1.0
        count = end_of_step(n, terminal, elapsed, max_steps, terminated, truncated, ended, count)
    return count


# ============================================================================================ Acrobot
@njit(inline="always", **KERNEL_OPTIONS)
def _acrobot_derivatives(theta1, theta2, dtheta1, dtheta2, torque, nips):
    """Gymnasium's ``AcrobotEnv._dsdt`` (same expression order)."""
    m1, m2, l1, lc1, lc2, i1, i2, g = AB_M1, AB_M2, AB_L1, AB_LC1, AB_LC2, AB_I, AB_I, AB_G
    pi = math.pi
    sin_theta2, cos_theta2 = sincos(theta2)
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + i1 + i2
    d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + i2
    phi2 = m2 * lc2 * g * math.cos(theta1 + theta2 - pi / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2**2 * sin_theta2
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
        + (m1 * lc1 + m2 * l1) * g * math.cos(theta1 - pi / 2)
        + phi2
    )
    if nips:
        ddtheta2 = (torque + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + i2 - d2**2 / d1)
    else:
        ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin_theta2 - phi2) / (
            m2 * lc2**2 + i2 - d2**2 / d1
        )
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return dtheta1, dtheta2, ddtheta1, ddtheta2


@njit(inline="always", **KERNEL_OPTIONS)
def _wrap(x):
    """Gymnasium's ``wrap(x, -pi, pi)``."""
    diff = math.pi - (-math.pi)
    while x > math.pi:
        x = x - diff
    while x < -math.pi:
        x = x + diff
    return x


@njit(inline="always", **KERNEL_OPTIONS)
def acrobot_dynamics(theta1, theta2, dtheta1, dtheta2, action, nips):
    """One Acrobot-v1 step: Gymnasium's RK4 over ``[0, dt]``, angle wrapping and velocity bounds. Returns the new
    ``(theta1, theta2, dtheta1, dtheta2, terminated)``."""
    torque = np.float64(action - 1)
    dt = AB_DT - 0.0
    dt2 = dt / 2.0
    a1, a2, a3, a4 = _acrobot_derivatives(theta1, theta2, dtheta1, dtheta2, torque, nips)
    b1, b2, b3, b4 = _acrobot_derivatives(
        theta1 + dt2 * a1, theta2 + dt2 * a2, dtheta1 + dt2 * a3, dtheta2 + dt2 * a4, torque, nips
    )
    c1, c2, c3, c4 = _acrobot_derivatives(
        theta1 + dt2 * b1, theta2 + dt2 * b2, dtheta1 + dt2 * b3, dtheta2 + dt2 * b4, torque, nips
    )
    d1, d2, d3, d4 = _acrobot_derivatives(
        theta1 + dt * c1, theta2 + dt * c2, dtheta1 + dt * c3, dtheta2 + dt * c4, torque, nips
    )
    theta1 = _wrap(theta1 + dt / 6.0 * (a1 + 2 * b1 + 2 * c1 + d1))
    theta2 = _wrap(theta2 + dt / 6.0 * (a2 + 2 * b2 + 2 * c2 + d2))
    dtheta1 = min(max(dtheta1 + dt / 6.0 * (a3 + 2 * b3 + 2 * c3 + d3), -AB_MAX_VEL_1), AB_MAX_VEL_1)
    dtheta2 = min(max(dtheta2 + dt / 6.0 * (a4 + 2 * b4 + 2 * c4 + d4), -AB_MAX_VEL_2), AB_MAX_VEL_2)
    terminal = -math.cos(theta1) - math.cos(theta2 + theta1) > 1.0
    return theta1, theta2, dtheta1, dtheta2, terminal


@njit(inline="always", **KERNEL_OPTIONS)
def acrobot_observation(theta1, theta2, dtheta1, dtheta2):
    """Acrobot's observation ``(cos t1, sin t1, cos t2, sin t2, dt1, dt2)`` of one state (float64)."""
    sin1, cos1 = sincos(theta1)
    sin2, cos2 = sincos(theta2)
    return cos1, sin1, cos2, sin2, dtheta1, dtheta2


@njit(inline="always", **KERNEL_OPTIONS)
def _acrobot_observe_row(n, state, obs):
    obs[n, 0], obs[n, 1], obs[n, 2], obs[n, 3], obs[n, 4], obs[n, 5] = acrobot_observation(
        state[n, 0], state[n, 1], state[n, 2], state[n, 3]
    )


@njit(**KERNEL_OPTIONS)
def acrobot_observe(rows, count, state, obs_block, slot):
    """Acrobot's observation ``[cos t1, sin t1, cos t2, sin t2, dt1, dt2]`` of the copies ``rows[:count]``, into
    ``obs_block[slot]``."""
    obs = obs_block[slot]
    for k in range(count):
        _acrobot_observe_row(rows[k], state, obs)


@njit(**KERNEL_OPTIONS)
def acrobot_step(
    action_address, state, elapsed, max_steps, nips, final_block, obs_block, reward_block, terminated_block,
    truncated_block, slot, ended, scratch
):  # fmt: skip
    N = state.shape[0]
    actions = pointer_to(action_address, np.int64(0))
    bad = first_bad_discrete(actions, N, 3)
    if bad:
        return bad
    obs, final_obs, reward = obs_block[slot], final_block[slot], reward_block[slot]
    terminated, truncated = terminated_block[slot], truncated_block[slot]
    count = 0
    for n in range(N):
        t1, t2, dt1, dt2, terminal = acrobot_dynamics(
            state[n, 0], state[n, 1], state[n, 2], state[n, 3], actions[n], nips
        )
        state[n, 0], state[n, 1], state[n, 2], state[n, 3] = t1, t2, dt1, dt2
        _acrobot_observe_row(n, state, final_obs)
        for j in range(6):
            obs[n, j] = final_obs[n, j]
        reward[n] = 0.0 if terminal else -1.0
        count = end_of_step(n, terminal, elapsed, max_steps, terminated, truncated, ended, count)
    return count


# ============================================================================================ Pendulum
@njit(inline="always", **KERNEL_OPTIONS)
def pendulum_dynamics(th, thdot, u, g):
    """One Pendulum-v1 step for the float32 torque ``u`` (clipped to ``[-2, 2]``; Gymnasium's expressions, float32
    where numpy computes them in float32). Returns ``(th, thdot, cost)``; the reward is ``-cost``."""
    u = min(max(u, np.float32(-PD_MAX_TORQUE)), np.float32(PD_MAX_TORQUE))
    angle = ((th + math.pi) % (2 * math.pi)) - math.pi
    costs = angle**2 + 0.1 * thdot**2 + np.float64(np.float32(0.001) * (u * u))
    newthdot = (
        thdot
        + (3 * g / (2 * PD_LENGTH) * math.sin(th) + np.float64(np.float32(3.0 / (PD_MASS * PD_LENGTH**2)) * u)) * PD_DT
    )
    newthdot = min(max(newthdot, -PD_MAX_SPEED), PD_MAX_SPEED)
    return th + newthdot * PD_DT, newthdot, costs


@njit(inline="always", **KERNEL_OPTIONS)
def pendulum_observation(th, thdot):
    """Pendulum's observation ``(cos theta, sin theta, theta_dot)`` of one state (float64)."""
    sine, cosine = sincos(th)
    return cosine, sine, thdot


@njit(inline="always", **KERNEL_OPTIONS)
def _pendulum_observe_row(n, state, obs):
    obs[n, 0], obs[n, 1], obs[n, 2] = pendulum_observation(state[n, 0], state[n, 1])


@njit(**KERNEL_OPTIONS)
def pendulum_observe(rows, count, state, obs_block, slot):
    """Pendulum's observation ``[cos theta, sin theta, theta_dot]`` of the copies ``rows[:count]``, into
    ``obs_block[slot]``."""
    obs = obs_block[slot]
    for k in range(count):
        _pendulum_observe_row(rows[k], state, obs)


@njit(**KERNEL_OPTIONS)
def pendulum_step(
    action_address, check, state, elapsed, max_steps, g, final_block, obs_block, reward_block, terminated_block,
    truncated_block, slot, ended, scratch
):  # fmt: skip
    N = state.shape[0]
    actions = pointer_to(action_address, np.float32(0))  # float32[N, 1]
    if check:
        for n in range(N):
            if not math.isfinite(actions[n]):
                return -1 - n
    obs, final_obs, reward = obs_block[slot], final_block[slot], reward_block[slot]
    terminated, truncated = terminated_block[slot], truncated_block[slot]
    count = 0
    for n in range(N):
        th, thdot, cost = pendulum_dynamics(state[n, 0], state[n, 1], actions[n], g)
        state[n, 0], state[n, 1] = th, thdot
        _pendulum_observe_row(n, state, final_obs)
        for j in range(3):
            obs[n, j] = final_obs[n, j]
        reward[n] = -cost
        count = end_of_step(n, False, elapsed, max_steps, terminated, truncated, ended, count)
    return count


# ============================================================================================ Puddle World
@njit(inline="always", **KERNEL_OPTIONS)
def _segment_distance(px, py, sx, sy, ex, ey):
    """``distance_to_segment`` in float32, as torch computes it on the CPU (its norm of ``(dx, dy)`` is
    ``sqrt(fma(dy, dy, dx * dx))``; the fused multiply-add is emulated in float64)."""
    dirx = ex - sx
    diry = ey - sy
    along = ((px - sx) * dirx + (py - sy) * diry) / (dirx * dirx + diry * diry)
    along = min(max(along, np.float32(0.0)), np.float32(1.0))
    dx = px - (sx + along * dirx)
    dy = py - (sy + along * diry)
    square = np.float32(np.float64(dy) * np.float64(dy) + np.float64(dx * dx))
    return np.float32(math.sqrt(square))


@njit(inline="always", **KERNEL_OPTIONS)
def puddle_world_dynamics(x, y, action, noise_x, noise_y, segments):
    """One Puddle World step from the float32 position ``(x, y)`` with the float32 noise ``noise_x``, ``noise_y``
    (already scaled: ``0.01 * z`` for standard normal ``z``), in the torch env's float32 order of operations.
    ``segments``: the puddles' ``float32[P, 4]`` (start x, y, end x, y). Returns ``(x, y, reward, terminated)``."""
    zero, one, step = np.float32(0.0), np.float32(1.0), np.float32(PW_STEP)
    move_x, move_y = zero, zero
    if action == 0:
        move_y = step
    elif action == 1:
        move_y = -step
    elif action == 2:
        move_x = step
    else:
        move_x = -step
    x = min(max(x + move_x + noise_x, zero), one)
    y = min(max(y + move_y + noise_y, zero), one)
    goal = np.float32(PW_GOAL)
    if x >= goal and y >= goal:
        return x, y, np.float32(-1.0), True
    radius = np.float32(PW_RADIUS)
    penalty = zero
    for i in range(segments.shape[0]):
        distance = _segment_distance(x, y, segments[i, 0], segments[i, 1], segments[i, 2], segments[i, 3])
        penalty += max(radius - distance, zero)
    return x, y, np.float32(-1.0) - np.float32(PW_PENALTY) * penalty, False


@njit(**KERNEL_OPTIONS)
def puddle_world_step(
    action_address, position, noise, fresh, elapsed, max_steps, segments, final_block, obs_block, reward_block,
    terminated_block, truncated_block, slot, ended
):  # fmt: skip
    """Step every copy with the standard normal ``noise`` (``float32[N, 2]``) and restart the ended ones from the
    uniform ``fresh`` (``float32[N, 2]``, one row per copy, as the torch env draws them). Actions are checked by
    :func:`first_bad_action_at` before the draws."""
    actions = pointer_to(action_address, np.int64(0))
    obs, final_obs, reward = obs_block[slot], final_block[slot], reward_block[slot]
    terminated, truncated = terminated_block[slot], truncated_block[slot]
    count = 0
    low_x, low_y, width = np.float32(PW_START_LOW[0]), np.float32(PW_START_LOW[1]), np.float32(PW_START_WIDTH)
    std = np.float32(PW_NOISE_STD)
    for n in range(position.shape[0]):
        x, y, r, terminal = puddle_world_dynamics(
            position[n, 0], position[n, 1], actions[n], std * noise[n, 0], std * noise[n, 1], segments
        )
        final_obs[n, 0], final_obs[n, 1] = x, y
        reward[n] = r
        count = end_of_step(n, terminal, elapsed, max_steps, terminated, truncated, ended, count)
        if terminal or truncated[n]:
            x = width * fresh[n, 0] + low_x
            y = width * fresh[n, 1] + low_y
        position[n, 0], position[n, 1] = x, y
        obs[n, 0], obs[n, 1] = x, y
    return count
