"""Feature maps for linear learners, and the linear-algebra helpers that work on either feature layout.

Two layouts
-----------
- **Binary (sparse)** features, e.g. tile coding or one-hot states: a feature map returns the *active indices*,
  ``int64[..., num_active]``; the feature vector is 1 at those indices and 0 elsewhere. Updates then touch only the
  active entries (``gather`` / ``scatter_add_``).
- **Dense** features: a feature map returns ``float32[..., num_features]``.

The helpers below (``linear_value``, ``add_scaled_``, ``action_values``, ``add_action_scaled_``) dispatch on the
dtype of the feature tensor: an integer tensor means active indices, a floating tensor means dense values. Every
helper works on a population: weights carry a leading axis ``P`` and so does the feature tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numba
import numpy as np
import torch

__all__ = [
    "Features",
    "TileCoder",
    "OneHotFeatures",
    "DenseFeatures",
    "indices_to_dense",
    "is_sparse",
    "linear_value",
    "add_scaled_",
    "action_values",
    "add_action_scaled_",
]


class Features(ABC):
    """A map from raw observations ``[..., *obs_shape]`` to features.

    Attributes:
        num_features: length ``d`` of the feature vector.
        binary: True when ``__call__`` returns active indices ``int64[..., num_active]`` of a binary feature
            vector; False when it returns dense values ``float32[..., num_features]``.
        num_active: number of active features per observation (binary maps), else ``None``.
    """

    num_features: int
    binary: bool
    num_active: int | None = None

    @abstractmethod
    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """Features of ``obs``: ``int64[..., num_active]`` (binary) or ``float32[..., num_features]`` (dense)."""

    def dense(self, obs: torch.Tensor) -> torch.Tensor:
        """Dense feature vectors ``float32[..., num_features]`` of ``obs`` (whatever the layout)."""
        features = self(obs)
        if self.binary:
            return indices_to_dense(features, self.num_features)
        return features


class TileCoder(Features):
    """Grid tile coding of a box, as in the ACE authors' code (docs/environments.md).

    For dimension ``d`` with range ``[low_d, high_d]`` and ``n_d = tiles_per_dim[d]``, each tiling has ``n_d + 1``
    tiles of width ``w_d = (high_d - low_d) / n_d`` (one extra tile, so that every offset tiling still covers the
    box). Tiling ``k`` (``k = 0 .. num_tilings - 1``) is shifted by
    ``offset_{k,d} = (((2d + 1) k / num_tilings) mod 1) * w_d``: the tile coordinate of ``x_d`` is
    ``floor((x_d - low_d + offset_{k,d}) / w_d)``, clipped to ``[0, n_d]``. Tiling ``k`` owns the feature indices
    ``[k * T, (k + 1) * T)`` with ``T = prod_d (n_d + 1)`` (coordinates raveled row-major, first dimension
    slowest). With ``bias=True`` the last feature (index ``num_tilings * T``) is always active.

    Mountain Car (``tiles_per_dim=(4, 4)``, 8 tilings, bias): 8 * 25 + 1 = 201 features, 9 active.
    Puddle World (``tiles_per_dim=(2, 2)``, 2 tilings, bias): 2 * 9 + 1 = 19 features, 3 active.

    Args:
        low: the box's lower bounds, one per dimension.
        high: the box's upper bounds, one per dimension (``high > low``).
        tiles_per_dim: ``n_d`` per dimension (integers >= 1).
        num_tilings: number of offset tilings (>= 1).
        bias: append an always-active bias feature.
        device: where the constants live.
    """

    binary = True
    num_active: int

    def __init__(
        self,
        low: Sequence[float],
        high: Sequence[float],
        tiles_per_dim: Sequence[int],
        num_tilings: int,
        bias: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        low_t = torch.as_tensor(low, dtype=torch.float64).flatten()
        high_t = torch.as_tensor(high, dtype=torch.float64).flatten()
        tiles = torch.as_tensor(tiles_per_dim).flatten()
        if not (low_t.numel() == high_t.numel() == tiles.numel() >= 1):
            raise ValueError(
                f"TileCoder: low, high and tiles_per_dim need one entry per dimension, got lengths "
                f"{low_t.numel()}, {high_t.numel()}, {tiles.numel()}"
            )
        if not torch.isfinite(low_t).all() or not torch.isfinite(high_t).all() or not (high_t > low_t).all():
            raise ValueError(f"TileCoder: need finite bounds with high > low, got low={low}, high={high}")
        if tiles.dtype.is_floating_point or (tiles < 1).any():
            raise ValueError(f"TileCoder: tiles_per_dim must be integers >= 1, got {tiles_per_dim}")
        if not isinstance(num_tilings, int) or num_tilings < 1:
            raise ValueError(f"TileCoder: num_tilings must be an integer >= 1, got {num_tilings!r}")
        self.device = torch.device(device)
        self.num_dims = int(low_t.numel())
        self.num_tilings = num_tilings
        self.bias = bool(bias)
        self.tiles_per_dim = tuple(int(n) for n in tiles)
        grid = tiles.long() + 1  # internal tiles per dimension
        self.tiles_per_tiling = int(grid.prod())
        self.num_features = num_tilings * self.tiles_per_tiling + int(self.bias)
        self.num_active = num_tilings + int(self.bias)
        width = (high_t - low_t) / tiles.double()
        dims = torch.arange(self.num_dims, dtype=torch.float64)
        tilings = torch.arange(num_tilings, dtype=torch.float64)
        # offsets[k, d] = ((2d + 1) k / num_tilings mod 1) * width_d
        offsets = (
            torch.remainder((2 * dims[None, :] + 1) * tilings[:, None] / num_tilings, 1.0) * width[None, :]
        )
        self.low = low_t.float().to(self.device)
        self.high = high_t.float().to(self.device)
        self.width = width.float().to(self.device)
        self.offsets = offsets.float().to(self.device)  # [num_tilings, num_dims]
        self.grid = grid.to(self.device)
        # row-major strides of the (n_0 + 1) x (n_1 + 1) x ... grid
        strides = torch.ones(self.num_dims, dtype=torch.int64)
        for d in range(self.num_dims - 2, -1, -1):
            strides[d] = strides[d + 1] * grid[d + 1]
        self.strides = strides.to(self.device)
        self.tiling_base = (torch.arange(num_tilings, dtype=torch.int64) * self.tiles_per_tiling).to(
            self.device
        )
        #: the kernel's constant arrays (low, offsets, width, grid, strides, tiling_base), made on the first CPU call
        self._constants: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def coordinates(self, obs: torch.Tensor) -> torch.Tensor:
        """Tile coordinates ``int64[..., num_tilings, num_dims]`` of ``obs: [..., num_dims]``."""
        if obs.shape[-1] != self.num_dims:
            raise ValueError(
                f"TileCoder: expected observations [..., {self.num_dims}], got {tuple(obs.shape)}"
            )
        shifted = (obs.to(self.low.dtype)[..., None, :] - self.low + self.offsets) / self.width
        coords = torch.floor(shifted).long()
        return torch.minimum(coords.clamp_min(0), self.grid - 1)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """Active indices ``int64[..., num_active]`` of ``obs: [..., num_dims]`` (bias index last).

        On CPU a compiled kernel computes them (the same float32 operations in the same order as the torch code
        below, which runs on other devices; the tests hold the two equal); it costs a few microseconds where the
        torch ops cost ~100 us per call, which matters at one call per step.
        """
        if obs.device.type == "cpu" and obs.shape[-1] == self.num_dims:
            flat = obs.detach().to(torch.float32).reshape(-1, self.num_dims).contiguous()
            indices = torch.empty(flat.shape[0], self.num_active, dtype=torch.int64)
            if self._constants is None:
                low, offsets, width, grid, strides = (
                    t.cpu().contiguous().numpy() for t in (self.low, self.offsets, self.width, self.grid, self.strides)
                )
                self._constants = (low, offsets, width, grid, strides, self.tiling_base.cpu().numpy())
            _tile_indices(flat.numpy(), *self._constants, self.num_features - 1 if self.bias else -1, indices.numpy())
            return indices.view(*obs.shape[:-1], self.num_active)
        return self._torch_indices(obs)

    def _torch_indices(self, obs: torch.Tensor) -> torch.Tensor:
        coords = self.coordinates(obs)
        indices = (coords * self.strides).sum(-1) + self.tiling_base
        if self.bias:
            bias = torch.full(
                (*indices.shape[:-1], 1), self.num_features - 1, dtype=torch.int64, device=obs.device
            )
            indices = torch.cat([indices, bias], dim=-1)
        return indices


@numba.njit(cache=True, nogil=True)
def _tile_indices(obs, low, offsets, width, grid, strides, tiling_base, bias_index, out):  # pragma: no cover
    """``TileCoder``'s active indices of ``obs: float32[N, D]`` into ``out: int64[N, K]`` (float32 arithmetic)."""
    num_tilings, num_dims = offsets.shape
    for n in range(obs.shape[0]):
        for k in range(num_tilings):
            index = tiling_base[k]
            for d in range(num_dims):
                shifted = (obs[n, d] - low[d] + offsets[k, d]) / width[d]
                value = np.floor(shifted)
                coordinate = 0  # below the box, NaN and +-inf: tile 0 (as torch's float -> int64 cast on CPU)
                if np.isfinite(value) and value >= 1.0:
                    coordinate = grid[d] - 1 if value >= grid[d] - 1 else int(value)
                index += coordinate * strides[d]
            out[n, k] = index
        if bias_index >= 0:
            out[n, num_tilings] = bias_index


class OneHotFeatures(Features):
    """One-hot (tabular) features of integer states ``0 .. num_states - 1``.

    Accepts states as ``int[...]`` or ``int[..., 1]`` and returns the active index ``int64[..., 1]``.
    States outside the range raise ``ValueError`` only when ``check`` is True (a device sync).
    """

    binary = True
    num_active = 1

    def __init__(self, num_states: int, check: bool = False) -> None:
        if not isinstance(num_states, int) or num_states < 1:
            raise ValueError(f"OneHotFeatures: num_states must be an integer >= 1, got {num_states!r}")
        self.num_features = num_states
        self.check = check

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.dtype.is_floating_point:
            if obs.shape[-1:] == (self.num_features,) and self.num_features > 1:
                return obs.argmax(-1, keepdim=True)  # already one-hot
            obs = obs.round()
        states = obs.long()
        if states.dim() == 0 or states.shape[-1] != 1:
            states = states.unsqueeze(-1)
        if self.check and bool(((states < 0) | (states >= self.num_features)).any()):
            raise ValueError(f"OneHotFeatures: states must lie in [0, {self.num_features})")
        return states


class DenseFeatures(Features):
    """Pass-through dense features ``float32[..., num_features]``, optionally divided by their L2 norm.

    With ``normalize=True`` a zero vector stays zero (this is how the Virtual Office image is used).
    """

    binary = False

    def __init__(self, num_features: int, normalize: bool = False) -> None:
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"DenseFeatures: num_features must be an integer >= 1, got {num_features!r}")
        self.num_features = num_features
        self.normalize = normalize

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(*obs.shape[:-1], -1).float() if obs.dim() > 0 else obs.float()
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"DenseFeatures: expected [..., {self.num_features}] features, got {tuple(x.shape)}"
            )
        if self.normalize:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x


class TableFeatures(Features):
    """Features looked up from a table by a one-hot state observation: ``obs [..., S] @ table [S, d]``.

    For tabular MDPs observed as one-hot states (``observation="state"``): the actor can see aliased rows of
    ``table`` while the critic sees the state itself (``table = I``). A zero observation (the terminal state) has zero
    features.
    """

    binary = False

    def __init__(self, table: torch.Tensor) -> None:
        table = torch.as_tensor(table, dtype=torch.float32)
        if table.dim() != 2:
            raise ValueError(f"TableFeatures: table must be [S, d], got shape {tuple(table.shape)}")
        self.table = table
        self.num_features = table.shape[1]

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[-1] != self.table.shape[0]:
            raise ValueError(
                f"TableFeatures: expected one-hot states [..., {self.table.shape[0]}], got {tuple(obs.shape)}"
            )
        return obs.float() @ self.table.to(obs.device)


# ---------------------------------------------------------------------- helpers on either layout
def is_sparse(features: torch.Tensor) -> bool:
    """True for active indices (integer dtype), False for dense values."""
    return not features.dtype.is_floating_point


def indices_to_dense(
    indices: torch.Tensor, num_features: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Binary vectors ``[..., num_features]`` from active indices ``int64[..., K]`` (repeated indices add up)."""
    dense = torch.zeros((*indices.shape[:-1], num_features), dtype=dtype, device=indices.device)
    return dense.scatter_add_(-1, indices, torch.ones(indices.shape, dtype=dtype, device=indices.device))


def linear_value(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``w_p . x_p`` for ``weights: [P, d]`` and features ``int64[P, K]`` or ``float[P, d]``; returns ``[P]``."""
    if is_sparse(features):
        return weights.gather(1, features).sum(1)
    return (weights * features).sum(1)


def add_scaled_(weights: torch.Tensor, features: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """In place ``w_p += coef_p * x_p`` for ``weights: [P, d]``, ``coef: [P]``; touches only active entries."""
    if is_sparse(features):
        return weights.scatter_add_(1, features, coef[:, None].to(weights.dtype).expand(features.shape))
    return weights.add_(coef[:, None] * features)


def action_values(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``theta_{p,a} . x_{p,e}`` for ``weights: [P, A, d]``.

    ``features`` is ``[P, K]`` / ``[P, d]`` (returns ``[P, A]``) or ``[P, E, K]`` / ``[P, E, d]`` (returns
    ``[P, E, A]``).
    """
    single = features.dim() == 2
    if single:
        features = features.unsqueeze(1)
    num_members, num_actions = weights.shape[:2]
    if is_sparse(features):
        num_envs, num_active = features.shape[1:]
        index = features.reshape(num_members, 1, num_envs * num_active).expand(num_members, num_actions, -1)
        gathered = weights.gather(2, index).view(num_members, num_actions, num_envs, num_active).sum(-1)
        values = gathered.transpose(1, 2)
    else:
        values = torch.einsum("pad,ped->pea", weights, features)
    return values.squeeze(1) if single else values


def add_action_scaled_(weights: torch.Tensor, features: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """In place ``theta_{p,a} += coef_{p,a} * x_p`` for ``weights: [P, A, d]``, features ``[P, K]``/``[P, d]``,
    ``coef: [P, A]``; touches only the active columns."""
    if is_sparse(features):
        num_members, num_actions = weights.shape[:2]
        index = features[:, None, :].expand(num_members, num_actions, features.shape[1])
        return weights.scatter_add_(2, index, coef[:, :, None].to(weights.dtype).expand(index.shape))
    return weights.add_(coef[:, :, None] * features[:, None, :])
