"""The vault's keys: AES-GCM for values at rest, a keyed HMAC for "have we seen this value?".

One 32-byte master key (from the config, or a key file created in the state dir with mode 0600)
is split by HKDF into an encryption key and a lookup key, so the lookup digest (stored beside the
ciphertext) reveals nothing that helps decrypt, and neither can be used for the other's job. The
lookup is HMAC-SHA256 over (scope, entity type, value): never a bare hash, which anyone holding a
guess of the value could recompute (Presidio's `hash` operator, #1845).

The ciphertext's associated data binds it to its token, scope and entity type: a row copied to
another token or scope fails to decrypt instead of revealing its value there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import ConfigError, IntegrityError

KEY_FILE = "dlp.key"
NONCE_BYTES = 12


class VaultKeyError(ConfigError):
    """The configured vault key is missing, unreadable or not 32 bytes of base64."""


class SealError(IntegrityError):
    """A ciphertext did not authenticate: wrong key, or a row moved to another token or scope."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"egress-gateway dlp " + purpose).derive(master)


def _decode(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultKeyError("the vault key must be base64 of 32 bytes") from None
    if len(key) != 32:
        raise VaultKeyError("the vault key must be base64 of 32 bytes")
    return key


def load_master_key(setting: str | None, state_dir: Path) -> bytes:
    """The master key from `dlp.key` (base64, env:NAME or file:PATH), else the state dir's key file.

    The key file is created on first use with mode 0600 by an exclusive create, so two gateway
    processes starting together agree on one key.
    """
    if setting is not None:
        if setting.startswith("env:"):
            value = os.environ.get(setting[4:])
            if value is None:
                raise VaultKeyError(f"dlp.key names environment variable {setting[4:]!r}, which is not set")
            return _decode(value)
        if setting.startswith("file:"):
            try:
                return _decode(Path(setting[5:]).read_text())
            except OSError as exc:
                raise VaultKeyError(f"dlp.key file cannot be read: {exc.strerror}") from None
        return _decode(setting)
    path = state_dir / KEY_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode(path.read_text())
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
    return _decode(path.read_text())


@dataclass(frozen=True)
class Sealer:
    """Encrypts and looks up values with keys derived from one master key."""

    _aead: AESGCM
    _lookup_key: bytes

    def __repr__(self) -> str:
        return "Sealer(<keys hidden>)"

    @classmethod
    def from_master(cls, master: bytes) -> Sealer:
        return cls(AESGCM(_derive(master, b"seal")), _derive(master, b"lookup"))

    def lookup(self, scope: str, entity_type: str, value: str) -> str:
        """Hex HMAC identifying (scope, type, value) without revealing the value."""
        msg = b"\x00".join(p.encode("utf-8") for p in (scope, entity_type, value))
        return hmac.new(self._lookup_key, msg, hashlib.sha256).hexdigest()

    def seal(self, value: str, *, token: str, scope: str, entity_type: str) -> bytes:
        """nonce || AES-GCM(value), bound to token, scope and type."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode("utf-8"), _aad(token, scope, entity_type))

    def open(self, sealed: bytes, *, token: str, scope: str, entity_type: str) -> str:
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(token, scope, entity_type))
        except InvalidTag:
            raise SealError("vault entry did not authenticate (wrong key or moved entry)") from None
        return plain.decode("utf-8")


def _aad(token: str, scope: str, entity_type: str) -> bytes:
    return b"\x00".join(p.encode("utf-8") for p in (token, scope, entity_type))
