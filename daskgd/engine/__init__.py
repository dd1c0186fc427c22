"""Engine: the synchronous driver, one optimizer step, mini-batches, callbacks.

steps.py      Evaluation, Evaluator (value_fn with memory), first/next_iterate
driver.py     the loop: stopping rules, records, callbacks; ClientStepper, minimize
sampling.py   mini-batches from (seed, step)
callbacks.py  Callback hooks, ProgressBar
failures.py   FailureInjector (emulated worker failures)
"""

from daskgd.engine.callbacks import Callback, ProgressBar
from daskgd.engine.driver import (
    ClientStepper,
    FitResult,
    IterationRecord,
    Stepper,
    Stopping,
    minimize,
    run,
)
from daskgd.engine.steps import Evaluation, Evaluator, Iterate

__all__ = [
    "Callback",
    "ClientStepper",
    "Evaluation",
    "Evaluator",
    "FitResult",
    "IterationRecord",
    "Iterate",
    "ProgressBar",
    "Stepper",
    "Stopping",
    "minimize",
    "run",
]
