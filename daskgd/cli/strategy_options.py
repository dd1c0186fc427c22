"""The CLI's strategy options beyond ``--strategy``: ``--staleness`` and ``--step-rule``
(parameter server), ``--topology`` (gossip), ``--local-steps`` (local SGD)."""

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


#: (attribute, option, the strategy it belongs to)
_OWNERS = (
    ("staleness", "--staleness", "parameter-server"),
    ("step_rule", "--step-rule", "parameter-server"),
    ("topology", "--topology", "gossip"),
    ("local_steps", "--local-steps", "local-sgd"),
)


def add_strategy_options(group: Any) -> None:
    from daskgd.cli.options import positive_int

    group.add_argument(
        "--staleness",
        type=staleness_value,
        default=argparse.SUPPRESS,
        metavar="S",
        help="with --strategy parameter-server: 0 synchronous (default), S a worker at most S "
        "steps ahead of the slowest (SSP), 'none' asynchronous; needs a numeric "
        "--learning-rate unless 0",
    )
    from daskgd.runtime.server import DEFAULT_STEP_RULE, STEP_RULES

    group.add_argument(
        "--step-rule",
        choices=STEP_RULES,
        default=argparse.SUPPRESS,
        help="with --strategy parameter-server and a staleness != 0: how the step shrinks "
        f"with the staleness of the aggregated sums (default: {DEFAULT_STEP_RULE}; "
        "docs/architecture.md)",
    )
    group.add_argument(
        "--topology",
        choices=("ring", "torus", "complete"),
        default=argparse.SUPPRESS,
        help="with --strategy gossip: who averages with whom (default: ring)",
    )
    group.add_argument(
        "--local-steps",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="H",
        help="with --strategy local-sgd: local steps between two averages (default: 8)",
    )


def strategy_parameters(args: argparse.Namespace) -> dict:
    """The estimator's strategy, transfer_dtype and emulation from the flags.

    With a strategy's own option (``--staleness``, ``--step-rule``, ``--topology``,
    ``--local-steps``) the
    strategy is configured here (``get_strategy``), carrying the codec and the emulation,
    which the estimator then must not be given again; an option given with another
    strategy is an error (before a cluster starts).
    """
    emulation = emulation_from(args)
    options = {}
    for attribute, option, owner in _OWNERS:
        if not hasattr(args, attribute):
            continue
        if args.strategy != owner:
            raise ValueError(f"{option} is an option of --strategy {owner}, not {args.strategy!r}")
        options[attribute] = getattr(args, attribute)
    common = {"transfer_dtype": args.transfer_dtype, "emulation": emulation}
    if not options:
        return {"strategy": args.strategy, **common}
    from daskgd.strategies import get_strategy

    return {"strategy": get_strategy(args.strategy, **common, **options)}
