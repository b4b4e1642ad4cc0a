"""``intrinsic``: numba's :func:`numba.extending.intrinsic`, typed for the kernels that call it.

numba's type stubs give an intrinsic the call signature of its definition, typing context included, but numba
supplies that first argument itself: a kernel calls ``pointer(address, element)`` for a definition
``pointer(typingctx, address, element)``, and a type checker would reject every such call. This decorator returns
numba's intrinsic unchanged (the compiled kernels see the same object) and types it as a callable of any arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba.extending import intrinsic as _numba_intrinsic

__all__ = ["intrinsic"]


def intrinsic(definition: Callable[..., Any]) -> Callable[..., Any]:
    """``numba.extending.intrinsic(definition)``, called from compiled code without the typing context."""
    return _numba_intrinsic(definition)
