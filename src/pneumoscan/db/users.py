"""Users of the web app: argon2 password hashes, lockout after repeated failures, hashed API tokens."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pneumoscan.config import PasswordHashing
from pneumoscan.db.schema import ApiToken, User, utcnow
from pneumoscan.domain import ROLES

# Consecutive failed logins that lock an account, and for how long.
LOCK_AFTER = 5
LOCK_FOR = timedelta(minutes=15)
MIN_PASSWORD = 10
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN_PREFIX = "psk_"

# Settings.password_hashing -> argon2-cffi's parameters. A hash records its own parameters, so any hash
# verifies under any profile, and a sign-in rehashes one made under another.
PROFILES = {"rfc9106-low-memory": profiles.RFC_9106_LOW_MEMORY, "rfc9106-high-memory": profiles.RFC_9106_HIGH_MEMORY,
            "cheapest": profiles.CHEAPEST}
_profile: PasswordHashing = "rfc9106-low-memory"


def use_password_hashing(profile: PasswordHashing) -> PasswordHashing:
    """Hash passwords in this process with ``profile`` (``Settings.password_hashing``) from now on; the previous one."""
    global _profile
    if profile not in PROFILES:
        raise ValueError(f"unknown password hashing profile {profile!r}")
    previous, _profile = _profile, profile
    return previous


@functools.cache
def _hasher_for(profile: PasswordHashing) -> PasswordHasher:
    return PasswordHasher.from_parameters(PROFILES[profile])


def _hasher() -> PasswordHasher:
    return _hasher_for(_profile)


@functools.cache
def _dummy_hash(profile: PasswordHashing) -> str:
    """Verified against when the name is unknown, so that a wrong name costs as long as a wrong password.

    Made on first use (not at import: it costs as much as a sign-in), once per profile.
    """
    return _hasher_for(profile).hash(secrets.token_hex(16))


class UserError(ValueError):
    """A user cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class Account:
    """What a request needs to know about who is signed in."""

    id: int
    name: str
    role: str
    session_epoch: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _account(user: User) -> Account:
    return Account(user.id, user.name, user.role, user.session_epoch)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(session: Session, name: str, role: str, password: str) -> Account:
    """Create a user; names are unique and are letters, digits, dot, dash and underscore."""
    if not NAME.match(name):
        raise UserError("a user name is 1 to 64 letters, digits, '.', '-' or '_', starting with a letter or digit")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    _check_password(password)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserError(f"user {name} already exists")
    user = User(name=name, role=role, password_hash=_hasher().hash(password))
    session.add(user)
    session.flush()
    return _account(user)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def _named(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise UserError(f"no user named {name!r} (see `pneumoscan users list`)")
    return user


def set_disabled(session: Session, name: str, disabled: bool) -> None:
    """Disable a user (their sessions end and their tokens are revoked, for good), or enable and unlock one.

    Re-enabling revives neither: the user signs in again and an admin issues new tokens.
    """
    user = _named(session, name)
    user.disabled = disabled
    if disabled:
        user.session_epoch += 1
        revoke_tokens(session, name)
    else:
        user.failed_logins, user.locked_until = 0, None


WRONG = "wrong name or password"  # also the answer for a locked account (an admin sees the lock in the audit)


@dataclass(frozen=True)
class LoginResult:
    account: Account | None
    reason: str | None = None  # why not, in words fit to show: never says whether the name exists
    locked: bool = False  # for the audit trail only, never shown


def end_sessions(session: Session, user_id: int) -> None:
    """Sign a user out everywhere: every session cookie issued so far stops working (the epoch moves on)."""
    session.execute(update(User).where(User.id == user_id).values(session_epoch=User.session_epoch + 1))


def authenticate(session: Session, name: str, password: str, now: datetime | None = None) -> LoginResult:
    """Check a name and password; count failures and lock the account after LOCK_AFTER in a row."""
    now = now or utcnow()
    user = session.scalars(select(User).where(User.name == name).with_for_update()).first()
    if user is None:
        _verify(_dummy_hash(_profile), password)
        return LoginResult(None, WRONG)
    locked_until = user.locked_until
    if locked_until is not None and locked_until.tzinfo is None:  # SQLite hands back naive datetimes
        locked_until = locked_until.replace(tzinfo=now.tzinfo)
    if locked_until is not None and locked_until > now:
        # The same answer, after the same work, as a wrong password: a lock must not confirm that a name exists.
        _verify(user.password_hash, password)
        return LoginResult(None, WRONG, locked=True)
    if not _verify(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= LOCK_AFTER:
            user.locked_until, user.failed_logins = now + LOCK_FOR, 0
        return LoginResult(None, WRONG)
    if user.disabled:
        return LoginResult(None, "this account is disabled")
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    return LoginResult(_account(user))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def enabled_account(session: Session, name: str) -> Account | None:
    """The account named ``name`` if it exists and is enabled (a review is recorded only for such a user)."""
    user = session.scalars(select(User).where(User.name == name)).first()
    return None if user is None or user.disabled else _account(user)


def current_account(session: Session, user_id: int, epoch: int) -> Account | None:
    """The account of a session cookie, if the user still exists, is enabled and was not signed out since."""
    user = session.get(User, user_id)
    if user is None or user.disabled or user.session_epoch != epoch:
        return None
    return _account(user)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, name: str) -> str:
    """A new API token for ``name``; only its hash is stored, so this is the one time it is seen."""
    user = _named(session, name)
    if user.disabled:
        raise UserError(f"user {name} is disabled")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=_token_hash(token)))
    session.flush()
    return token


def revoke_tokens(session: Session, name: str) -> int:
    """Revoke every token of ``name``; returns how many were in force."""
    user = _named(session, name)
    result = session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]


def token_account(session: Session, token: str) -> Account | None:
    """The account behind a bearer token, if the token is in force and its user enabled."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                          .where(ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None))).first()
    if row is None or row.User.disabled:
        return None
    row.ApiToken.last_used_at = utcnow()
    return _account(row.User)
