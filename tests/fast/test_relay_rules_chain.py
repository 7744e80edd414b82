"""The chain's rules: how the relay reads JetStream's answers to chained publishes."""

from __future__ import annotations

import orjson

from cdc_bridge.relay.rules import (
    POISON_ERR_CODES,
    RETRY,
    WRONG_LAST_SEQUENCE,
    is_wrong_last_sequence,
    parse_ack,
)
from cdc_bridge.relay.settings import OutboxConfig


def _error(code: int, description: str) -> bytes:
    return orjson.dumps({"error": {"code": 400, "err_code": code, "description": description},
                         "stream": "CDC", "seq": 0})


def test_a_chain_refusal_is_transient_and_recognised() -> None:
    # what nats-server answers a publish whose Nats-Expected-Last-Sequence does not hold
    result = parse_ack(_error(10071, "wrong last sequence: 5"), None, "CDC")
    assert result.outcome == RETRY
    assert is_wrong_last_sequence(result.reason)
    assert WRONG_LAST_SEQUENCE not in POISON_ERR_CODES


def test_other_failures_are_not_taken_for_chain_refusals() -> None:
    in_process = parse_ack(_error(10158, "duplicate message id is in process"), None, "CDC")
    assert in_process.outcome == RETRY and not is_wrong_last_sequence(in_process.reason)
    wrong_id = parse_ack(_error(10070, "wrong last msg ID: x"), None, "CDC")
    assert not is_wrong_last_sequence(wrong_id.reason)
    assert not is_wrong_last_sequence("no responders: JetStream stream unavailable")
    assert not is_wrong_last_sequence("JetStream error 100710: something else")


def test_the_chain_is_on_by_default() -> None:
    assert OutboxConfig().expect_last_sequence is True
    assert OutboxConfig(expect_last_sequence=False).expect_last_sequence is False
