"""Shared fixtures: SQL store URLs for SQLite (always) and PostgreSQL (when configured)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oram_store import SqlBucketStore

POSTGRES_URL = os.environ.get("OTRACE_TEST_POSTGRES_URL")


def _backends() -> list[object]:
    marks = pytest.mark.skipif(POSTGRES_URL is None, reason="OTRACE_TEST_POSTGRES_URL not set")
    return ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, marks])]


@pytest.fixture(params=_backends())
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend; PostgreSQL gets its own schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
        return
    assert POSTGRES_URL is not None
    import sqlalchemy as sa

    schema = f"otrace_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture
def make_store() -> Iterator[Callable[..., SqlBucketStore]]:
    """Opens SQL bucket stores (of `kind`) and closes them all at teardown."""
    opened: list[SqlBucketStore] = []

    def make(url: str, kind: type[SqlBucketStore] = SqlBucketStore) -> SqlBucketStore:
        store = kind(url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
