"""What ``daskgd run`` gives back: the model file, a short result table, and data paths
the workers can read."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Coefficients are printed one per row up to this many features (a table a reader scans).
MAX_PRINTED_FEATURES = 20


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-out",
        type=Path,
        metavar="PATH",
        help="save the fitted model as JSON for `daskgd predict` and daskgd.load_model "
        "(default: not saved)",
    )


def check_model_out(path: Path | None) -> Path | None:
    """The absolute --model-out path, refused before the fit if it cannot be written."""
    if path is None:
        return None
    path = path.expanduser().resolve()
    if path.is_dir():
        raise ValueError(f"--model-out {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--model-out folder {str(path.parent)!r} does not exist")
    return path


def check_visible_to_workers(client: Any, paths: list[Path]) -> None:
    """FileNotFoundError naming the path and workers that cannot see a data file.

    The workers read the data themselves; a relative path is resolved on the client first,
    and a path that exists here but not on a worker (another machine, a container) is
    said plainly rather than surfacing as a worker's traceback.
    """
    if client is None or not hasattr(client, "run"):
        return
    names = [str(p) for p in paths]
    seen = client.run(_which_exist, names)
    for path in names:
        blind = sorted(worker for worker, found in seen.items() if path not in found)
        if blind:
            raise FileNotFoundError(
                f"{path!r} exists here but is not visible to the workers "
                f"{', '.join(blind)}: put the data on a file system they share"
            )


def _which_exist(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


def coefficient_rows(model: Any, feature_names: list[str] | None) -> list[str]:
    """``name  coef...`` lines, the intercept last; [] past MAX_PRINTED_FEATURES."""
    coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
    n_features = coef.shape[1]
    if n_features > MAX_PRINTED_FEATURES:
        return []
    names = list(feature_names or [f"x{i}" for i in range(n_features)])
    classes = getattr(model, "classes_", None)
    if classes is not None and len(classes) > 2:
        header = ["feature", *(f"class {c}" for c in classes)]
    else:
        header = ["feature", "coef"]
    intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    rows = [[name, *coef[:, j]] for j, name in enumerate(names)] + [["(intercept)", *intercept]]
    width = max(len(str(r[0])) for r in [header, *rows])
    lines = ["  ".join([header[0].ljust(width), *(h.rjust(12) for h in header[1:])])]
    for row in rows:
        lines.append("  ".join([str(row[0]).ljust(width), *(f"{v:12.6g}" for v in row[1:])]))
    return lines


def result_table(model: Any, X: Any, y: Any, feature_names: list[str] | None) -> str:
    """The coefficients (small d) and the score on the training data."""
    lines = coefficient_rows(model, feature_names)
    kind = "accuracy" if getattr(model, "classes_", None) is not None else "R^2"
    score = float(model.score(X, y))
    lines.append(f"training {kind}: {score:.6g}")
    return "\n".join(lines)


def save_fitted_model(model: Any, path: Path, feature_names: list[str] | None) -> None:
    from daskgd.estimators.persist import save_model

    saved = save_model(model, path, feature_names=feature_names)
    print(f"model saved to {saved} (daskgd predict {saved.name} DATA -o OUT, or daskgd.load_model)")
