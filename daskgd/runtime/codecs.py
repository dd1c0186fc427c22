"""Fewer bytes: codecs for the vectors a fit moves (w out, partial gradients back).

A codec turns a float64 vector into a *payload*, a 1-D numpy array whose ``nbytes`` is
what crosses the network (``sizeof`` of a numpy array is its ``nbytes``, so the
instrumentation's byte counts see the compression), and back:

==============  =========================================  ====================
name            payload                                    bytes for n values
==============  =========================================  ====================
``float64``     the vector itself (no compression)         8 n
``float32``     float32 values                             4 n
``float16``     float16 values (overflow above 65504)      2 n
``bfloat16``    the high 16 bits of each float32 (uint16)  2 n
``int8``        8-byte float64 scale, then round(x/scale)  n + 8
``topk:F``      the ceil(F n) largest |x|: int32 indices   12 ceil(F n)
                and float64 values
==============  =========================================  ====================

How a fit uses them (:class:`daskgd.strategies.mapreduce.MapReduce` with ``transfer_dtype``):

- w: the client encodes w once per evaluation and sends the payload to every worker;
  the chunk task decodes it. ``topk`` codecs leave w exact (float64): a sparsified w
  would evaluate the gradient somewhere else entirely; top-k applies to gradients.
- partial sums: the chunk task returns ``[loss, n_rows]`` (16 bytes, always exact
  float64) followed by the encoded gradient. Every node of the reduction tree (combine
  and aggregate) decodes its inputs, adds them in float64 and re-encodes the sum, so
  every partial sum that crosses the network (worker to worker, worker to scheduler to
  client) is encoded; the client decodes the total.
- error feedback (``topk`` only): each chunk task adds the residual it did not send
  last time to its gradient before picking the top k, and keeps the new residual. What
  the combine and aggregate steps drop when they re-sparsify a sum is *not* fed back.
  The residuals live in the worker process, per fit (concurrent fits on one cluster
  keep their own) and chunk, with the number of evaluations the chunk took part in,
  which the client sends along with w: a task run again for the same evaluation (a
  retried attempt) starts from the same residual, so retries change nothing. A chunk
  whose residual was lost with its worker (the task ran elsewhere, or on a restarted
  worker) starts again from zero: the task counts it in the exact head of its partial
  sum, and the fit records it (the trace's ``residual_resets``) and warns, since its
  coefficients then differ from an undisturbed fit's. The session removes a fit's
  residuals from the workers when it ends.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

__all__ = ["CODECS", "Codec", "get_codec"]

CODECS = ("float64", "float32", "float16", "bfloat16", "int8", "topk:FRACTION")

#: Length of the exact head of an encoded partial sum, float64: loss, row count, and the
#: number of top-k residuals the chunk tasks found lost (restarted from zero).
HEAD = 3


@dataclass(frozen=True)
class Codec:
    """A float64 vector codec; ``name`` is one of :data:`CODECS` (``topk:0.1`` etc.).

    Attributes
    ----------
    name : str
    fraction : float
        Kept fraction of the entries for ``topk``; 1 otherwise.
    """

    name: str
    fraction: float = 1.0

    @property
    def kind(self) -> str:
        return self.name.split(":")[0]

    @property
    def is_exact(self) -> bool:
        return self.kind == "float64"

    @property
    def compresses_w(self) -> bool:
        """Whether w is encoded (all lossy codecs but top-k)."""
        return self.kind not in ("float64", "topk")

    def k(self, n: int) -> int:
        """Entries kept by ``topk`` out of n."""
        return min(n, max(1, math.ceil(self.fraction * n))) if n else 0

    def payload_size(self, n: int) -> int:
        """Number of payload elements for a vector of n values."""
        if self.kind == "int8":
            return n + 8
        if self.kind == "topk":
            return 12 * self.k(n)
        return n

    def payload_dtype(self) -> np.dtype:
        return np.dtype(
            {
                "float64": np.float64,
                "float32": np.float32,
                "float16": np.float16,
                "bfloat16": np.uint16,
                "int8": np.uint8,
                "topk": np.uint8,
            }[self.kind]
        )

    def payload_nbytes(self, n: int) -> int:
        return self.payload_size(n) * self.payload_dtype().itemsize

    def encode(self, x: np.ndarray) -> np.ndarray:
        """The payload of the float64 vector ``x``."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        kind = self.kind
        if kind == "float64":
            return x.copy()
        if kind in ("float32", "float16"):
            return x.astype(kind)
        if kind == "bfloat16":
            # Round to nearest even on the 16 bits dropped from float32.
            bits = x.astype(np.float32).view(np.uint32)
            rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
            finite = np.isfinite(x)
            bits = np.where(finite, bits + rounding, bits)
            return (bits >> np.uint32(16)).astype(np.uint16)
        if kind == "int8":
            peak = float(np.max(np.abs(x))) if x.size else 0.0
            scale = peak / 127.0 if peak > 0 and math.isfinite(peak) else 1.0
            q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
            return np.concatenate([np.array([scale]).view(np.uint8), q.view(np.uint8)])
        # topk
        k = self.k(x.size)
        index = np.argpartition(np.abs(x), x.size - k)[x.size - k :] if k else np.array([], int)
        index = np.sort(index).astype(np.int32)
        return np.concatenate([index.view(np.uint8), x[index].view(np.uint8)])

    def decode(self, payload: np.ndarray, n: int) -> np.ndarray:
        """The float64 vector of length ``n`` a payload stands for."""
        payload = np.ascontiguousarray(payload).reshape(-1)
        kind = self.kind
        if kind in ("float64", "float32", "float16"):
            return payload.astype(np.float64)
        if kind == "bfloat16":
            return (payload.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)
        if kind == "int8":
            scale = payload[:8].view(np.float64)[0]
            return payload[8:].view(np.int8).astype(np.float64) * scale
        k = self.k(n)
        index = payload[: 4 * k].view(np.int32)
        out = np.zeros(n)
        out[index] = payload[4 * k :].view(np.float64)
        return out

    def roundtrip(self, x: np.ndarray) -> np.ndarray:
        """``decode(encode(x))``: what the receiver sees of x."""
        return self.decode(self.encode(x), np.size(x))

    def __str__(self) -> str:
        return self.name


def get_codec(spec: str | Codec | None) -> Codec:
    """A codec from ``'float64'``, ``'float32'``, ``'float16'``, ``'bfloat16'``, ``'int8'``
    or ``'topk:F'`` (0 < F <= 1); None is float64.

    Raises
    ------
    ValueError
        For any other value, naming it.
    """
    if spec is None:
        return Codec("float64")
    if isinstance(spec, Codec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"transfer_dtype must be a string such as 'float32', got {spec!r}")
    text = spec.strip().lower()
    if text in ("float64", "float32", "float16", "bfloat16", "int8"):
        return Codec(text)
    if text.startswith("topk:"):
        try:
            fraction = float(text[5:])
        except ValueError:
            fraction = math.nan
        if not 0 < fraction <= 1:
            raise ValueError(
                f"transfer_dtype {spec!r}: the top-k fraction must be a number in (0, 1], "
                "e.g. 'topk:0.1'"
            )
        return Codec(f"topk:{fraction:g}", fraction)
    raise ValueError(f"unknown transfer_dtype {spec!r}; choose one of {', '.join(CODECS)}")


# -- partial sums ------------------------------------------------------------------------


def encode_partial(
    packed: np.ndarray, codec: Codec, feedback_key: tuple | None = None, resets: float = 0.0
):
    """Encode a chunk's ``[loss, grad..., n_rows]`` as one uint8 row: exact head + gradient.

    With a ``topk`` codec and a ``feedback_key`` ``(fit id, chunk, evaluations the chunk
    took part in before)``, the residual kept under it in this process is added before
    sparsifying, and replaced by what was not sent; a residual that should exist but
    does not counts 1 in the head's resets. ``resets`` is the count of a sum's inputs.
    """
    packed = np.asarray(packed, dtype=np.float64).reshape(-1)
    grad = packed[1:-1]
    if codec.kind == "topk" and feedback_key is not None:
        fit_id, chunk, before = feedback_key
        residual, lost = _take_residual(fit_id, chunk, int(before), grad.size)
        grad = grad + residual
        payload = codec.encode(grad)
        _keep_residual(
            fit_id, chunk, int(before) + 1, residual, grad - codec.decode(payload, grad.size)
        )
        resets += lost
    else:
        payload = codec.encode(grad)
    head = np.array([packed[0], packed[-1], resets])
    return np.concatenate([head.view(np.uint8), payload.view(np.uint8)])[None, :]


def encode_partial_with_residual(
    packed: np.ndarray, codec: Codec, residual: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode ``[loss, grad..., n_rows]`` as one 1-D uint8 row, top-k error feedback explicit.

    For a ``topk`` codec, ``residual`` (None: zeros) is added to the gradient before
    sparsifying and what was not sent comes back as the new residual; other codecs
    return ``residual`` unchanged. The caller keeps the residual (the worker-resident
    runtime keeps one per resident, so concurrent runs never share one).
    """
    packed = np.asarray(packed, dtype=np.float64).reshape(-1)
    head = np.array([packed[0], packed[-1], 0.0])  # no residual lost: resets 0
    grad = packed[1:-1]
    if codec.kind == "topk":
        if residual is not None:
            grad = grad + residual
        payload = codec.encode(grad)
        residual = grad - codec.decode(payload, grad.size)
    else:
        payload = codec.encode(grad)
    return np.concatenate([head.view(np.uint8), payload.view(np.uint8)]), residual


def decode_partial(row: np.ndarray, codec: Codec, n_params: int) -> np.ndarray:
    """The float64 ``[loss, grad..., n_rows]`` an encoded row stands for."""
    raw = np.ascontiguousarray(row).reshape(-1).view(np.uint8)
    head = raw[: 8 * HEAD].view(np.float64)
    payload = raw[8 * HEAD :].view(codec.payload_dtype())
    return np.concatenate([[head[0]], codec.decode(payload, n_params), [head[1]]])


def partial_resets(row: np.ndarray) -> int:
    """Top-k residuals found lost by the chunk tasks summed into an encoded row."""
    return int(np.ascontiguousarray(row).reshape(-1).view(np.uint8)[: 8 * HEAD].view(np.float64)[2])


def partial_nbytes(codec: Codec, n_params: int) -> int:
    """Bytes of one encoded partial sum."""
    return 8 * HEAD + codec.payload_nbytes(n_params)


def combine_partials(rows, codec: Codec, n_params: int, axis=None, keepdims=True):
    """Decode, add in float64 and re-encode: the combine/aggregate of the reduction."""
    total = np.zeros(n_params + 2)
    resets = 0
    for row in _flatten(rows):
        for line in np.atleast_2d(row):
            total += decode_partial(line, codec, n_params)
            resets += partial_resets(line)
    encoded = encode_partial(total, codec, resets=resets)
    return encoded if keepdims else encoded[0]


def _flatten(rows):
    if isinstance(rows, np.ndarray):
        yield rows
        return
    for item in rows:
        yield from _flatten(item)


# Residuals of top-k error feedback in this process (a worker's): by fit id, then chunk,
# (evaluations of the chunk so far, residual used by the last one, residual after it).
_RESIDUALS: OrderedDict[str, dict[int, tuple[int, np.ndarray, np.ndarray]]] = OrderedDict()
_LOCK = threading.Lock()
#: Fits whose residuals a process keeps; the oldest go first (a fit whose session could
#: not remove them, e.g. its client died, must not keep memory for good).
MAX_FITS = 64


def _take_residual(fit_id: str, chunk: int, before: int, n: int) -> tuple[np.ndarray, int]:
    """The residual for the chunk's evaluation number ``before + 1``, and 1 if it was lost."""
    with _LOCK:
        chunks = _RESIDUALS.get(fit_id, {})
        entry = chunks.get(chunk)
    if entry is not None and entry[1].size == n:
        done, used, after = entry
        if done == before + 1:  # this evaluation again (a retried attempt)
            return used, 0
        if done == before:
            return after, 0
    return np.zeros(n), int(before > 0)


def _keep_residual(fit_id: str, chunk: int, done: int, used: np.ndarray, after: np.ndarray):
    with _LOCK:
        chunks = _RESIDUALS.setdefault(fit_id, {})
        _RESIDUALS.move_to_end(fit_id)
        chunks[chunk] = (done, used, after)
        while len(_RESIDUALS) > MAX_FITS:
            _RESIDUALS.popitem(last=False)


def forget_residuals(fit_id: str, dask_worker=None) -> int:
    """Drop the fit's residuals from this process; return how many chunks it had."""
    with _LOCK:
        return len(_RESIDUALS.pop(fit_id, {}))


# -- vectors in runtime messages ---------------------------------------------------------

#: Vectors up to this many bytes travel inside the message as raw bytes (msgpack), larger
#: ones as serialized out-of-band frames (``to_serialize``, no copy). distributed's P2P
#: shuffle draws the same line (distributed/shuffle/_core.py: shards under 64 KiB are
#: pickled into one blob); measured here, ``to_serialize`` of a 21-value vector cost
#: 54 us to dump and 35 us to load against 3 us for its bytes.
INLINE_BYTES = 65536


def to_wire(payload: np.ndarray):
    """A payload (1-D numpy array) as it goes into a distributed message."""
    payload = np.ascontiguousarray(payload).reshape(-1)
    if payload.nbytes <= INLINE_BYTES:
        return (payload.dtype.str, payload.tobytes())
    from distributed.protocol import to_serialize

    return to_serialize(payload)


def from_wire(value) -> np.ndarray:
    """The payload :func:`to_wire` sent (read-only when it came inline)."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str):
        return np.frombuffer(value[1], dtype=np.dtype(value[0]))
    return np.asarray(value).reshape(-1)
