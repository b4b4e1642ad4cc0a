"""Named random streams: every generator of a run is seeded from the run seed through one of these names.

A run has one seed. Each consumer of randomness (the agent's networks and sampling, the fixed behaviour policy,
evaluation rollouts, the excursions objective's start states, a model's own sampling...) draws from its own
``torch.Generator``, seeded by :func:`stream_seed` under its own name, so that adding randomness to one part never
shifts the numbers of another, and a resumed run restores each stream from its checkpoint.

The streams (``seed`` is the run seed, ``step`` the loop iteration at which an evaluation happens, ``index`` the
position of a population in a study, or the step a run resumes at):

================== ==================================== ===========================================================
name               seed                                 used by
================== ==================================== ===========================================================
``init``           ``seed``                             network initialisation; the training env's reset; tabular
                                                        Dyna's one generator (initialisation, then its sampling)
``agent``          ``seed + 1``                         an agent's own sampling (exploration, replay batches)
``behaviour``      ``seed + 2``                         the fixed behaviour policy of the training loop
``agent_eval``     ``seed + 3``                         an agent's sampled evaluation actions (deep ACE)
``model``          ``seed + 7919``                      a learned model's own sampling (Dyna); the learned vector
                                                        models' initialisation (Dyna with a neural Q)
``value_network``  ``seed + 104729``                    the Q-networks' initialisation of Dyna with a neural Q
``excursion_data`` ``seed + 7_777_777``                 the behaviour trajectories that give excursion start states
``evaluation``     ``(seed * 1_000_003 + step) % 2**63`` the evaluation env's reset at ``step``
``excursions``     ``evaluation + 12_345`` (mod 2**63)   the excursion rollouts' env at ``step``
``population``     ``seed + 1000 * index``              the run seed of a study's ``index``-th population (the Dyna
                                                        studies train one population per variant)
``rollout_length`` ``seed + 100 * index``               within a population seed: the ``index``-th rollout length
                                                        of a variant in the neural Dyna study's sweep
``model_group``    ``seed + 500 * index``               within a population seed: the ``index``-th model group
                                                        of the neural Dyna study (0: perfect and injected, 1: learned)
``resume``         ``seed + index``                     the training env's reset when a run resumes at step ``index``
                                                        in an env that cannot be restored from a checkpoint
================== ==================================== ===========================================================

These values are the library's history (every committed result was produced with them), kept so results stay
bit-identical; new code should ask for a stream by name rather than add an offset.
"""

from __future__ import annotations

import torch

#: Offsets of the per-run streams from the run seed.
STREAM_OFFSETS: dict[str, int] = {
    "init": 0,
    "agent": 1,
    "behaviour": 2,
    "agent_eval": 3,
    "model": 7919,
    "value_network": 104729,
    "excursion_data": 7_777_777,
}
#: Offsets of the per-evaluation streams from the evaluation seed ``(seed * 1_000_003 + step) % 2**63``.
EVALUATION_OFFSETS: dict[str, int] = {"evaluation": 0, "excursions": 12_345}
#: Per-index streams: ``seed + stride * index``.
INDEXED_STRIDES: dict[str, int] = {"population": 1000, "resume": 1, "rollout_length": 100, "model_group": 500}
_MODULUS = 2**63


def stream_seed(seed: int, name: str, step: int | None = None, index: int | None = None) -> int:
    """The seed of stream ``name`` of a run seeded with ``seed`` (``step``: the evaluation streams' step;
    ``index``: the per-index streams' index, e.g. ``stream_seed(seed, "population", index=2)``).

    Raises:
        ValueError: an unknown stream name, or a missing / superfluous ``step`` or ``index``.
    """
    if index is not None and name not in INDEXED_STRIDES:
        raise ValueError(f"stream {name!r} takes no index")
    if name in STREAM_OFFSETS:
        if step is not None:
            raise ValueError(f"stream {name!r} is per run; it takes no step")
        return seed + STREAM_OFFSETS[name]
    if name in EVALUATION_OFFSETS:
        if step is None:
            raise ValueError(f"stream {name!r} is per evaluation; give the step")
        return (seed * 1_000_003 + step + EVALUATION_OFFSETS[name]) % _MODULUS
    if name in INDEXED_STRIDES:
        if index is None or step is not None:
            raise ValueError(f"stream {name!r} is per index; give the index (and no step)")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"stream {name!r}: index must be an integer >= 0, got {index!r}")
        return seed + INDEXED_STRIDES[name] * index
    allowed = ", ".join([*STREAM_OFFSETS, *EVALUATION_OFFSETS, *INDEXED_STRIDES])
    raise ValueError(f"unknown random stream {name!r}; allowed: {allowed}")


def stream_generator(
    seed: int, name: str, device: torch.device | str = "cpu", step: int | None = None, index: int | None = None
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`stream_seed` ``(seed, name, step, index)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, name, step, index))
    return generator
