"""Codecs of w and of the partial gradients: precision, bytes on the wire, convergence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import daskgd
from daskgd.data.synthetic import make_classification
from daskgd.runtime.codecs import Codec, decode_partial, encode_partial, get_codec

#: Relative precision of each codec, measured against the vector's largest entry.
PRECISION = {"float64": 0.0, "float32": 6e-8, "float16": 5e-4, "bfloat16": 4e-3, "int8": 4e-3}


@pytest.mark.parametrize("name", sorted(PRECISION))
def test_codecs_round_trip_within_their_precision(name):
    x = np.random.default_rng(0).normal(size=1001) * 3.0
    codec = get_codec(name)
    payload = codec.encode(x)
    assert payload.nbytes == codec.payload_nbytes(x.size)
    back = codec.decode(payload, x.size)
    assert back.dtype == np.float64
    assert np.max(np.abs(back - x)) <= PRECISION[name] * np.max(np.abs(x)) + 1e-300


def test_payload_sizes():
    n = 1000
    sizes = {name: get_codec(name).payload_nbytes(n) for name in PRECISION}
    assert sizes == {"float64": 8000, "float32": 4000, "float16": 2000, "bfloat16": 2000,
                     "int8": 1008}  # fmt: skip
    assert get_codec("topk:0.1").payload_nbytes(n) == 100 * 12


def test_topk_keeps_the_largest_entries():
    x = np.random.default_rng(1).normal(size=200)
    back = get_codec("topk:0.05").roundtrip(x)
    kept = np.flatnonzero(back)
    assert len(kept) == 10
    np.testing.assert_array_equal(back[kept], x[kept])
    assert np.min(np.abs(x[kept])) >= np.max(np.abs(np.delete(x, kept)))


def test_topk_error_feedback_sends_everything_eventually():
    """Sent over T rounds = T * g - residual: the residual stays bounded."""
    codec = get_codec("topk:0.1")
    g = np.random.default_rng(2).normal(size=50)
    packed = np.concatenate([[7.0], g, [100.0]])
    sent = np.zeros(50)
    rounds = 200
    for done in range(rounds):
        row = encode_partial(packed, codec, ("fit-test", 0, done))
        decoded = decode_partial(row, codec, 50)
        assert decoded[0] == 7.0 and decoded[-1] == 100.0  # loss and rows exact
        sent += decoded[1:-1]
    np.testing.assert_allclose(sent / rounds, g, atol=20 * np.max(np.abs(g)) / rounds)


@pytest.mark.parametrize("spec", ["float8", "topk:0", "topk:1.5", "topk:x", 16, "int4"])
def test_bad_transfer_dtype_is_rejected_before_anything_starts(spec, local_scheduler):
    with pytest.raises(ValueError, match="transfer_dtype"):
        get_codec(spec)
    model = daskgd.LogisticRegression(transfer_dtype=spec)
    with pytest.raises(ValueError, match="transfer_dtype"):
        model.fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))


def test_codec_is_a_value():
    assert get_codec("topk:0.10") == Codec("topk:0.1", 0.1)
    assert get_codec(None).is_exact


N_FEATURES = 200
FIT = {"solver": "gd", "learning_rate": 1.0, "max_iter": 40, "tol": 0.0, "C": 0.1}


def _fit(client, X, y, transfer_dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", daskgd.ConvergenceWarning)
        return daskgd.LogisticRegression(client=client, transfer_dtype=transfer_dtype, **FIT).fit(
            X, y
        )


@pytest.fixture(scope="module")
def fits(session_client):
    X, y = make_classification(20_000, N_FEATURES, chunks=5_000, random_state=5)
    names = ["float64", "float32", "float16", "bfloat16", "int8", "topk:0.25"]
    return {name: _fit(session_client, X, y, name) for name in names}


def test_bytes_per_iteration_drop_by_the_codec_factor(fits):
    exact, half = fits["float64"].trace_, fits["float16"].trace_
    assert half.attrs["transfer_dtype"] == "float16"
    assert exact.attrs["transfer_dtype"] == "float64"
    n = N_FEATURES + 1
    # w: 8 n bytes per worker exact, 2 n in float16.
    per_iteration = exact.bytes_broadcast.isel(iteration=slice(1, None))
    np.testing.assert_allclose(
        half.bytes_broadcast.isel(iteration=slice(1, None)) / per_iteration, 0.25
    )
    # partial sums: 8 (n + 2) bytes exact, 16 + 2 n in float16.
    ratio = float(half.bytes_reduce.sum() / exact.bytes_reduce.sum())
    assert ratio == pytest.approx((16 + 2 * n) / (8 * (n + 2)), rel=0.05)
    total = float(half.bytes_total.sum() / exact.bytes_total.sum())
    assert 0.24 < total < 0.27


#: Documented tolerance (docs/emulation.md): max |coef - exact| / max |exact coef|
#: after the same 40 gd iterations.
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2, "int8": 2e-2, "topk:0.25": 0.15}


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_lossy_fits_end_close_to_the_exact_one(fits, name):
    exact, lossy = fits["float64"], fits[name]
    scale = np.max(np.abs(exact.coef_))
    error = np.max(np.abs(lossy.coef_ - exact.coef_)) / scale
    assert error < TOLERANCE[name], error
    assert float(lossy.trace_.loss[-1]) < float(lossy.trace_.loss[0])
    assert float(lossy.trace_.loss[-1]) == pytest.approx(float(exact.trace_.loss[-1]), rel=0.02)
