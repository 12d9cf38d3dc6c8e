"""Fixtures of the web app tests: the real app (in process, over httpx) on a database the real pipeline filled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_support import Site, build_site


@pytest.fixture
def site(settings: Any, sessions: Any, tiny_bundle: Any, inbox: Path) -> Iterator[Site]:
    yield build_site(settings, sessions, tiny_bundle, inbox)


@pytest.fixture
def admin(site: Site) -> Any:
    return site.signed_in("ada", "admin")


@pytest.fixture
def reviewer(site: Site) -> Any:
    return site.signed_in("rex", "reviewer")


