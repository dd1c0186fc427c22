"""Hooks a run calls: the base class (every method does nothing) and a progress bar."""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks called by a run; every method does nothing by default.

    ``record`` is a :class:`daskgd.engine.driver.IterationRecord`, ``result`` a
    :class:`daskgd.engine.driver.FitResult`.
    """

    def on_fit_start(self, info: dict) -> None:
        """Called once before the first evaluation with the fit's configuration."""

    def on_iteration_end(self, record: Any) -> None:
        """Called after every iteration (including iteration 0, the initial point)."""

    def on_fit_end(self, result: Any) -> None:
        """Called once when the loop stops, also after an error was raised."""


class ProgressBar(Callback):
    """A tqdm progress bar showing the loss and the optimality measure."""

    def __init__(self, description: str = "daskgd", **tqdm_options: Any):
        self.description = description
        self.tqdm_options = tqdm_options
        self._bar: Any = None

    def on_fit_start(self, info: dict) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=info.get("max_iter"), desc=self.description, **self.tqdm_options)

    def on_iteration_end(self, record: Any) -> None:
        if self._bar is None:
            return
        if record.iteration > 0:
            self._bar.update(1)
        self._bar.set_postfix(loss=f"{record.loss:.6g}", grad=f"{record.optimality:.2e}")

    def on_fit_end(self, result: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["Callback", "ProgressBar"]
