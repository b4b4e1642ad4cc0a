"""Tile coding (the J23 authors' tilings, docs/environments.md), one-hot and dense features, and the sparse/dense linear
helpers."""

import pytest
import torch

from emphatic_rl.features import (
    DenseFeatures,
    OneHotFeatures,
    TileCoder,
    action_values,
    add_action_scaled_,
    add_scaled_,
    indices_to_dense,
    linear_value,
)

MC_LOW, MC_HIGH = (-1.2, -0.07), (0.6, 0.07)


def mountain_car_coder() -> TileCoder:
    return TileCoder(MC_LOW, MC_HIGH, tiles_per_dim=(4, 4), num_tilings=8, bias=True)


def test_feature_counts_mountain_car_and_puddle_world():
    mc = mountain_car_coder()
    assert (mc.num_features, mc.num_active) == (201, 9)
    pw = TileCoder((0.0, 0.0), (1.0, 1.0), tiles_per_dim=(2, 2), num_tilings=2, bias=True)
    assert (pw.num_features, pw.num_active) == (19, 3)
    obs = torch.rand(1000, 2)
    idx = pw(obs)
    assert idx.shape == (1000, 3) and idx.dtype == torch.int64
    assert (idx[:, -1] == 18).all()  # bias is the last feature
    assert (idx[:, 0] < 9).all() and ((idx[:, 1] >= 9) & (idx[:, 1] < 18)).all()  # one tile per tiling


def test_offsets_follow_the_spec_formula():
    mc = mountain_car_coder()
    width = torch.tensor([1.8 / 4, 0.14 / 4])
    for k in range(8):
        for d in range(2):
            expected = (((2 * d + 1) * k / 8) % 1.0) * width[d]
            assert mc.offsets[k, d].item() == pytest.approx(float(expected), abs=1e-7)


def test_indices_by_hand():
    mc = mountain_car_coder()
    # the low corner: tile (0, 0) of every tiling since every offset is < one width
    low = mc(torch.tensor([MC_LOW]))[0]
    assert low.tolist() == [k * 25 for k in range(8)] + [200]
    # the high corner: coordinate n_d = 4 in each dim (the extra tile catches the shift)
    high = mc(torch.tensor([MC_HIGH]))[0]
    assert high.tolist() == [k * 25 + 24 for k in range(8)] + [200]
    # an interior point by hand: tiling 1 shifts position by 1/8 width and velocity by 3/8 width
    x = torch.tensor([[-1.2 + 0.45 * 0.9, -0.07 + 0.035 * 0.7]])  # 0.9 and 0.7 widths from the low corner
    coords = mc.coordinates(x)[0]
    assert coords[0].tolist() == [0, 0]  # floor(0.9), floor(0.7)
    assert coords[1].tolist() == [1, 1]  # floor(0.9 + 0.125), floor(0.7 + 0.375)
    assert coords[2].tolist() == [1, 1]  # floor(0.9 + 2/8), floor(0.7 + 6/8)
    assert coords[3].tolist() == [1, 0]  # floor(0.9 + 3/8), floor(0.7 + (9/8 mod 1))
    index = mc(x)[0]
    assert index[3].item() == 3 * 25 + 1 * 5 + 0  # row-major, position slowest


def test_nearby_points_share_tiles_and_far_points_do_not():
    mc = mountain_car_coder()
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(500, 2, generator=generator) * torch.tensor([1.8, 0.14]) + torch.tensor(MC_LOW)
    near = base + torch.tensor([1e-4, 1e-6])
    shared_near = (mc(base)[:, :, None] == mc(near)[:, None, :]).any(-1).sum(-1).float()
    assert shared_near.mean() > 8.9  # almost always all 9
    far = base.clone()
    far[:, 0] = torch.where(base[:, 0] < -0.3, base[:, 0] + 0.9, base[:, 0] - 0.9)  # two tile widths away
    shared_far = (mc(base)[:, :, None] == mc(far)[:, None, :]).any(-1).sum(-1)
    assert (shared_far == 1).all()  # only the bias


def test_bad_tile_coder_arguments():
    with pytest.raises(ValueError, match="high > low"):
        TileCoder((0.0,), (0.0,), (2,), 2)
    with pytest.raises(ValueError, match="num_tilings"):
        TileCoder((0.0,), (1.0,), (2,), 0)
    with pytest.raises(ValueError, match="one entry per dimension"):
        TileCoder((0.0, 0.0), (1.0,), (2,), 2)


def test_one_hot_and_dense_features():
    one_hot = OneHotFeatures(5)
    states = torch.tensor([0, 3, 4])
    assert one_hot(states).tolist() == [[0], [3], [4]]
    assert one_hot(states[:, None]).tolist() == [[0], [3], [4]]
    assert torch.equal(one_hot.dense(states), torch.eye(5)[states])
    dense = DenseFeatures(3, normalize=True)
    x = dense(torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(x[0], torch.tensor([0.6, 0.0, 0.8])) and torch.equal(x[1], torch.zeros(3))


def test_sparse_helpers_match_dense_algebra():
    generator = torch.Generator().manual_seed(1)
    P, A, d, K = 4, 3, 10, 3
    indices = torch.stack([torch.randperm(d, generator=generator)[:K] for _ in range(P)])
    dense = indices_to_dense(indices, d)
    w = torch.randn(P, d, generator=generator)
    theta = torch.randn(P, A, d, generator=generator)
    assert torch.allclose(linear_value(w, indices), linear_value(w, dense))
    assert torch.allclose(action_values(theta, indices), action_values(theta, dense))
    batched = indices[:, None, :].expand(P, 2, K)
    assert torch.allclose(action_values(theta, batched)[:, 1], torch.einsum("pad,pd->pa", theta, dense))
    coef = torch.randn(P, generator=generator)
    assert torch.allclose(add_scaled_(w.clone(), indices, coef), add_scaled_(w.clone(), dense, coef))
    coef_a = torch.randn(P, A, generator=generator)
    assert torch.allclose(
        add_action_scaled_(theta.clone(), indices, coef_a), add_action_scaled_(theta.clone(), dense, coef_a)
    )


def test_tile_coder_cpu_kernel_equals_the_torch_ops() -> None:
    """The compiled CPU path of ``TileCoder.__call__`` gives the torch path's indices, edges and non-finite values
    included, for float32 and float64 observations of any leading shape."""
    import torch

    from emphatic_rl.features import TileCoder

    generator = torch.Generator().manual_seed(0)
    for low, high, tiles, tilings, bias in (
        ((-1.2, -0.07), (0.6, 0.07), (4, 4), 8, True),
        ((0.0, 0.0), (1.0, 1.0), (2, 2), 2, True),
        ((0.0, -1.0, 2.0), (1.0, 1.0, 3.0), (3, 5, 2), 4, False),
    ):
        coder = TileCoder(low, high, tiles, tilings, bias=bias)
        span = torch.tensor(high, dtype=torch.float64) - torch.tensor(low, dtype=torch.float64)
        obs = torch.rand(20_000, len(low), generator=generator, dtype=torch.float64) * 1.2 * span + (
            torch.tensor(low, dtype=torch.float64) - 0.1 * span
        )
        width = span / torch.tensor(tiles, dtype=torch.float64)
        boundaries = torch.tensor(low, dtype=torch.float64) + width * torch.arange(5, dtype=torch.float64)[:, None]
        special = torch.tensor([[float("nan")] * len(low), [float("inf")] * len(low), [-float("inf")] * len(low)])
        obs = torch.cat([obs, boundaries, special.double()])
        for observations in (obs, obs.float(), obs[:600].reshape(20, 30, len(low))):
            assert torch.equal(coder(observations), coder._torch_indices(observations))
