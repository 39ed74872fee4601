from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from small_directory import fill_small_directory

from dispatcher.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = tmp_path / "engine.db"
    opened = await SqliteStore.open(db)
    fill_small_directory(db)
    yield opened
    await opened.close()
