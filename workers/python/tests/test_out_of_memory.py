"""Redis at ``maxmemory``: a refused terminal call is made again, never dropped.

Against a real ``redis-server`` with ``maxmemory`` set below what it holds
(``noeviction``, the default): writes are refused with ``OOM`` until memory
is freed.
"""

from __future__ import annotations

import pytest
import redis

from conftest import Gateway
from jobgate_worker.reporting import with_report_retries
from jobgate_worker.script import JobScript

FILLER = "filler"


def fill_to_the_limit(client: redis.Redis) -> None:
    """A big key, then ``maxmemory`` below what Redis uses: writes are refused."""
    client.setrange(FILLER, 4_000_000, "x")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used // 2)


def free_memory(client: redis.Redis) -> None:
    client.delete(FILLER)
    client.config_set("maxmemory", 0)


def test_a_complete_refused_at_maxmemory_changes_nothing_and_is_made_again(gateway: Gateway):
    client = gateway.redis
    job_id = gateway.submit("echo", {"x": 1})
    script = JobScript.load(client)
    started, _ = script.start(job_id, "w1")
    assert started.ok
    fill_to_the_limit(client)
    before = gateway.record(job_id)
    history = len(gateway.events(job_id))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        script.call(job_id, "complete", 1, '{"v":1}')
    assert gateway.record(job_id) == before, "a refused script call writes nothing"
    assert len(gateway.events(job_id)) == history

    sleeps: list[float] = []

    def sleep(delay_s: float) -> None:
        sleeps.append(delay_s)
        if len(sleeps) == 3:
            free_memory(client)

    reply = with_report_retries(lambda: script.call(job_id, "complete", 1, '{"v":1}'), {}, sleep)
    assert reply.ok, reply
    assert len(sleeps) == 3
    assert sleeps[0] <= sleeps[-1], "backs off"
    assert gateway.record(job_id)["status"] == "completed"
    assert gateway.events(job_id)[-1]["event"] == "completed"


def test_other_errors_are_not_retried(gateway: Gateway):
    script = JobScript.load(gateway.redis)
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise redis.ResponseError("ERR something else")

    with pytest.raises(redis.ResponseError):
        with_report_retries(refused, {}, lambda _: None)
    assert calls == [1]
    assert script.sha
