"""Bit packing of boolean observations: 8 cells per ``uint8`` byte, batched, on any device.

MinAtar observations are ``bool[10, 10, C]``. A ``torch.bool`` tensor spends one byte per cell; packing stores
``ceil(cells / 8)`` bytes per observation instead. Cell ``8 * b + j`` of the flattened (row-major) observation
is bit ``j`` (least significant first) of byte ``b``; the unused high bits of the last byte are zero.
"""

from __future__ import annotations

import math
import sys

import torch


def packed_num_bytes(obs_shape: tuple[int, ...]) -> int:
    """Bytes one packed observation of ``obs_shape`` takes: ``ceil(prod(obs_shape) / 8)``."""
    return math.ceil(math.prod(obs_shape) / 8)


# Eight 0/1 bytes read as one little-endian int64 hold b_j at bit 8j; multiplying by sum_j 2^(56 - 7j) moves b_j
# to bit 56 + j and no two partial products share a bit (so nothing carries): the packed byte is bits 56..63.
_GATHER_BITS = 0x0102040810204080


def pack_bool(bits: torch.Tensor, obs_shape: tuple[int, ...]) -> torch.Tensor:
    """Pack ``bits: bool[*batch, *obs_shape]`` into ``uint8[*batch, ceil(cells / 8)]``."""
    cells = math.prod(obs_shape)
    batch_shape = bits.shape[: bits.dim() - len(obs_shape)]
    num_bytes = packed_num_bytes(obs_shape)
    flat = bits.reshape(-1, cells)
    padding = num_bytes * 8 - cells
    if padding:
        flat = torch.nn.functional.pad(flat.to(torch.uint8), (0, padding))
    flat = flat.contiguous()
    if sys.byteorder == "little":
        words = flat.view(torch.uint8).view(torch.int64)  # [M, num_bytes]: 8 cells per word
        packed = (((words * _GATHER_BITS) >> 56) & 0xFF).to(torch.uint8)  # wraps mod 2^64; bits 56..63 are exact
    else:  # portable path: shift each cell to its bit and add (the bits are disjoint, so sum == OR)
        shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
        packed = (flat.to(torch.uint8).view(-1, num_bytes, 8) << shifts).sum(dim=-1, dtype=torch.uint8)
    return packed.reshape(*batch_shape, num_bytes)


_UNPACK_TABLES: dict[torch.device, torch.Tensor] = {}


def _unpack_table(device: torch.device) -> torch.Tensor:
    """``bool[256, 8]``: the bits of every byte value, least significant first (cached per device)."""
    table = _UNPACK_TABLES.get(device)
    if table is None:
        byte_values = torch.arange(256, dtype=torch.int64).unsqueeze(1)
        table = ((byte_values >> torch.arange(8)) & 1).to(torch.bool).to(device)
        _UNPACK_TABLES[device] = table
    return table


def unpack_bool(packed: torch.Tensor, obs_shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bool`: ``uint8[*batch, num_bytes]`` -> ``bool[*batch, *obs_shape]``.

    One table lookup per byte (``index_select`` into a ``[256, 8]`` table): a few tensor ops per call.
    """
    cells = math.prod(obs_shape)
    batch_shape = packed.shape[:-1]
    num_bytes = packed.shape[-1]
    bits = _unpack_table(packed.device).index_select(0, packed.reshape(-1).long())
    bits = bits.view(*batch_shape, num_bytes * 8)
    if num_bytes * 8 != cells:
        bits = bits[..., :cells]
    return bits.reshape(*batch_shape, *obs_shape)
