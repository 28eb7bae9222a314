"""The integration guide's module path for the parallel runner; the code lives in `pi0.ript.env.parallel_runner`."""

from pi0.ript.env.parallel_runner import PI0LiberoRunner, WorkerFailuresExhausted

__all__ = ["PI0LiberoRunner", "WorkerFailuresExhausted"]
