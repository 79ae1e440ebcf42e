"""A deployment's state in Ray's GCS, written by one replica at a time (`SoleWriterRecord`):
in a rolling update the outgoing replica lives beside its replacement, and a blind overwrite
let each erase the other's grants (issue 20). Real GCS KV (the session's cluster), no fakes."""

from __future__ import annotations

import json
import uuid

import pytest
from ray.experimental import internal_kv

from deployments._common import KV_NAMESPACE, ReplacedError, SoleWriterRecord, save

pytestmark = pytest.mark.cluster


def fresh_key() -> str:
    return f"test-sole-writer-{uuid.uuid4().hex[:8]}"


def versions_of(key: str) -> list[bytes]:
    return sorted(internal_kv._internal_kv_list(f"{key}@", namespace=KV_NAMESPACE))


def test_a_replaced_writer_cannot_overwrite_its_replacement(ray_cluster: object) -> None:
    key = fresh_key()
    old = SoleWriterRecord(key)
    assert old.claim() is None  # nothing saved yet
    old.save(json.dumps({"grants": ["a"]}))
    new = SoleWriterRecord(key)
    assert new.claim() == {"grants": ["a"]}  # the replacement starts from what the old one kept
    with pytest.raises(ReplacedError):
        old.save(json.dumps({"grants": ["a", "made-by-the-old-one"]}))
    new.save(json.dumps({"grants": ["a", "b"]}))
    assert SoleWriterRecord(key).claim() == {"grants": ["a", "b"]}
    assert len(versions_of(key)) == 2  # the two newest versions, no more


def test_a_writer_that_claimed_first_is_the_one_replaced_whatever_it_read(ray_cluster: object) -> None:
    key = fresh_key()
    first, second = SoleWriterRecord(key), SoleWriterRecord(key)
    first.claim()
    second.claim()  # claims after first: first's every later write is refused, second's are not
    for _ in range(3):
        second.save(json.dumps({"n": 1}))
        with pytest.raises(ReplacedError):
            first.save(json.dumps({"n": 0}))
    assert SoleWriterRecord(key).claim() == {"n": 1}


def test_a_record_saved_before_versions_is_taken_over(ray_cluster: object) -> None:
    key = fresh_key()
    save(key, json.dumps([{"task_id": "kept"}]))  # what an earlier grid-serve wrote
    record = SoleWriterRecord(key)
    assert record.claim() == [{"task_id": "kept"}]
    record.save(json.dumps([]))
    assert SoleWriterRecord(key).claim() == []


def test_saving_before_claiming_is_a_mistake_not_a_silent_write(ray_cluster: object) -> None:
    with pytest.raises(RuntimeError, match="claim"):
        SoleWriterRecord(fresh_key()).save("{}")


def test_a_put_retried_after_it_landed_is_the_writer_s_own_not_a_replacement(ray_cluster: object) -> None:
    """The GCS client retries a put whose answer was lost: the key is there, written by this
    very writer, so it is not taken for another replica's."""
    key = fresh_key()
    record = SoleWriterRecord(key)
    record.claim()
    assert record._put(1, "{}") and record._put(1, "{}")  # written, then the same put again
    assert not SoleWriterRecord(key)._put(1, "{}")  # anyone else finds it taken
