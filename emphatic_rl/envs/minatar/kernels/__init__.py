"""Compiled CPU kernels of the MinAtar games (numba), one module per game.

Each game module holds the reference's rules written per copy, in plain loops that numba compiles to machine
code: ``reset_kernel`` (new episodes where a mask is set), ``render_kernel`` (the observation) and
``step_kernel`` (sticky action, the game's step, time limit, observation, same-step autoreset, for every copy in
one call). :class:`~emphatic_rl.envs.minatar.common.MinAtarEnv` calls them when ``backend="numba"`` (the default
on CPU); the torch code of each game runs on every other device. Both are held to the reference by the same
parity tests.

Random numbers: a kernel never draws. The env hands it a pool ``float64[N, K]`` of uniform numbers in
``[0, 1)``; copy ``n`` uses ``pool[n, 0], pool[n, 1], ...`` in the order the reference draws, and records what
each was used for (see :mod:`.common`).
"""
