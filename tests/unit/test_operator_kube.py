import pytest
from kubernetes.client.exceptions import ApiException

from moe_operator.kube import not_found_is_none, retry_on_conflict


def failing(*statuses):
    """A call that fails with these HTTP statuses in turn, then returns 'done'."""
    remaining = list(statuses)
    calls = []

    def call():
        calls.append(1)
        if remaining:
            raise ApiException(status=remaining.pop(0))
        return "done"

    return call, calls


def test_conflicts_are_retried():
    call, calls = failing(409, 409)
    assert retry_on_conflict(call) == "done"
    assert len(calls) == 3


def test_other_errors_are_not_retried():
    call, calls = failing(422)
    with pytest.raises(ApiException):
        retry_on_conflict(call)
    assert len(calls) == 1


def test_persistent_conflict_gives_up():
    call, calls = failing(*[409] * 10)
    with pytest.raises(ApiException):
        retry_on_conflict(call, attempts=3)
    assert len(calls) == 3


def test_not_found_is_none():
    assert not_found_is_none(failing(404)[0]) is None
    with pytest.raises(ApiException):
        not_found_is_none(failing(500)[0])
