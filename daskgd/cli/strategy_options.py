"""The CLI's strategy options beyond ``--strategy``: ``--staleness`` (parameter server)."""

from __future__ import annotations

import argparse
from typing import Any

from daskgd.cli.emulation_options import emulation_from


def staleness_value(text: str) -> int | None:
    """``--staleness``: an integer >= 0 (0: synchronous) or ``none`` (asynchronous)."""
    if text.strip().lower() in ("none", "async"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"staleness must be an integer >= 0 or 'none', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"staleness must be >= 0 or 'none', got {text!r}")
    return value


def add_strategy_options(group: Any) -> None:
    group.add_argument(
        "--staleness",
        type=staleness_value,
        default=argparse.SUPPRESS,
        metavar="S",
        help="with --strategy parameter-server: 0 synchronous (default), S a worker at most S "
        "steps ahead of the slowest (SSP), 'none' asynchronous; needs a numeric "
        "--learning-rate unless 0",
    )


def strategy_parameters(args: argparse.Namespace) -> dict:
    """The estimator's strategy, transfer_dtype and emulation from the flags.

    With ``--staleness`` the strategy is configured here (``get_strategy``), carrying the
    codec and the emulation, which the estimator then must not be given again.
    """
    emulation = emulation_from(args)
    if not hasattr(args, "staleness"):
        return {"strategy": args.strategy, "transfer_dtype": args.transfer_dtype,
                "emulation": emulation}  # fmt: skip
    if args.strategy != "parameter-server":
        raise ValueError(
            f"--staleness is an option of --strategy parameter-server, not {args.strategy!r}"
        )
    from daskgd.optim.registry import get_optimizer
    from daskgd.strategies import get_strategy

    strategy = get_strategy("parameter-server", staleness=args.staleness,
                            transfer_dtype=args.transfer_dtype, emulation=emulation)  # fmt: skip
    options = {"learning_rate": args.learning_rate} if args.solver != "lbfgs" else {}
    strategy.check(get_optimizer(args.solver, **options))  # before a cluster starts
    return {"strategy": strategy}
