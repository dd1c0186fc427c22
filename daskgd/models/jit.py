"""numba compilation for the chunk kernels: the two kinds of functions and their caches.

``strict`` functions keep IEEE semantics (``fastmath=False``); ``summing`` ones may
reorder sums and fuse multiply-adds (``reassoc``, ``contract``), which LLVM needs to
vectorise a dot product. Both release the GIL and are cached on disk. Without numba the
decorators return the Python functions unchanged (they are then never called: the numpy
path of ``losses.py`` runs instead).
"""

import warnings
from typing import Any

numba: Any
try:
    import numba
except ImportError:
    numba = None

__all__ = ["AVAILABLE", "DISPATCHERS", "disable_caches", "numba", "strict", "summing"]

#: Whether numba could be imported.
AVAILABLE = numba is not None

# error_model="numpy": a division by zero gives inf or NaN as in numpy, instead of a
# ZeroDivisionError check per division, whose branch kept LLVM from vectorising the link
# (43 ns per row for the logistic link with the checks).
_OPTIONS = {"nogil": True, "error_model": "numpy"}


def _compile(**flags):
    """``numba.njit(cache=True, nogil=True, **flags)``, without the cache if it cannot work.

    numba raises RuntimeError at decoration when it finds no writable cache directory
    (neither ``NUMBA_CACHE_DIR``, nor ``__pycache__`` beside the module, as in a read-only
    site-packages, nor the user's cache directory): the kernels then compile in every
    process instead (5-10 s per kernel and dtype here, at its first use).
    """

    def decorate(function):
        if numba is None:
            return function
        try:
            dispatcher = numba.njit(**_OPTIONS, cache=True, **flags)(function)
        except RuntimeError as error:
            if "cannot cache" not in str(error):
                raise
            if all(other._cache.cache_path is not None for other in DISPATCHERS):
                warnings.warn(  # once: at the first function that cannot be cached
                    f"numba cannot cache daskgd's kernels ({error}); they are compiled in "
                    "every process: set NUMBA_CACHE_DIR to a writable directory to keep them",
                    RuntimeWarning,
                    stacklevel=3,
                )
            dispatcher = numba.njit(**_OPTIONS, cache=False, **flags)(function)
        DISPATCHERS.append(dispatcher)
        return dispatcher

    return decorate


#: Every compiled function, so that :func:`disable_caches` reaches them all.
DISPATCHERS: list[Any] = []


strict = _compile(fastmath=False)
summing = _compile(fastmath={"reassoc", "contract"})


def disable_caches():
    """Stop every compiled function here from reading or writing numba's disk cache.

    Through the dispatchers' ``_cache``: numba has no public switch.
    """
    for dispatcher in DISPATCHERS:
        dispatcher._cache.disable()
