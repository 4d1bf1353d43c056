"""Where work runs. A backend maps a picklable function over picklable tasks and yields
(task, result, error) as they finish; it knows nothing of mixtures or the store."""

from .local import run_local

__all__ = ["run_local"]
