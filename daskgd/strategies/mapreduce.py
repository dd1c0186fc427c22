"""``mapreduce``: the lecture's client-server iteration as a Dask graph (the default).

Each evaluation turns w into the totals ``(loss_sum, grad_sum, n_rows)`` over the data
held on the cluster: w is copied to every worker holding chunks, ``map_blocks`` runs the
chunk function where each chunk lives, ``da.sum`` tree-reduces the partial sums and the
total reaches the client, which takes the optimizer step.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from daskgd.data import waits
from daskgd.data.statistics import summarize
from daskgd.engine.steps import Evaluation
from daskgd.models.losses import Model, packed_loss_grad, unpack
from daskgd.runtime.codecs import (
    Codec,
    combine_partials,
    decode_partial,
    encode_partial,
    forget_residuals,
    partial_nbytes,
    partial_resets,
)
from daskgd.runtime.tuning import amm_paused, tune_for_iterations
from daskgd.strategies.base import FitProblem, register_strategy
from daskgd.strategies.synchronous import SynchronousStrategy

#: How often one evaluation is retried when a worker dies under it.
MAX_ATTEMPTS = 4
#: Up to this many chunks, the default reduction is one flat sum (one tree level).
FLAT_REDUCTION_CHUNKS = 32
#: Seconds to deliver w to one worker before that worker is skipped for the iteration.
BROADCAST_TIMEOUT = 10.0


def _recoverable_errors() -> tuple[type[BaseException], ...]:
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (FutureCancelledError, KilledWorker, CommClosedError)


@register_strategy
class MapReduce(SynchronousStrategy):
    """The lecture's client-server iteration as a Dask graph.

    1. broadcast: w is copied to every worker holding chunks;
    2. map: ``da.map_blocks`` runs the model's one-pass chunk function on every chunk
       where the chunk lives;
    3. reduce: ``da.sum(axis=0, split_every=k)`` sums the partial results along a tree;
       with chunks placed as contiguous ranges per worker and k = chunks per worker,
       the first level of the tree adds up each worker's partials locally;
    4. the total reaches the client, which updates w.

    Parameters
    ----------
    split_every : int or None, default=None
        Fan-in of the reduction tree; None sums up to 32 chunks in one step (see
        :attr:`Session.split_every`).
    tune_cluster : bool, default=True
        Shorten ``distributed``'s message batching and pause work stealing during the
        fit (see :func:`daskgd.runtime.tuning.tune_for_iterations`); restored afterwards.
    transfer_dtype : str or Codec, default='float64'
        Codec of w and of the partial sums on the network (:mod:`daskgd.runtime.codecs`).
    emulation : daskgd.runtime.emulation.Emulation or None
        Network delays and stragglers applied inside the workers during the fit
        (:mod:`daskgd.runtime.emulation`; failures are the engine callback's job).
    """

    name = "mapreduce"

    def __init__(
        self,
        split_every: int | None = None,
        *,
        tune_cluster: bool = True,
        transfer_dtype: str | Codec | None = None,
        emulation: Any = None,
    ):
        if split_every is not None and (
            isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2
        ):
            raise ValueError(f"split_every must be an integer >= 2 or None, got {split_every!r}")
        super().__init__(
            transfer_dtype=transfer_dtype, emulation=emulation, tune_cluster=tune_cluster
        )
        self.split_every = split_every

    def session(self, problem: FitProblem) -> Session:
        return Session(self, problem.data, problem.model, problem.fit_intercept)


class Session:
    """A :class:`MapReduce` bound to data and a model; use as a context manager."""

    def __init__(self, strategy: MapReduce, data: Any, model: Model, fit_intercept: bool):
        self.strategy = strategy
        self.data = data
        self.model = model
        self.fit_intercept = fit_intercept
        self.client = data.client
        self.n_params = model.n_params(data.n_features, fit_intercept)
        self.n_blocks = data.X.numblocks[0]
        self.codec = strategy.codec
        self.fit_id = uuid.uuid4().hex[:12]  # keys the error-feedback residuals on workers
        self.timeout = float(getattr(data, "timeout", waits.DEFAULT_TIMEOUT_SECONDS))
        #: Seconds lost in failed attempts and their errors, by the key prefix of the
        #: evaluation that then succeeded (the trace's retry_seconds).
        self.retries: dict[str, tuple[float, tuple[str, ...], tuple[str, ...]]] = {}
        #: Top-k residuals found lost (restarted from zero), by evaluation key prefix.
        self.residual_resets: dict[str, int] = {}
        self._participations = np.zeros(self.n_blocks, dtype=np.int64)
        self._groups = _task_groups(self.fit_id)
        self._n_attempts = 0
        self._stack = contextlib.ExitStack()
        self._template: tuple | None = None
        self._chunks: list | None = None  # (X, y) of each chunk, without a client

    def __enter__(self) -> Session:
        if self.client is not None:
            self._stack.enter_context(amm_paused(self.client, timeout=self.timeout))
            if self.strategy.tune_cluster:
                self._stack.callback(tune_for_iterations(self.client, timeout=self.timeout))
            self._stack.callback(_release, _anchor_groups(self.client, self._groups.values()))
            emulation = self.strategy.emulation
            if emulation is not None and (emulation.network or emulation.slows_chunks):
                from daskgd.runtime.emulation import register

                name = register(self.client, emulation, timeout=self.timeout)
                self._stack.callback(_unregister, self.client, name, self.timeout)
        if self.codec.kind == "topk":
            self._stack.callback(_forget_residuals, self.client, self.fit_id, self.timeout)
        return self

    @property
    def _slow_chunks(self) -> bool:
        emulation = self.strategy.emulation
        return self.client is not None and emulation is not None and emulation.slows_chunks

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.close()

    def report(self) -> dict[str, Any]:
        """What the fit's evaluations went through: retries and lost top-k residuals."""
        return {"retries": dict(self.retries), "residual_resets": dict(self.residual_resets)}

    def describe(self) -> dict[str, Any]:
        """The resolved configuration of this fit's reduction (for the trace attrs)."""
        return {"topology": "mapreduce", "split_every": self.split_every}

    @property
    def split_every(self) -> int:
        """The fan-in of the reduction: the strategy's, or a flat sum up to 32 chunks.

        Each level of the tree costs a scheduler round trip, which outweighs adding
        a few dozen small vectors on one worker (measured here, 8 chunks on 2 workers:
        32 ms per evaluation flat against 42 ms with a per-worker level first). Beyond
        32 chunks the first level still sums contiguous chunks, that is mostly chunks
        of one worker, locally.
        """
        if self.strategy.split_every is not None:
            return self.strategy.split_every
        per_worker = 1
        if self.data.placement:
            placement = self.data.placement
            per_worker = max(placement.count(address) for address in set(placement))
        return max(2, per_worker, min(self.n_blocks, FLAT_REDUCTION_CHUNKS))

    def evaluate(self, w: np.ndarray, blocks: Sequence[int] | None = None) -> Evaluation:
        """Totals of loss, gradient and rows at ``w`` over all chunks (or ``blocks``)."""
        recoverable = _recoverable_errors() if self.client is not None else ()
        start = time.perf_counter()
        failed: list[tuple[str, str]] = []  # (key prefix, error) of the failed attempts
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self._n_attempts += 1
            prefix = f"daskgd-gradient-{self.fit_id}-{self._n_attempts}"
            try:
                total = self._evaluate_once(np.asarray(w, dtype=np.float64), blocks, prefix)
                break
            except recoverable as error:
                # A worker died under the evaluation: its chunks are recomputed from
                # their graph by the scheduler; w is simply sent again.
                failed.append((prefix, type(error).__name__))
                if attempt == MAX_ATTEMPTS:
                    raise RuntimeError(
                        f"a gradient evaluation failed {MAX_ATTEMPTS} times in a row, each "
                        f"time losing a worker ({', '.join(e for _, e in failed)}); last "
                        f"error: {error}"
                    ) from error
                retry_start = time.perf_counter()
        if failed:
            errors, prefixes = tuple(e for _, e in failed), tuple(p for p, _ in failed)
            self.retries[prefix] = (retry_start - start, errors, prefixes)
        if not self.codec.is_exact:
            if self.codec.kind == "topk":
                self._count_participation(blocks, partial_resets(total), prefix)
            total = decode_partial(total, self.codec, self.n_params)
        loss_sum, grad_sum, n_rows = unpack(total)
        return Evaluation(loss_sum, grad_sum, n_rows, time.perf_counter() - start, attempt, prefix)

    def _count_participation(self, blocks: Sequence[int] | None, resets: int, prefix: str):
        """After a top-k evaluation: its chunks' counts, the residuals found lost."""
        self._participations[list(range(self.n_blocks)) if blocks is None else blocks] += 1
        if resets:
            self.residual_resets[prefix] = resets

    def _evaluate_once(self, w: np.ndarray, blocks: Sequence[int] | None, prefix: str) -> Any:
        if self.codec.kind == "topk":  # the chunks' evaluation counts travel with w
            w = np.concatenate([w, self._participations.astype(np.float64)])
        if self.client is None:
            if self.codec.is_exact and not self.codec.compresses_w:
                return self._in_process(w, blocks)
            payload = self.codec.encode(w) if self.codec.compresses_w else w
            return self._graph(payload, blocks, prefix).compute(scheduler="threads")
        # No distributed.span: the scheduler keeps every span and its task groups for its
        # lifetime (measured: a span and two task groups per evaluation, never freed).
        # The tasks carry an annotation naming the evaluation instead (_as_delayed),
        # which is forgotten with them.
        weights = self._broadcast(w, prefix)
        total = self._pinned_graph(weights, blocks, prefix)
        future = self.client.compute(total, optimize_graph=False)
        what = f"waiting for gradient evaluation {self._n_attempts}"
        return waits.result(self.client, future, what=what, timeout=self.timeout)

    def _in_process(self, w: np.ndarray, blocks: Sequence[int] | None) -> np.ndarray:
        """Without a client: the same map and tree sum on the in-memory chunks.

        ``distribute`` persisted the chunks in this process, so building a Dask graph
        per evaluation only adds its cost (measured: ~5 ms per evaluation, most of a
        small fit); the chunk function and the order of the sums are the graph's own.
        """
        if self._chunks is None:
            X, y = self.data.X.to_delayed().ravel(), self.data.y.to_delayed().ravel()
            self._chunks = list(zip(*dask.compute(list(X), list(y), scheduler="sync"), strict=True))
        index = range(self.n_blocks) if blocks is None else blocks
        chunks = [self._chunks[i] for i in index]
        partials = [
            packed_loss_grad(X_block, y_block, w, self.model, self.fit_intercept)
            for X_block, y_block in chunks
        ]
        return tree_sum(partials, self.split_every)

    def _pinned_graph(self, weights: Any, blocks: Sequence[int] | None, prefix: str) -> Any:
        """This evaluation's pinned graph: built once, then re-keyed for each evaluation.

        Building it (map_blocks, sum, optimise, pin) took ~5 ms of client time per
        iteration; only w's key and the task keys change between evaluations, so later
        evaluations substitute those in the first graph's tasks. Every key joins one of
        the fit's task groups (see :func:`_task_groups`).
        """
        if blocks is not None or self._template is None:  # sgd's batches differ each time
            tasks, pinned, out_key = _pinned_tasks(self._graph(weights, blocks, prefix), self.data)
            template_w_key = weights.key
            if blocks is None:
                self._template = (tasks, pinned, out_key, template_w_key)
        else:
            tasks, pinned, out_key, template_w_key = self._template
        rename = {
            key: _evaluation_key(self._groups["map" if key in pinned else "reduce"], prefix, key)
            for key in tasks
        }
        substitutions = {**rename, template_w_key: weights.key}
        renamed = {
            rename[key]: task.substitute(substitutions, key=rename[key])
            for key, task in tasks.items()
        }
        pinned = {rename[key]: address for key, address in pinned.items()}
        return _as_delayed(renamed, pinned, rename[out_key], prefix)

    def _broadcast(self, w: np.ndarray, prefix: str) -> Any:
        """Put one copy of w on every running worker holding chunks; return its future.

        ``client.scatter(w, broadcast=True)`` replicates through
        ``Scheduler.replicate``, which fixes its target workers when it starts: a worker
        dying during the copy makes it retry that worker forever (seen here: a fit hung
        when a worker was killed). So the client sends w to each worker itself, all at
        once, and registers the copies that arrived; a dead worker is skipped, and the
        chunk tasks that land elsewhere fetch w from a peer. Only the workers of the
        placement get w (data placed on some workers of a cluster leaves the others out).
        """
        key = _evaluation_key(self._groups["w"], prefix, "w")
        if self.codec.compresses_w:  # the chunk tasks decode it
            w = self.codec.encode(w)
        holders = set(self.data.placement) if self.data.placement else None
        # A worker that does not take w within this bound is skipped (a frozen worker
        # must not hold up the others, nor exceed the bound of the whole request).
        per_worker = min(BROADCAST_TIMEOUT, self.timeout / 2)
        deadline = time.monotonic() + self.timeout
        while True:
            delivered, running = waits.call(
                self.client, _send_to_workers, self.client, key, w, holders, per_worker,
                what=f"sending w for gradient evaluation {self._n_attempts}",
                timeout=self.timeout,
            )  # fmt: skip
            if delivered:
                from distributed import Future

                return Future(key, self.client)
            # No running worker (a nanny may be restarting the last one), or none took w
            # in time (just started, on a loaded machine): try again, bounded.
            if time.monotonic() >= deadline:
                raise self._undelivered(running)
            time.sleep(0.2)

    def _undelivered(self, running: list[str]) -> Exception:
        where = f"the Dask cluster at {waits.scheduler_address(self.client)}"
        if not running:
            return waits.NoWorkersError(
                f"all workers of {where} were lost (gradient evaluation {self._n_attempts}) "
                f"and none came back within {self.timeout:g} s"
            )
        return waits.ClusterTimeoutError(
            f"none of the {len(running)} running workers of {where} took w for gradient "
            f"evaluation {self._n_attempts} within the fit's timeout ({self.timeout:g} s)"
        )

    def _graph(self, weights: Any, blocks: Sequence[int] | None, prefix: str) -> da.Array:
        X, y = self.data.X, self.data.y
        index = list(range(self.n_blocks))
        if blocks is not None:
            index = list(blocks)
            X, y = X.blocks[index], y.blocks[index]
        if not self.codec.is_exact or self._slow_chunks:
            return self._coded_graph(X, y, weights, index, prefix)
        partials = da.map_blocks(
            packed_loss_grad,
            X,
            y,
            weights,
            model=self.model,
            fit_intercept=self.fit_intercept,
            chunks=(1, self.n_params + 2),
            dtype=np.float64,
            name=prefix,
        )
        return partials.sum(axis=0, split_every=self.split_every)

    def _coded_graph(self, X: da.Array, y: da.Array, weights: Any, index: list, prefix: str):
        """The map step through :func:`_chunk_task` (codec, emulated slowdown), and a
        reduction whose every node decodes, adds and re-encodes (float64 stays a sum)."""
        codec, n = self.codec, self.n_params
        width = n + 2 if codec.is_exact else partial_nbytes(codec, n)
        partials = da.map_blocks(
            _chunk_task,
            X,
            y,
            weights,
            model=self.model,
            fit_intercept=self.fit_intercept,
            codec=codec,
            slow=self._slow_chunks,
            fit_id=self.fit_id,
            index=index,
            chunks=(1, width),
            dtype=np.float64 if codec.is_exact else np.uint8,
            name=prefix,
        )
        if codec.is_exact:
            return partials.sum(axis=0, split_every=self.split_every)
        combine = functools.partial(combine_partials, codec=codec, n_params=n)
        return da.reduction(
            partials,
            chunk=_identity,
            combine=combine,
            aggregate=combine,
            axis=0,
            keepdims=False,
            dtype=np.uint8,
            split_every=self.split_every,
            concatenate=False,
            name=f"{prefix}-sum",
        )

    def top_gram_eigenvalue(self) -> float:
        """Largest eigenvalue of [X, 1]^T [X, 1] / n (X^T X / n without intercept).

        From every row of the data: placement summed a sketch of the Gram matrix in its
        pass over the chunks (:mod:`daskgd.data.statistics`); data without one get the
        same pass now.
        """
        return top_gram_eigenvalue(self.data, self.fit_intercept, self.client, self.timeout)


def tree_sum(partials: list, split_every: int) -> np.ndarray:
    """``da.sum(axis=0, split_every=k)`` of the (1, p) rows ``partials``, in numpy: the
    same groups of k consecutive rows, level by level, so the same rounding."""
    level = [np.sum(p, axis=0, keepdims=True) for p in partials]
    while len(level) > 1:
        level = [
            np.sum(np.concatenate(level[i : i + split_every]), axis=0, keepdims=True)
            for i in range(0, len(level), split_every)
        ]
    return level[0][0]


def top_gram_eigenvalue(data: Any, fit_intercept: bool, client: Any, timeout: float) -> float:
    """Largest eigenvalue of the data's [X, 1]^T [X, 1] / n, from placement's sketch of
    the Gram matrix (every row), or from the same pass now for data without one."""
    sketch = getattr(data, "gram_sketch", None)
    if sketch is None:
        _, sketch = summarize(data.X, data.y, client, timeout)
    assert sketch is not None  # summarize sketches by default
    return sketch.top_eigenvalue(fit_intercept)


def _pinned_tasks(total: da.Array, data: Any) -> tuple[dict, dict, Any]:
    """(tasks of the optimised graph, chunk-task key -> worker, key of the total).

    Every chunk holder has w after the broadcast, so without a restriction the scheduler
    may run a chunk task on the other worker when the holder is busy, moving the
    100 MB chunk instead of 800 bytes (seen here: 4 of 8 chunk tasks moved on freshly
    placed data). ``allow_other_workers`` keeps the fit going when a worker dies.
    """
    (optimised,) = dask.optimize(total)
    tasks = dict(optimised.__dask_graph__())
    holder = {key: data.placement[key[1]] for key in dask.core.flatten(data.X.__dask_keys__())}
    pinned = {}
    for key, task in tasks.items():
        chunk_keys = [k for k in getattr(task, "dependencies", ()) if k in holder]
        if chunk_keys:
            pinned[key] = holder[chunk_keys[0]]
    (out_key,) = dask.core.flatten(optimised.__dask_keys__())
    return tasks, pinned, out_key


def _as_delayed(tasks: dict, pinned: dict, out_key: Any, prefix: str) -> Delayed:
    # The annotation names the evaluation for the instrumentation's scheduler plugin; it
    # lives on the tasks and is forgotten with them.
    evaluation = {"daskgd_evaluation": prefix}
    layers = {
        "daskgd-map": MaterializedLayer(
            {key: tasks[key] for key in pinned},
            annotations={
                "workers": lambda key: [pinned[key]],
                "allow_other_workers": True,
                **evaluation,
            },
        ),
        "daskgd-reduce": MaterializedLayer(
            {key: task for key, task in tasks.items() if key not in pinned},
            annotations=evaluation,
        ),
    }
    dependencies = {"daskgd-map": set(), "daskgd-reduce": {"daskgd-map"}}
    # The total is one block: computing its key directly, not the Array, spares the
    # finalize task (one more scheduler round trip per iteration).
    return Delayed(out_key, HighLevelGraph(layers, dependencies), layer="daskgd-reduce")


def _task_groups(fit_id: str) -> dict[str, str]:
    """The names of the fit's task groups: its map tasks, its reduction, its copies of w.

    The scheduler makes a TaskGroup per distinct group name (the first element of a tuple
    key) and deletes it when its last task is forgotten, but its spans keep every group
    they ever held; evaluations with keys of their own would add groups (and spans) for
    the scheduler's lifetime. All evaluations of a fit share these three groups instead,
    kept alive by one anchor task each for the duration of the fit (:func:`_anchor_groups`).
    """
    return {role: f"daskgd-{role}-{fit_id}" for role in ("map", "reduce", "w")}


def _evaluation_key(group: str, prefix: str, key: Any) -> tuple:
    """A key of one evaluation: in the fit's ``group``, unique by the evaluation's prefix."""
    return (group, prefix, *(key if isinstance(key, tuple) else (key,)))


def _anchor() -> None:
    return None


def _anchor_groups(client: Any, groups: Any) -> list:
    """One tiny task per group held in memory during the fit: the groups then live (and
    stay in the span they first joined) from the first evaluation to the last."""
    return [client.submit(_anchor, key=(group, "anchor"), pure=False) for group in groups]


def _release(futures: list) -> None:
    for future in futures:
        with contextlib.suppress(Exception):
            future.release()


async def _send_to_workers(
    client: Any,
    key: Any,
    w: np.ndarray,
    holders: set[str] | None = None,
    per_worker_timeout: float = BROADCAST_TIMEOUT,
) -> tuple[list[str], list[str]]:
    """``update_data`` on every running worker at once, then tell the scheduler who has w.

    The running workers are asked of the scheduler first (one small RPC): connecting to
    a dead worker's address would be retried until distributed's connect timeout. With
    ``holders`` (the workers holding chunks), only the running ones among them get w, or
    every running worker when none of them is running.
    Returns (the workers that took w, the running workers asked).
    """
    import asyncio

    from distributed.protocol import to_serialize

    addresses = list(await client.scheduler.ncores_running())
    if holders:
        addresses = [a for a in addresses if a in holders] or addresses

    async def send(address: str) -> str:
        await asyncio.wait_for(
            client.rpc(address).update_data(data={key: to_serialize(w)}), per_worker_timeout
        )
        return address

    results = await asyncio.gather(*(send(a) for a in addresses), return_exceptions=True)
    delivered = [r for r in results if isinstance(r, str)]
    if delivered:
        await client.scheduler.update_data(
            who_has={key: delivered}, nbytes={key: int(w.nbytes)}, client=client.id
        )
    return delivered, addresses


def _chunk_task(X, y, w, *, model, fit_intercept, codec, slow, fit_id, index, block_id=None):
    """``packed_loss_grad`` with w decoded, the result encoded and the emulated slowdown."""
    n_params = model.n_params(X.shape[1], fit_intercept)
    if codec.compresses_w:
        w = codec.decode(w, n_params)
    chunk = index[block_id[0]] if block_id is not None else None
    feedback = None
    if codec.kind == "topk":  # w, then the evaluations each chunk took part in so far
        w, participations = w[:n_params], w[n_params:]
        if chunk is not None:
            feedback = (fit_id, chunk, int(participations[chunk]))
    start = time.perf_counter()
    packed = packed_loss_grad(X, y, w, model=model, fit_intercept=fit_intercept)
    if slow:
        from daskgd.runtime.emulation import straggle

        straggle(time.perf_counter() - start)
    if codec.is_exact:
        return packed
    return encode_partial(packed, codec, feedback)


def _forget_residuals(client: Any, fit_id: str, timeout: float) -> None:
    """Remove the fit's top-k residuals from the workers (or this process)."""
    if client is None:
        forget_residuals(fit_id)
        return
    with contextlib.suppress(Exception):  # a worker that is gone took them with it
        waits.run_on_workers(
            client, forget_residuals, fit_id, on_error="ignore",
            what="removing the top-k residuals", timeout=timeout,
        )  # fmt: skip


def _unregister(client: Any, name: str, timeout: float) -> None:
    """Remove the emulation plugin (its teardown restores the workers' handlers)."""
    try:
        waits.call(
            client,
            client.scheduler.unregister_worker_plugin,
            name=name,
            what="removing the emulation plugin",
            timeout=timeout,
        )
    except Exception as error:  # noqa: BLE001 - the fit's result must not be lost
        import warnings

        warnings.warn(
            f"could not remove the emulation plugin {name!r} from the workers ({error}); "
            "later fits on this cluster may still be slowed: restart the workers",
            RuntimeWarning,
            stacklevel=2,
        )


def _identity(x, axis=None, keepdims=True):
    return x
