"""Neural networks for a population of ``P`` learners, run as one batched program.

Every layer holds its members' weights stacked on a leading axis ``P`` and maps ``[P, B, ...] -> [P, B, ...]`` with one
batched kernel (``torch.baddbmm`` for linear layers, a grouped convolution for conv layers), so ``P`` networks cost
about as much as one wide network and no Python loop runs over members. Optimisers such as Adam act elementwise, so
one optimiser over these parameters updates every member independently when the loss is the *sum* of the members'
losses.

Each member is initialised like the matching ``torch.nn`` layer (uniform in ``+-1/sqrt(fan_in)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PopulationLinear(nn.Module):
    """``P`` independent affine maps: ``x [P, B, in_features] -> [P, B, out_features]``."""

    def __init__(self, population_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(population_size, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(population_size, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PopulationConv2d(nn.Module):
    """``P`` independent 2-d convolutions (stride 1, no padding) as one grouped convolution.

    ``x [P, B, C_in, H, W] -> [P, B, C_out, H - k + 1, W - k + 1]``.
    """

    def __init__(self, population_size: int, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.population_size = population_size
        self.weight = nn.Parameter(
            torch.empty(population_size, out_channels, in_channels, kernel_size, kernel_size).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(population_size, out_channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        P, B, C, H, W = x.shape
        merged = x.transpose(0, 1).reshape(B, P * C, H, W)
        out = nn.functional.conv2d(merged, self.weight.flatten(0, 1), self.bias.flatten(), groups=P)
        return out.view(B, P, -1, out.shape[-2], out.shape[-1]).transpose(0, 1)


class PopulationMLP(nn.Module):
    """``obs [P, B, *obs_shape]`` flattened, through ReLU layers of widths ``hidden``, to ``[P, B, out_dim]``."""

    def __init__(self, population_size: int, in_dim: int, out_dim: int, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        widths = (in_dim, *hidden, out_dim)
        self.layers = nn.ModuleList(
            PopulationLinear(population_size, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().flatten(2)
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class PopulationMinAtarNet(nn.Module):
    """The MinAtar paper's network: one 3x3 conv with 16 filters (stride 1, no padding), ReLU, 128 hidden units.

    Takes channel-last images ``obs [P, B, H, W, C]`` (bool or float, as MinAtar returns them); returns
    ``[P, B, out_dim]``.
    """

    def __init__(self, population_size: int, obs_shape: tuple[int, int, int], out_dim: int, hidden: int = 128):
        super().__init__()
        height, width, channels = obs_shape
        self.conv = PopulationConv2d(population_size, channels, 16, kernel_size=3)
        self.fc = PopulationLinear(population_size, 16 * (height - 2) * (width - 2), hidden)
        self.head = PopulationLinear(population_size, hidden, out_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float().permute(0, 1, 4, 2, 3)  # [P, B, C, H, W]
        x = torch.relu(self.conv(x)).flatten(2)
        x = torch.relu(self.fc(x))
        return self.head(x)


def make_population_network(
    population_size: int, obs_shape: tuple[int, ...], out_dim: int, hidden: tuple[int, ...] = (128, 128)
) -> nn.Module:
    """``PopulationMinAtarNet`` for channel-last images ``[H, W, C]`` (3-d observations), a ``PopulationMLP``
    otherwise."""
    if len(obs_shape) == 3:
        return PopulationMinAtarNet(population_size, obs_shape, out_dim)
    return PopulationMLP(population_size, int(math.prod(obs_shape)), out_dim, hidden)


def finite_members(module: nn.Module) -> torch.Tensor:
    """``bool[P]``: members whose parameters are all finite (every parameter has leading axis ``P``)."""
    params = list(module.parameters())
    finite = torch.ones(params[0].shape[0], dtype=torch.bool, device=params[0].device)
    for p in params:
        finite &= torch.isfinite(p.detach()).flatten(1).all(dim=1)
    return finite


def mask_and_clip_member_gradients_(parameters, active: torch.Tensor, max_norm: float) -> None:
    """Zero the gradients of inactive (frozen) members and clip each member's gradient norm to ``max_norm`` on its
    own (a global norm would couple the members). Every parameter has leading axis ``P``; ``active: bool[P]``."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    for g in grads:
        g[~active] = 0.0
    squared = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads]).sum(dim=0)  # [P]
    scale = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view((-1,) + (1,) * (g.dim() - 1)))


@torch.no_grad()
def polyak_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau online``, parameter by parameter (``tau = 1`` copies)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


def flatten_member_parameters_(module: nn.Module) -> torch.Tensor:
    """Move every parameter of a population network (leading axis ``P``) into one contiguous ``[P, D]`` tensor and
    make the parameters views of it (same values; ``module`` keeps working and ``load_state_dict`` writes through).
    Returns the flat tensor, a leaf that an optimiser can own."""
    parameters = list(module.parameters())
    P = parameters[0].shape[0]
    flat = torch.cat([p.detach().reshape(P, -1) for p in parameters], dim=1)
    offset = 0
    for p in parameters:
        size = p[0].numel()
        p.data = flat[:, offset : offset + size].view(p.shape)
        offset += size
    return flat
