"""Secrets at rest: Fernet keyed by TUNEBOT_ENCRYPTION_KEY, and a column type that uses it."""

from __future__ import annotations

import base64
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from tunebot.settings import Settings, SettingsError

MIN_KEY_CHARS = 32
_INFO = b"tunebot slack token encryption v1"


def derive_key(secret: str) -> bytes:
    """The Fernet key for a TUNEBOT_ENCRYPTION_KEY value (HKDF-SHA256, so any long secret works,
    a `Fernet.generate_key()` value included)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode("utf-8"))
    return base64.urlsafe_b64encode(raw)


def cipher(settings: Settings) -> Fernet:
    """The Fernet built from TUNEBOT_ENCRYPTION_KEY; a one-line settings error when unusable."""
    key = settings.encryption_key.get_secret_value() if settings.encryption_key else ""
    if not key:
        raise SettingsError("tunebot: bad setting TUNEBOT_ENCRYPTION_KEY: required to store "
                            "Slack tokens encrypted at rest (e.g. the output of `python -c "
                            "\"from cryptography.fernet import Fernet; "
                            "print(Fernet.generate_key().decode())\"`)")
    if len(key) < MIN_KEY_CHARS:
        raise SettingsError(f"tunebot: bad setting TUNEBOT_ENCRYPTION_KEY: must be at least "
                            f"{MIN_KEY_CHARS} characters (got {len(key)})")
    return Fernet(derive_key(key))


class DecryptionError(RuntimeError):
    """A stored value that this key cannot decrypt (the key changed, or the row was altered)."""


class EncryptedString(TypeDecorator[str]):
    """A string column holding Fernet ciphertext: encrypted on the way in, decrypted on the way
    out; NULL stays NULL so "has a token" queries still work."""

    impl = String
    cache_ok = True

    def __init__(self, fernet: Fernet, length: int = 1024) -> None:
        super().__init__(length)
        self.fernet = fernet

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        """Encrypt before writing."""
        if value is None:
            return None
        return self.fernet.encrypt(str(value).encode("utf-8")).decode("ascii")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        """Decrypt after reading."""
        if value is None:
            return None
        try:
            return self.fernet.decrypt(str(value).encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise DecryptionError("a stored token does not decrypt with TUNEBOT_ENCRYPTION_KEY "
                                  "(was the key changed?)") from exc
