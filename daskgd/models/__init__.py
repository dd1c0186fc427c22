"""Models: one-pass chunk functions (losses), penalties and the objective they make.

losses.py      loss_grad(w, X_chunk, y_chunk) -> (loss_sum, grad_sum, n_rows)
kernels.py     the compiled (numba) one-pass kernels loss_grad dispatches to; imported on
               first use, DASKGD_KERNELS=numpy forces the numpy block loop
jit.py         their numba decorators (strict / summing) and disk-cache fallbacks
vectormath.py  exp and log1p that LLVM can vectorise, for the kernels
penalties.py   L2, L1, elastic net: smooth part and proximal step
objective.py   F(w) = loss_sum / n_rows + penalty(w)
"""

from daskgd.models.losses import (
    BLOCK_ROWS,
    MODELS,
    LeastSquares,
    Logistic,
    Model,
    Multinomial,
    get_model,
    packed_loss_grad,
    unpack,
)

__all__ = [
    "BLOCK_ROWS",
    "MODELS",
    "LeastSquares",
    "Logistic",
    "Model",
    "Multinomial",
    "get_model",
    "packed_loss_grad",
    "unpack",
]
