"""Password hashes: argon2 parameters chosen by Settings.password_hashing, and hashes that outlive a change of them."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from argon2 import extract_parameters, profiles
from sqlalchemy import select

from pneumoscan.config import PasswordHashing, Settings
from pneumoscan.db import users
from pneumoscan.db.schema import User
from pneumoscan.domain import Role

PASSWORD = "a-long-enough-password"


@pytest.fixture
def profile() -> Any:
    """Restores the process's hashing profile after the test."""
    previous = users.use_password_hashing("cheapest")
    yield users.use_password_hashing
    users.use_password_hashing(previous)


def _stored_hash(sessions: Any, name: str) -> str:
    with sessions() as session:
        return str(session.scalars(select(User.password_hash).where(User.name == name)).one())


def test_every_setting_names_a_profile_and_the_default_is_rfc_9106s_low_memory_choice() -> None:
    assert set(users.PROFILES) == set(get_args(PasswordHashing))
    assert users.PROFILES[Settings(patient_salt="x").password_hashing] == profiles.RFC_9106_LOW_MEMORY
    with pytest.raises(ValueError, match="unknown password hashing profile"):
        users.use_password_hashing("md5")  # type: ignore[arg-type]


def test_a_hash_made_under_another_profile_signs_in_and_is_rehashed_under_the_current_one(
        sessions: Any, profile: Any) -> None:
    with sessions.begin() as session:
        users.add_user(session, "ada", Role.ADMIN, PASSWORD)
    old = _stored_hash(sessions, "ada")
    assert old.startswith("$argon2id$") and extract_parameters(old) == profiles.CHEAPEST
    profile("rfc9106-low-memory")
    with sessions.begin() as session:
        assert users.authenticate(session, "ada", "not-the-password").account is None
    assert _stored_hash(sessions, "ada") == old  # a failure changes nothing
    with sessions.begin() as session:
        assert users.authenticate(session, "ada", PASSWORD).account is not None
    new = _stored_hash(sessions, "ada")
    assert extract_parameters(new) == profiles.RFC_9106_LOW_MEMORY
    with sessions.begin() as session:  # and the new hash is the one that signs in now
        assert users.authenticate(session, "ada", PASSWORD).account is not None
        assert users.authenticate(session, "nobody", PASSWORD).reason == "wrong name or password"

