"""Engine: the synchronous training loop, its stopping rules and callbacks."""

from daskgd.engine.driver import Callback, FitResult, IterationRecord, ProgressBar, minimize

__all__ = ["Callback", "FitResult", "IterationRecord", "ProgressBar", "minimize"]
