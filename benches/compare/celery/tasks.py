"""The Celery app of the comparison: one no-op task, Redis as broker and result backend."""

import os

from celery import Celery

redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
app = Celery("compare", broker=redis_url, backend=redis_url)


@app.task
def noop() -> None:
    return None
