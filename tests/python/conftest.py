"""Shared fixtures of the Python binding's tests."""

import pytest

import mqstore


@pytest.fixture
def store(tmp_path):
    """An open store in a fresh directory, closed after the test."""
    with mqstore.Store(tmp_path / "store") as s:
        yield s


@pytest.fixture
def shard(store):
    """The name of an empty default shard of `store`."""
    store.create_shard("s")
    return "s"
