"""Unit-tier fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.harness import make_gateway


@pytest.fixture
def gw(tmp_path: Path, db_url: str):
    gateway = make_gateway(tmp_path, db_url)
    with gateway.http:
        yield gateway
