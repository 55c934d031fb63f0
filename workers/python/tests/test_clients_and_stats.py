"""Pure parts of the cluster support and the outcome counters, without Redis."""

from __future__ import annotations

import pytest

from jobgate_worker import keys
from jobgate_worker.clients import RedisSettingError, _keys_of, parse_seeds, redact
from jobgate_worker.stats import LATENCY_BUCKETS_MS, OutcomeCounts, latency_bucket, outcome_fields


def test_seeds_are_split_on_commas_and_trimmed():
    assert parse_seeds("redis://a:7000, redis://b:7001") == ("redis://a:7000", "redis://b:7001")
    assert parse_seeds("rediss://u:p@a:7000") == ("rediss://u:p@a:7000",)
    assert parse_seeds("unix:///tmp/redis.sock") == ("unix:///tmp/redis.sock",)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "empty URL"),
        ("redis://a:1,", "empty URL"),
        ("redis://a:1,rediss://b:2", "mix"),
        ("redis://a:1,unix:///s", "unix://"),
        ("a:1", "not a redis://"),
        ("redis://a:x", "'redis://a:x'"),
    ],
)
def test_bad_seed_lists_are_refused_naming_the_problem(setting, message):
    with pytest.raises(RedisSettingError, match=message):
        parse_seeds(setting)


def test_passwords_are_redacted():
    assert redact("redis://user:secret@a:1/0") == "redis://user:***@a:1/0"
    assert redact("rediss://:secret@a:1") == "rediss://***@a:1"
    assert redact("redis://a:1") == "redis://a:1"


def test_script_and_stream_read_keys_are_found_without_a_round_trip():
    assert _keys_of(("EVALSHA", "abc", 2, "k1", "k2", "op", "x")) == ["k1", "k2"]
    assert _keys_of(("EVAL", "return 1", 1, "k", "a")) == ["k"]
    read = ("XREADGROUP", b"GROUP", "g", "c", b"COUNT", "3", b"BLOCK", 100, b"STREAMS",
            "s1", "s2", "s3", ">", ">", ">")  # fmt: skip
    assert _keys_of(read) == ["s1", "s2", "s3"]
    assert _keys_of(("HGET", "k", "f")) is None


def test_channels_and_keys_of_protocol_2():
    assert keys.KINDS_KEY == "jobgate:kinds:v2"
    assert keys.live_job_channel("j1") == "jobgate:live:job:{j1}"
    assert keys.control_channel("j1") == "jobgate:control:{j1}"
    assert keys.job_of_control_channel("jobgate:control:{j1}") == "j1"
    assert keys.job_of_control_channel("jobgate:control:j1") is None
    assert keys.job_of_control_channel("jobgate:live:job:{j1}") is None
    assert keys.stats_key("q") == "jobgate:stats:{q}"


def test_latency_buckets_are_the_first_bound_not_below_the_age():
    assert latency_bucket(0) == 0
    assert latency_bucket(5) == 0
    assert latency_bucket(6) == 1
    assert latency_bucket(1_000) == 7
    assert latency_bucket(3_600_000) == len(LATENCY_BUCKETS_MS) - 1
    assert latency_bucket(3_600_001) is None


def test_outcome_fields_name_event_kind_and_bucket():
    assert outcome_fields("retrying", "echo", 40) == {"outcome|retrying|echo": 1}
    assert outcome_fields("completed", "echo", 40) == {
        "outcome|completed|echo": 1,
        "latency|echo|3": 1,
        "latency_count|echo": 1,
        "latency_sum_ms|echo": 40,
    }
    # Past the last bound: counted and summed, in no bucket.
    assert outcome_fields("failed", "x", 4_000_000) == {
        "outcome|failed|x": 1,
        "latency_count|x": 1,
        "latency_sum_ms|x": 4_000_000,
    }
    with pytest.raises(ValueError, match="not a counted outcome"):
        outcome_fields("progress", "echo", 1)


def test_counts_add_up_until_flushed_and_age_by_the_clock_given():
    now = [10_000]
    counts = OutcomeCounts("q", clock_ms=lambda: now[0])
    counts.count("completed", "echo", created_at_ms=9_990)
    counts.count("completed", "echo", created_at_ms=9_000)
    counts.count("cancelled", "echo", created_at_ms=0)  # creation unknown: no latency
    assert counts.pending() == {
        "outcome|completed|echo": 2,
        "outcome|cancelled|echo": 1,
        "latency|echo|1": 1,
        "latency|echo|7": 1,
        "latency_count|echo": 2,
        "latency_sum_ms|echo": 1_010,
    }
    assert counts.key == "jobgate:stats:{q}"
