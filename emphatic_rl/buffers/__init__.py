"""Replay and trajectory storage: one ``TrajectoryBuffer`` shared by every agent."""

from emphatic_rl.buffers.packing import pack_bool, packed_num_bytes, unpack_bool
from emphatic_rl.buffers.trajectory import FieldSpec, TrajectoryBuffer, TransitionBatch

__all__ = ["FieldSpec", "TrajectoryBuffer", "TransitionBatch", "pack_bool", "packed_num_bytes", "unpack_bool"]
