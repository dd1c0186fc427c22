"""Tests of the compiled chunk kernels (daskgd.models.kernels) and of their dispatch.

Oracles: the numpy block loop of ``Model.loss_grad`` (``DASKGD_KERNELS=numpy``) and plain
numpy/scipy on the whole array in float64 (``np.logaddexp``, ``scipy.special``); libm's
``exp`` and ``log1p`` through numpy for the kernels' own. Sums may be added in another
order, so a gradient entry is compared relative to the sum of the magnitudes of its terms.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logsumexp, softmax

import daskgd
from daskgd.models import kernels, vectormath
from daskgd.models.losses import LeastSquares, Logistic, Multinomial, packed_loss_grad

numba = pytest.importorskip("numba")

RELATIVE = 1e-12
N_CLASSES = 3
MODELS = {
    "least_squares": LeastSquares,
    "logistic": Logistic,
    "multinomial": lambda: Multinomial(N_CLASSES),
}


@pytest.fixture(autouse=True)
def _kernels_by_default(monkeypatch):
    monkeypatch.delenv(kernels.ENVIRONMENT_VARIABLE, raising=False)


def numpy_path(model, w, X, y, fit_intercept):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(kernels.ENVIRONMENT_VARIABLE, "numpy")
        return model.loss_grad(w, X, y, fit_intercept)


def whole_array(model, w, X, y, fit_intercept):
    """Loss and gradient sums in float64 on the whole array, and the scales of their errors.

    A reordered sum, or a z off by a few ulp of its terms, moves a result by a few eps
    times the sum of the magnitudes it is made of: ``loss_scale`` and ``grad_scale`` are
    those magnitudes, including the sensitivity to z (``zabs`` = sum of |x_j coef_j|).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n_outputs = N_CLASSES if model.name == "multinomial" else 1
    table = np.asarray(w, dtype=np.float64).reshape(n_outputs, -1)
    d = X.shape[1]
    intercept = table[:, d] if fit_intercept else np.zeros(n_outputs)
    z = X @ table[:, :d].T + intercept
    zabs = (np.abs(X) @ np.abs(table[:, :d]).T + np.abs(intercept)).max(axis=1, initial=0.0)
    if model.name == "least_squares":
        residual = z - y[:, None]
        r = residual[:, 0]
        loss = 0.5 * np.sum(r**2)
        loss_scale = np.sum(0.5 * r**2 + np.abs(r) * (zabs + np.abs(z[:, 0]) + np.abs(y)))
    elif model.name == "logistic":
        terms = np.logaddexp(0.0, z[:, 0]) - y * z[:, 0]
        residual = expit(z) - y[:, None]
        loss = np.sum(terms)
        loss_scale = np.sum(terms + np.abs(z[:, 0]) * (1 + np.abs(y)) + zabs)
    else:
        labels = y.astype(np.intp)
        rows = np.arange(len(y))
        top = logsumexp(z, axis=1) if len(y) else np.zeros(0)
        loss = np.sum(top - z[rows, labels])
        loss_scale = np.sum(np.abs(top) + np.abs(z[rows, labels]) + 2 * zabs)
        residual = softmax(z, axis=1)
        residual[rows, labels] -= 1.0
    magnitude = np.abs(residual) + zabs[:, None]
    grad, grad_scale = X.T @ residual, np.abs(X).T @ magnitude
    if fit_intercept:
        grad = np.vstack([grad, residual.sum(0)])
        grad_scale = np.vstack([grad_scale, magnitude.sum(0)])
    return loss, grad.T.reshape(-1), loss_scale, grad_scale.T.reshape(-1)


def assert_sums_agree(actual, expected, loss_scale, grad_scale):
    assert abs(actual[0] - expected[0]) <= RELATIVE * loss_scale, (actual[0], expected[0])
    excess = np.abs(actual[1] - expected[1]) - RELATIVE * grad_scale
    assert np.all(excess <= 0.0), (actual[1], expected[1])


def make_problem(name, n_rows, n_features, fit_intercept, seed, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    model = MODELS[name]()
    X = rng.standard_normal((n_rows, n_features)).astype(dtype)
    if name == "least_squares":
        y = rng.standard_normal(n_rows)
    else:
        y = rng.integers(0, N_CLASSES if name == "multinomial" else 2, n_rows).astype(float)
    w = scale * rng.standard_normal(model.n_params(n_features, fit_intercept))
    return model, w, X, y


def check_against_oracles(model, w, X, y, fit_intercept):
    result = model.loss_grad(w, X, y, fit_intercept)
    loss, grad, loss_scale, grad_scale = whole_array(model, w, X, y, fit_intercept)
    assert_sums_agree(result, (loss, grad), loss_scale, grad_scale)
    reference = numpy_path(model, w, X, y, fit_intercept)
    assert_sums_agree(result, reference, loss_scale, grad_scale)
    assert result[2] == reference[2] == X.shape[0]
    return result


# ------------------------------------------------------------------ agreement


cases = st.fixed_dictionaries(
    {
        "name": st.sampled_from(sorted(MODELS)),
        "n_rows": st.integers(0, 300),
        "n_features": st.integers(0, 24),
        "fit_intercept": st.booleans(),
        "dtype": st.sampled_from([np.float64, np.float32]),
        "log_scale": st.floats(-3.0, 3.0),
        "seed": st.integers(0, 2**32 - 1),
    }
)


@settings(max_examples=300, deadline=None)
@given(case=cases)
def test_kernels_agree_with_numpy_path_and_whole_array(case):
    model, w, X, y = make_problem(
        case["name"],
        case["n_rows"],
        case["n_features"],
        case["fit_intercept"],
        case["seed"],
        scale=10.0 ** case["log_scale"],  # up to |z| ~ 1e4: the stable formulas at work
        dtype=case["dtype"],
    )
    assert kernels.suits(X)
    check_against_oracles(model, w, X, y, case["fit_intercept"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_chunk_of_many_tiles(name, dtype):
    n_features = 100
    tile = kernels.tile_rows(n_features, np.dtype(dtype).itemsize)
    # Full tiles, then a partial one whose length is not a multiple of 4.
    model, w, X, y = make_problem(name, 7 * tile + 4 * 3 + 3, n_features, True, seed=3, dtype=dtype)
    check_against_oracles(model, w, X, y, True)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_row_and_empty_chunks(name):
    model, w, X, y = make_problem(name, 1, 5, True, seed=4)
    check_against_oracles(model, w, X, y, True)
    loss, grad, rows = model.loss_grad(w, X[:0], y[:0], True)
    assert (loss, rows) == (0.0, 0)
    np.testing.assert_array_equal(grad, np.zeros_like(w))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_integer_and_column_targets(name):
    model, w, X, y = make_problem(name, 50, 4, True, seed=5)
    expected = model.loss_grad(w, X, y, True)
    if name != "least_squares":
        for targets in (y.astype(np.int64), y.astype(np.int32)[:, None], y.astype(np.float32)):
            result = model.loss_grad(w, X, targets, True)
            assert result[0] == expected[0]
            np.testing.assert_array_equal(result[1], expected[1])
    result = model.loss_grad(w, X, y[:, None], True)
    np.testing.assert_array_equal(result[1], expected[1])


def misaligned(X):
    """A copy of X whose data starts one byte past an aligned address."""
    raw = np.empty(X.nbytes + X.itemsize + 1, dtype=np.uint8)
    offset = (-raw.ctypes.data) % X.itemsize + 1
    view = raw[offset : offset + X.nbytes].view(X.dtype).reshape(X.shape)
    view[...] = X
    assert not view.flags.aligned
    return view


def read_only(X):
    X = X.copy()
    X.flags.writeable = False
    return X


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("layout", "kernel_takes_it"),
    [
        (np.asfortranarray, False),
        (lambda X: np.repeat(X, 2, axis=0)[::2], False),  # rows strided
        (lambda X: np.repeat(X, 2, axis=1)[:, ::2], False),  # columns strided
        (misaligned, True),
        (read_only, True),
        (lambda X: X.astype(X.dtype.newbyteorder()), False),  # big-endian data
    ],
)
def test_layouts_are_taken_or_left_to_numpy(layout, kernel_takes_it, dtype):
    model, w, X, y = make_problem("logistic", 83, 6, True, seed=6, dtype=dtype)
    X_layout = layout(X)
    assert kernels.suits(X_layout) is kernel_takes_it
    check_against_oracles(model, w, X_layout, y, True)


# ------------------------------------------------------------------ extreme values


@pytest.mark.parametrize(
    "z", [1e-300, 20.0, 36.9, 700.0, 745.2, 800.0, 1e4, 1e300], ids=lambda z: f"{z:g}"
)
@pytest.mark.parametrize("name", ["logistic", "multinomial"])
def test_extreme_linear_predictors(name, z):
    """exp(-|z|) underflows to subnormals or 0, z * y is huge: sums stay finite and right."""
    model = MODELS[name]()
    X = np.array([[1.0], [-1.0], [1.0], [-1.0], [0.5]])
    y = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    w = np.array([z, 0.0]) if name == "logistic" else np.array([z, 0.0, -z, 0.0, 0.0, 0.0])
    result = check_against_oracles(model, w, X, y, True)
    assert np.isfinite(result[0]) and np.all(np.isfinite(result[1]))


def test_nan_propagates_like_numpy():
    model, w, X, y = make_problem("logistic", 20, 3, True, seed=7)
    w[0] = np.nan
    for result in (model.loss_grad(w, X, y, True), numpy_path(model, w, X, y, True)):
        assert np.isnan(result[0]) and np.all(np.isnan(result[1]))


def ulps(actual, expected):
    return np.abs(actual - expected) / np.spacing(np.abs(expected))


def test_exp_within_one_ulp_of_libm():
    rng = np.random.default_rng(8)
    x = np.concatenate(
        [
            -np.linspace(0.0, 760.0, 400_001),
            -np.abs(rng.standard_normal(200_000)) * 30,
            -(10.0 ** rng.uniform(-320, 2.9, 100_000)),
            [0.0, -0.0, -5e-324, -708.39, -709.78, -745.13, -745.14, -1e308, -np.inf],
        ]
    )
    actual, expected = vectormath.exp_nonpositive(x), np.exp(x)
    normal = expected >= np.finfo(np.float64).tiny
    assert ulps(actual[normal], expected[normal]).max() <= 1.0
    # Subnormal results are rounded once: within one unit of the smallest subnormal.
    assert np.abs(actual[~normal] - expected[~normal]).max() <= 5e-324
    assert np.isnan(vectormath.exp_nonpositive(np.array([np.nan])))[0]


def test_log1p_within_two_ulps_of_libm():
    rng = np.random.default_rng(9)
    e = np.concatenate(
        [
            np.linspace(0.0, 1.0, 400_001),
            10.0 ** rng.uniform(-323, 0, 200_000),
            np.exp(-np.linspace(0.0, 745.0, 100_001)),
            [0.5, np.nextafter(0.5, 0), np.nextafter(0.5, 1), 1.0, 5e-324, 0.0],
        ]
    )
    actual, expected = vectormath.log1p_unit_array(e), np.log1p(e)
    positive = expected > 0
    assert ulps(actual[positive], expected[positive]).max() <= 2.0
    np.testing.assert_array_equal(actual[~positive], expected[~positive])
    assert np.isnan(vectormath.log1p_unit_array(np.array([np.nan])))[0]


# ------------------------------------------------------------------ the switch


def test_environment_variable_selects_the_path(monkeypatch):
    calls = []
    real = kernels.binary

    def counting(*arguments):
        calls.append(arguments[0].shape)
        return real(*arguments)

    monkeypatch.setattr(kernels, "binary", counting)
    model, w, X, y = make_problem("logistic", 30, 3, True, seed=10)
    for value, used in (("numpy", False), ("auto", True), ("numba", True), ("", True)):
        monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, value)
        calls.clear()
        model.loss_grad(w, X, y, True)
        assert bool(calls) is used, value
    monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, "fortran")
    with pytest.raises(ValueError, match="DASKGD_KERNELS.*'fortran'"):
        model.loss_grad(w, X, y, True)


@pytest.mark.parametrize(
    ("name", "kernel"),
    [("least_squares", "binary"), ("logistic", "binary"), ("multinomial", "multinomial")],
)
def test_every_model_with_a_kernel_runs_it_by_default(monkeypatch, name, kernel):
    """(The multinomial kernel had ended up outside its class, after a return: every
    multinomial fit ran the numpy loop, and the agreement tests above compared numpy
    with itself.)"""
    calls = []
    real = getattr(kernels, kernel)

    def counting(*arguments):
        calls.append(arguments[0].shape)
        return real(*arguments)

    monkeypatch.setattr(kernels, kernel, counting)
    model, w, X, y = make_problem(name, 30, 3, True, seed=12)
    model.loss_grad(w, X, y, True)
    assert calls == [(30, 3)]


def test_without_numba_the_numpy_path_runs(monkeypatch):
    model, w, X, y = make_problem("multinomial", 40, 3, True, seed=11)
    expected = numpy_path(model, w, X, y, True)
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    assert not kernels.enabled()
    result = model.loss_grad(w, X, y, True)
    assert result[0] == expected[0]
    np.testing.assert_array_equal(result[1], expected[1])
    monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, "numba")
    with pytest.raises(RuntimeError, match="numba cannot be imported"):
        model.loss_grad(w, X, y, True)


def run_python(code, env, cwd):
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def test_import_without_numba_in_a_fresh_process(tmp_path):
    code = """
        import sys
        sys.modules["numba"] = None  # import numba now raises ImportError
        import numpy as np
        import daskgd
        from daskgd.models import kernels, vectormath
        from daskgd.models.losses import Logistic
        assert not kernels.AVAILABLE and not kernels.enabled()
        X = np.arange(12.0).reshape(6, 2) / 10
        loss, grad, rows = Logistic().loss_grad(np.ones(3), X, np.ones(6), True)
        assert rows == 6 and np.isfinite(loss)
        print("numpy path without numba")
    """
    env = {**os.environ, "PYTHONPATH": str(Path(daskgd.__file__).parents[1])}
    assert "numpy path" in run_python(code, env, tmp_path).stdout


# ------------------------------------------------------------------ the disk cache


FIRST_CALL = textwrap.dedent("""
    import json, warnings
    import numpy as np
    warnings.simplefilter("always")
    from daskgd.models import kernels, vectormath
    assert kernels.__file__.startswith({package!r}), kernels.__file__
    {before_call}
    X = np.linspace(-1.0, 1.0, 30).reshape(10, 3)
    loss, grad = kernels.binary(X, np.ones(10), np.ones(3), 0.5, True, 4)
    print(json.dumps({{"loss": loss, "status": kernels.cache_status()}}))
""")


def installed_copy(tmp_path):
    """daskgd copied as into a read-only site-packages: no ``__pycache__`` can be made
    beside its modules (a file stands in the way, which stops root as well)."""
    root = tmp_path / "site"
    shutil.copytree(
        Path(daskgd.__file__).parent, root / "daskgd", ignore=shutil.ignore_patterns("__pycache__")
    )
    for folder in (root / "daskgd").rglob("*"):
        if folder.is_dir():
            (folder / "__pycache__").write_text("not a directory")
    (root / "daskgd" / "__pycache__").write_text("not a directory")
    return root


def cache_env(root, cache_home):
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_")}
    env.update(
        PYTHONPATH=str(root),
        XDG_CACHE_HOME=str(cache_home),
        HOME=str(cache_home),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def first_call(root, env, cwd, before_call=""):
    code = FIRST_CALL.format(package=str(root), before_call=before_call)
    completed = run_python(code, env, cwd)
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


def test_cache_of_an_installed_package_goes_to_the_user_cache(tmp_path):
    root = installed_copy(tmp_path)
    env = cache_env(root, tmp_path / "cache")
    first, _ = first_call(root, env, tmp_path)
    assert first["status"]["binary"] == {"hits": 0, "misses": 1}
    assert first["status"]["cache_path"].startswith(str(tmp_path / "cache" / "numba"))
    second, _ = first_call(root, env, tmp_path)
    assert second["status"]["binary"] == {"hits": 1, "misses": 0}  # loaded, not compiled
    assert second["loss"] == first["loss"]


def test_no_writable_cache_anywhere_still_computes(tmp_path):
    root = installed_copy(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, stderr = first_call(root, cache_env(root, blocker / "cache"), tmp_path)
    assert "numba cannot cache daskgd's kernels" in stderr
    assert stderr.count("numba cannot cache") == 1
    assert result["status"]["cache_path"] is None
    assert result["status"]["binary"]["misses"] == 1


def test_cache_lost_after_import_still_computes(tmp_path):
    root = installed_copy(tmp_path)
    env = cache_env(root, tmp_path / "cache")
    lose_it = """
    import pathlib, shutil
    path = pathlib.Path(kernels._binary.stats.cache_path)
    shutil.rmtree(path)
    path.write_text("the cache directory is gone")
    """
    result, stderr = first_call(root, env, tmp_path, before_call=textwrap.dedent(lose_it))
    assert "compiled in this process only" in stderr
    # The same kernel on the same numbers in this process (a JSON float round-trips).
    X = np.linspace(-1.0, 1.0, 30).reshape(10, 3)
    assert result["loss"] == kernels.binary(X, np.ones(10), np.ones(3), 0.5, True, 4)[0]


# ------------------------------------------------------------------ threads


def test_threads_share_the_kernels():
    model, w, X, y = make_problem("logistic", 4000, 20, True, seed=12)
    chunks = np.array_split(np.arange(4000), 8)
    serial = [model.loss_grad(w, X[rows], y[rows], True) for rows in chunks]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            parallel = list(
                pool.map(lambda rows: model.loss_grad(w, X[rows], y[rows], True), chunks)
            )
            for one, other in zip(serial, parallel, strict=True):
                assert one[0] == other[0]
                np.testing.assert_array_equal(one[1], other[1])


def gil_free_share(kernel, arguments):
    """Share of a kernel call during which another thread kept executing Python.

    This thread stamps the clock in a loop while ``kernel(*arguments)`` runs once in
    another; the share is the span of the stamps that fall inside the call over the call's
    duration. A kernel holding the GIL lets this thread run at most a switch interval at
    either end of the call (set to 0.1 ms here), a kernel without it throughout.
    """
    window, finished = [], threading.Event()

    def work():
        window.append(time.perf_counter())
        kernel(*arguments)
        window.append(time.perf_counter())
        finished.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        stamps = []
        thread = threading.Thread(target=work)
        thread.start()
        while not finished.is_set():
            stamps.append(time.perf_counter())
        thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    inside = [stamp for stamp in stamps if window[0] < stamp < window[1]]
    return (max(inside) - min(inside)) / (window[1] - window[0]) if inside else 0.0


def test_kernels_release_the_gil():
    model, w, X, y = make_problem("logistic", 200_000, 50, True, seed=13)
    arguments = (X, y, w[:-1].copy(), w[-1], True, kernels.tile_rows(50, 8))
    kernels.binary(X[:8], y[:8], *arguments[2:])  # compiled or loaded before the race
    # Best of three: the OS may pause either thread for a while on a loaded machine.
    assert max(gil_free_share(kernels.binary, arguments) for _ in range(3)) > 0.5
    holding = numba.njit(nogil=False, error_model="numpy")(kernels._binary.py_func)
    holding(X[:8], y[:8], *arguments[2:])
    # The same code compiled without nogil: the measure tells the two apart.
    assert min(gil_free_share(holding, arguments) for _ in range(3)) < 0.5


# ------------------------------------------------------------------ on a cluster


def _count_kernel_calls():
    """On a worker: wrap kernels.binary with a counter (undone by _kernel_calls_counted)."""
    from daskgd.models import kernels as module

    real = module.__dict__.setdefault("_real_binary", module.binary)
    counter = module.__dict__.setdefault("_calls", [])
    counter.clear()

    def counting(*arguments):
        counter.append(arguments[0].shape)
        return real(*arguments)

    module.binary = counting


def _kernel_calls_counted():
    from daskgd.models import kernels as module

    module.binary = module.__dict__.pop("_real_binary", module.binary)
    return len(module.__dict__.pop("_calls", []))


def _choose_path(value):
    """On a worker: set or (None) unset DASKGD_KERNELS in that process."""
    if value is None:
        os.environ.pop(kernels.ENVIRONMENT_VARIABLE, None)
    else:
        os.environ[kernels.ENVIRONMENT_VARIABLE] = value


def test_float32_chunks_on_workers(client):
    """Placed float32 chunks on real worker processes: kernel sums equal numpy's."""
    model, w, X, y = make_problem("logistic", 40_000, 30, True, seed=14, dtype=np.float32)
    X_dask = client.persist(da.from_array(X, chunks=(5_000, 30)))
    y_dask = client.persist(da.from_array(y[:, None], chunks=(5_000, 1)))

    def partials():
        blocks = da.map_blocks(
            packed_loss_grad,
            X_dask,
            y_dask,
            w,
            model=model,
            fit_intercept=True,
            chunks=(1, w.size + 2),
            dtype=np.float64,
        )
        return blocks.sum(axis=0).compute()

    client.run(_count_kernel_calls)
    try:
        with_kernels = partials()
        client.run(_choose_path, "numpy")
        with_numpy = partials()
    finally:
        client.run(_choose_path, None)
        calls = client.run(_kernel_calls_counted)
    assert sum(calls.values()) == 8  # every chunk by a kernel, none with DASKGD_KERNELS=numpy
    loss, grad, loss_scale, grad_scale = whole_array(model, w, X, y, True)
    for partial in (with_kernels, with_numpy):
        assert partial[-1] == 40_000
        assert abs(partial[0] - loss) <= RELATIVE * loss_scale
        assert np.all(np.abs(partial[1:-1] - grad) <= RELATIVE * grad_scale)


# ------------------------------------------------------------------ float32 accuracy


def test_float32_fit_is_the_exact_fit_of_the_rounded_data(local_scheduler):
    """float32 X is kept as float32 and read exactly: the fit is the float64 fit of the
    float32-rounded data; it differs from the float64 fit by the rounding of X only."""
    from daskgd.data.synthetic import make_classification

    X, y = make_classification(20_000, 20, chunks=5_000, random_state=1)
    X, y = X.compute(), y.compute()
    single = X.astype(np.float32)

    def fit(features):
        model = daskgd.LogisticRegression(C=1.0, solver="lbfgs", tol=1e-10, max_iter=500)
        model.fit(features, y)
        return np.append(model.coef_.ravel(), model.intercept_)

    double, rounded, from_single = fit(X), fit(single.astype(np.float64)), fit(single)
    scale = np.abs(double).max()
    assert np.abs(from_single - rounded).max() <= 1e-12 * scale
    # Rounding X to float32 moves each entry by <= 6e-8 relative; on this well-conditioned
    # problem the coefficients move by ~1e-9 relative (measured), far below 1e-6.
    assert 0.0 < np.abs(from_single - double).max() <= 1e-6 * scale


def test_numba_is_declared_with_the_same_bound_in_pyproject_and_environment():
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    (declared,) = [req for req in project["dependencies"] if req.startswith("numba")]
    conda = [line.strip()[2:] for line in (root / "environment.yml").read_text().splitlines()]
    assert declared in conda


def test_importing_daskgd_does_not_import_numba(tmp_path):
    code = """
        import sys
        import daskgd, daskgd.models, daskgd.models.losses
        assert "numba" not in sys.modules, "numba imported with daskgd"
        print("lazy")
    """
    env = {**os.environ, "PYTHONPATH": str(Path(daskgd.__file__).parents[1])}
    assert "lazy" in run_python(code, env, tmp_path).stdout
