"""Models: one-pass chunk functions (losses), penalties and the objective they make.

losses.py      loss_grad(w, X_chunk, y_chunk) -> (loss_sum, grad_sum, n_rows)
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
