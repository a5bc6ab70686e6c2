"""Errors cross from a worker's runner process to the worker as they were: the same type,
message and attributes, whatever their ``__init__`` takes."""

from __future__ import annotations

import pickle

import pytest

from oracle.engine.runner_process import RunnerCrashed, RunnerProcessGone
from oracle.engine.worker import JobPastDeadline, RetryLater
from oracle.errors import OracleError, OutOfRange, UnknownEmbeddingModel


@pytest.mark.parametrize(
    "error",
    [
        OracleError(),
        OracleError("a detail"),
        RetryLater("the database went away"),
        JobPastDeadline("job 7, deadline 2026-01-01T00:00:00+00:00"),
        OutOfRange(field="maxTokens", value=10**9, allowed="1..4096"),
        UnknownEmbeddingModel(model="no-such-model\n\x00", known=("all-MiniLM-L6-v2",)),
        RunnerCrashed("RuntimeError: CUDA error: out of memory"),
        RunnerProcessGone("pid 12, exit code -9"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_error_pickles_with_its_type_message_and_attributes(error: OracleError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)


def test_a_keyword_only_error_did_not_pickle_before() -> None:
    """What the rebuild is for: ``Exception``'s own pickling calls ``cls(*args)``."""
    error = OutOfRange(field="quorum", value=0, allowed="1..32")
    with pytest.raises(TypeError):
        type(error)(*error.args)
