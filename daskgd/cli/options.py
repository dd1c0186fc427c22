"""The command line's shared options: value parsers and option groups."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_number(text: str) -> float:
    value = number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_number(text: str) -> float:
    value = number(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def learning_rate_value(text: str) -> Any:
    return text if text == "auto" else number(text)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    from daskgd.cluster.local import LOCALHOST
    from daskgd.data.waits import DEFAULT_TIMEOUT_SECONDS

    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (default: start a LocalCluster)",
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        metavar="N",
        help="worker processes of the embedded LocalCluster (default: 2)",
    )
    group.add_argument(
        "--host",
        default=LOCALHOST,
        metavar="ADDRESS",
        help=f"interface the embedded LocalCluster and its Dask dashboard listen on "
        f"(default: {LOCALHOST}, this machine only; 0.0.0.0 opens them to the network)",
    )
    add_wait_options(group, DEFAULT_TIMEOUT_SECONDS)


def add_wait_options(group: Any, default_timeout: float) -> None:
    group.add_argument(
        "--timeout",
        type=positive_number,
        default=default_timeout,
        metavar="SECONDS",
        help="the longest the scheduler may leave a request unanswered (connecting, and "
        "every request of the fit), and the longest a fit waits for workers when all "
        f"were lost, before daskgd stops with an error (default: {default_timeout:g})",
    )
    group.add_argument(
        "--wait-for-workers",
        type=nonnegative_number,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a first worker when the cluster has none (default: 0)",
    )


def add_fit_options(
    parser: argparse.ArgumentParser, *, solver: str, max_iter: Any, tol: Any
) -> None:
    """``max_iter``/``tol`` given as text: the Python API's default of the model (None)."""
    from daskgd.optim.registry import OPTIMIZERS
    from daskgd.strategies import STRATEGIES

    group = parser.add_argument_group("fit")
    group.add_argument(
        "--solver",
        default=solver if solver in OPTIMIZERS else None,  # text: the model decides
        choices=sorted(OPTIMIZERS),
        help=f"optimizer (default: {solver})",
    )
    group.add_argument(
        "--strategy",
        default="mapreduce",
        choices=list(STRATEGIES),
        help="how the partial sums are gathered: "
        + "; ".join(f"{name}: {STRATEGIES.summary(name)}" for name in STRATEGIES)
        + " (default: mapreduce)",
    )
    from daskgd.cli.strategy_options import add_strategy_options

    add_strategy_options(group)
    group.add_argument(
        "--max-iter",
        type=positive_int,
        default=None if isinstance(max_iter, str) else max_iter,
        metavar="N",
        help=f"maximum number of iterations (default: {max_iter})",
    )
    group.add_argument(
        "--tol",
        type=number,
        default=None if isinstance(tol, str) else tol,
        help=f"stop when the inf-norm of the gradient is <= TOL (default: {tol})",
    )
    group.add_argument(
        "--learning-rate",
        type=learning_rate_value,
        default="auto",
        help="step size of gd/nesterov/sgd, or 'auto' (default)",
    )
    add_output_options(parser)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Where the fit's trace goes, its progress bar and its live dashboard."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "--trace-out",
        type=Path,
        metavar="PATH",
        help="where to save the trace (.nc netCDF or .zarr)",
    )
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    group.add_argument(
        "--dashboard",
        action="store_true",
        help="serve a live dashboard of the fit (Bokeh) and print its URL",
    )
    group.add_argument(
        "--dashboard-address",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the live dashboard listens (default: 127.0.0.1, free port)",
    )
    group.add_argument(
        "--keep-open",
        action="store_true",
        help="with --dashboard: keep serving after the fit until Ctrl-C",
    )


#: ``daskgd run --model`` -> the estimator's class name in daskgd.estimators.linear.
MODELS = {
    "logistic": "LogisticRegression",
    "linear": "LinearRegression",
    "ridge": "Ridge",
    "lasso": "Lasso",
    "elasticnet": "ElasticNet",
}
#: Models whose L1 term needs a proximal solver: their --solver default.
PROXIMAL_DEFAULT = {"lasso": "nesterov", "elasticnet": "nesterov"}


def add_model_choice(run: argparse.ArgumentParser) -> None:
    """--model and its parameters, named as scikit-learn's (--C, --alpha, --l1-ratio)."""
    run.add_argument(
        "--model",
        default="logistic",
        choices=list(MODELS),
        help="the model to fit: " + ", ".join(f"{k} ({v})" for k, v in MODELS.items()),
    )
    run.add_argument("--penalty", default="l2", choices=["l2", "l1", "elasticnet", "none"])
    run.add_argument(
        "--C",
        type=number,
        default=1.0,
        dest="C",
        help="inverse regularisation strength of --model logistic (default: 1)",
    )
    run.add_argument(
        "--alpha",
        type=nonnegative_number,
        default=1.0,
        help="regularisation strength of --model ridge, lasso and elasticnet, as "
        "scikit-learn's alpha (default: 1)",
    )
    run.add_argument(
        "--l1-ratio",
        type=number,
        default=None,
        help="L1 share of the penalty: of --model elasticnet (default: 0.5, as "
        "scikit-learn's ElasticNet) and of logistic with --penalty elasticnet (default: 0, "
        "as the Python API)",
    )


def model_from(args: argparse.Namespace, common: dict) -> Any:
    """The estimator ``--model`` names, with its parameters and the fit options ``common``."""
    from daskgd.estimators import linear

    options = dict(common)
    if options.get("solver") is None:
        options["solver"] = PROXIMAL_DEFAULT.get(args.model, "lbfgs")
    estimator = getattr(linear, MODELS[args.model])
    if args.model == "logistic":
        penalty = None if args.penalty == "none" else args.penalty
        l1_ratio = 0.0 if args.l1_ratio is None else args.l1_ratio
        return estimator(penalty, C=args.C, l1_ratio=l1_ratio, **options)
    if args.model in ("ridge", "lasso"):
        return estimator(args.alpha, **options)
    if args.model == "elasticnet":
        l1_ratio = 0.5 if args.l1_ratio is None else args.l1_ratio
        return estimator(args.alpha, l1_ratio=l1_ratio, **options)
    return estimator(**options)


# The emulation flags live in daskgd/cli/emulation_options.py (quantities need units).
from daskgd.cli.emulation_options import add_emulation_options, emulation_from  # noqa: E402

__all__ = [
    "MODELS",
    "add_cluster_options",
    "add_emulation_options",
    "add_fit_options",
    "add_output_options",
    "add_model_choice",
    "emulation_from",
    "learning_rate_value",
    "model_from",
    "nonnegative_number",
    "number",
    "positive_int",
    "positive_number",
]
