"""The CLI prints which database and broker it uses, never their passwords."""

from __future__ import annotations

import pytest

from pneumoscan.cli._common import shown_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://scan:s3cret-pw@db.example:5432/pneumoscan", "postgresql://scan:***@db.example:5432/pneumoscan"),
    ("redis://:s3cret-pw@broker:6379/0", "redis://:***@broker:6379/0"),
    ("sqlite:////var/lib/pneumoscan/pneumoscan.db", "sqlite:////var/lib/pneumoscan/pneumoscan.db"),
    ("not a url: s3cret-pw", "(not a URL)"),
])
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown
    assert "s3cret-pw" not in shown_url(url)
