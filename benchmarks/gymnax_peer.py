"""The gymnax peer of the env benchmarks: ``jax.jit(jax.vmap(step))`` on JAX's CPU backend, single-threaded.

Import this module before anything imports ``jax``: it sets ``XLA_FLAGS`` so that XLA's CPU backend runs on one
thread (``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``), like the other peers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _SINGLE_THREAD).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def gymnax_available() -> bool:
    try:
        import gymnax  # noqa: F401
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def gymnax_versions() -> str:
    import importlib.metadata

    import jax

    return f"jax {jax.__version__}, gymnax {importlib.metadata.version('gymnax')}"


def gymnax_stepper(env_id: str, num_envs: int, seed: int = 0) -> Callable[[], None]:
    """One batch step of ``num_envs`` copies of gymnax's ``env_id`` with its default parameters per call.

    Inside one jitted, vmapped function: split each copy's key, sample a uniform random action from the env's
    action space, ``env.step`` (gymnax's default: the step and, where the episode ended, a reset, both computed
    for every copy and selected; it returns observation, reward, terminated, truncated and the final observation,
    as our step does). The call waits for the result (``block_until_ready``) so that the time is the
    step's; the function is compiled (and run once) here, before any timing.
    """
    import gymnax
    import jax

    env, params = gymnax.make(env_id)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_envs)
    _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)

    def one(key, state):
        key, action_key, step_key = jax.random.split(key, 3)
        action = env.action_space(params).sample(action_key)
        obs, state, reward, terminated, truncated, info = env.step(step_key, state, action, params)
        return key, state, obs, reward, terminated, truncated, info["final_observation"]

    step = jax.jit(jax.vmap(one))
    carry = [keys, state]

    def batch_step() -> None:
        key, state, *outputs = step(carry[0], carry[1])
        carry[0], carry[1] = key, state
        jax.block_until_ready(outputs)

    batch_step()  # compile
    batch_step()
    return batch_step
