"""jobgate worker SDK: run job handlers from Redis Streams on Dask.

```python
from jobgate_worker import Worker

worker = Worker(queue="default")

@worker.job("echo")
def echo(ctx, params):
    ctx.progress(1, 1)
    return params
```

Run it with ``jobgate-worker module:worker``. See README.md for the details.
"""

from .context import JobContext
from .dask_support import current_task_key
from .errors import JobCancelled, JobFailed, RetryableError
from .logs import configure_logging
from .settings import Settings
from .worker import Worker

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "RetryableError",
    "Settings",
    "Worker",
    "configure_logging",
    "current_task_key",
]

__version__ = "0.1.0"
