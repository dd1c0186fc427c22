"""The emulation and compression options of ``demo``, ``run`` and ``scaling``."""

from __future__ import annotations

import argparse
import re
from typing import Any


def _checked(parse: Any, *, unit: bool = False) -> Any:
    """An argparse ``type`` from an emulation parser (its ValueError as usage error).

    ``unit``: refuse a bare number; ``--latency 5`` is not 5 seconds but a missing unit.
    """

    def check(text: str) -> str:
        if unit and re.fullmatch(r"\s*[-+]?[0-9.eE+-]+\s*", text):
            raise argparse.ArgumentTypeError(f"{text!r} needs a unit, e.g. 5ms, 0.2s, 150us")
        try:
            parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return check


def add_emulation_options(parser: argparse.ArgumentParser) -> None:
    from daskgd.runtime import codecs as compression
    from daskgd.runtime import emulation

    group = parser.add_argument_group("emulation and compression (docs/emulation.md)")
    group.add_argument(
        "--latency",
        type=_checked(emulation.parse_duration, unit=True),
        metavar="TIME",
        help="latency added to every transfer of w or a partial sum, e.g. 5ms",
    )
    group.add_argument(
        "--bandwidth",
        type=_checked(emulation.parse_bandwidth, unit=True),
        metavar="RATE",
        help="emulated link bandwidth, e.g. 100MB/s or 1Gbit/s",
    )
    group.add_argument(
        "--straggler",
        action="append",
        type=_checked(emulation.parse_straggler),
        metavar="SPEC",
        help="slow worker: INDEX:FACTORx (e.g. 1:3x), or exp:MEAN / lognormal:MEAN[:seed=N] "
        "random delays per chunk (repeatable)",
    )
    group.add_argument(
        "--emulated-compute",
        type=_checked(emulation.parse_duration, unit=True),
        metavar="TIME",
        help="emulated compute: every chunk's gradient takes at least TIME (computed, then "
        "the rest slept; a straggler's factor multiplies it), e.g. 20ms",
    )
    group.add_argument(
        "--fail",
        action="append",
        type=_checked(emulation.parse_failure),
        metavar="SPEC",
        help="kill worker INDEX after iteration T (INDEX@T), or each worker with "
        "probability p per iteration (p=0.01[,seed=N]) (repeatable)",
    )
    group.add_argument(
        "--transfer-dtype",
        type=_checked(compression.get_codec),
        default="float64",
        metavar="CODEC",
        help="codec of w and partial gradients: float64 (default), float32, float16, "
        "bfloat16, int8, topk:F",
    )


def emulation_from(args: argparse.Namespace) -> Any:
    """The Emulation the flags ask for, or None."""
    compute = getattr(args, "emulated_compute", None)
    if not (args.latency or args.bandwidth or args.straggler or args.fail or compute):
        return None
    import dataclasses

    from daskgd.runtime.emulation import Emulation, parse_duration

    emulation = Emulation.from_strings(args.latency, args.bandwidth, args.straggler, args.fail)
    if compute:
        emulation = dataclasses.replace(emulation, chunk_compute_seconds=parse_duration(compute))
    return emulation
