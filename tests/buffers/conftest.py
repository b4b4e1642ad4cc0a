"""Every buffer test runs on each CPU backend of ``TrajectoryBuffer``: the compiled kernels and the tensor ops."""

from __future__ import annotations

from functools import partialmethod

import pytest

from emphatic_rl.buffers import TrajectoryBuffer


@pytest.fixture(autouse=True, scope="module", params=["numba", "torch"])
def buffer_backend(request):
    """Make ``backend`` default to the parameter (a test that passes ``backend=`` itself keeps its choice)."""
    original = TrajectoryBuffer.__init__
    TrajectoryBuffer.__init__ = partialmethod(original, backend=request.param)
    try:
        yield request.param
    finally:
        TrajectoryBuffer.__init__ = original
