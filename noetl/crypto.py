"""Encryption at rest for credentials: AES-256-GCM with a versioned blob format.

Why AES-GCM rather than Fernet: a full 256-bit key (Fernet encrypts with AES-128), associated
data (a credential's ciphertext is bound to its name, so rows cannot be swapped in the
database), and a compact binary blob for a `bytea` column.

A blob is `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`. The version
byte is authenticated too; a new algorithm or key scheme gets a new version and `decrypt`
keeps reading the old ones.

The key comes from `NOETL_ENCRYPTION_KEY`: either 32 random bytes in base64 (URL-safe or
standard alphabet, padding optional), or any other text as a passphrase (at least
`MIN_PASSPHRASE` characters) stretched with scrypt. Without it, a key is generated once into
`NOETL_HOME/encryption.key` (mode 0600) and reused. Only while no credential is stored: a
missing key file with credentials in the database is MissingKeyError, never a new key
(`noetl.store.credentials.CredentialStore.open` counts them before loading the key).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from noetl.config import Settings
from noetl.errors import ConfigError, MissingKeyError

__all__ = [
    "KEY_FILE",
    "KEY_SIZE",
    "MIN_PASSPHRASE",
    "decrypt",
    "encrypt",
    "generate_key",
    "load_key",
    "parse_key",
]

KEY_SIZE: Final = 32
KEY_FILE: Final = "encryption.key"
MIN_PASSPHRASE: Final = 16
_VERSION: Final = 1
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
# A fixed salt: every process must derive the same key from the passphrase with nothing
# stored beside it. Distinct from other applications' salts, so their tables do not apply.
_SCRYPT_SALT: Final = b"noetl-runtime/credential-key/v1"
_SCRYPT_N: Final = 2**15
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


def generate_key() -> str:
    """A new random key as NOETL_ENCRYPTION_KEY expects it (URL-safe base64 of 32 bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def parse_key(text: str) -> bytes:
    """The 32-byte key that NOETL_ENCRYPTION_KEY `text` stands for: decoded when it is the
    base64 of 32 bytes, else derived from it as a passphrase. Raises ConfigError."""
    text = text.strip()
    raw = _decode_base64_key(text)
    if raw is not None:
        return raw
    if len(text) < MIN_PASSPHRASE:
        raise ConfigError(
            "NOETL_ENCRYPTION_KEY is neither the base64 of 32 bytes nor a passphrase of at "
            f"least {MIN_PASSPHRASE} characters; generate a key with `openssl rand -base64 32`"
        )
    return _derive(text)


def load_key(
    settings: Settings,
    *,
    stored: int = 0,
    announce: Callable[[str], None] | None = None,
) -> bytes:
    """The credential encryption key: from `settings.encryption_key` when set, else from
    `settings.home`/encryption.key, generated there on first use (`announce` is then called
    with a one-line notice) when no credential is `stored` yet. Raises MissingKeyError when
    the file is missing while credentials are stored, ConfigError when a key is unusable."""
    if settings.encryption_key:
        return parse_key(settings.encryption_key)
    home = Path(os.path.abspath(settings.home.expanduser()))
    path = home / KEY_FILE
    if not path.exists():
        if stored:
            raise MissingKeyError(str(path), stored)
        created = _create_key_file(path)
        if created and announce is not None:
            announce(
                f"noetl: generated a new encryption key in {path}; back it up: stored "
                "credentials cannot be decrypted without it"
            )
    return _read_key_file(path)


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
    """Encrypt `plaintext` with a fresh random nonce; `aad` is authenticated, not stored,
    and must be given again to `decrypt`."""
    nonce = secrets.token_bytes(_NONCE_SIZE)
    header = bytes([_VERSION])
    return header + nonce + _cipher(key).encrypt(nonce, plaintext, header + aad)


def decrypt(key: bytes, blob: bytes, *, aad: bytes = b"") -> bytes:
    """The plaintext of a blob made by `encrypt`. A wrong key, another `aad` or altered
    bytes raise ConfigError; garbage is never returned."""
    if len(blob) < 1 + _NONCE_SIZE + _TAG_SIZE:
        raise ConfigError("cannot decrypt: the encrypted value is truncated")
    if blob[0] != _VERSION:
        raise ConfigError(
            f"cannot decrypt: unknown encryption format version {blob[0]} "
            "(written by a newer noetl-runtime?)"
        )
    nonce = blob[1 : 1 + _NONCE_SIZE]
    try:
        return _cipher(key).decrypt(nonce, blob[1 + _NONCE_SIZE :], blob[:1] + aad)
    except InvalidTag:
        raise ConfigError(
            "cannot decrypt: the encryption key is not the one the value was encrypted "
            "with (NOETL_ENCRYPTION_KEY, or NOETL_HOME/encryption.key when it is unset), "
            "or the stored bytes were altered"
        ) from None


# -- internals ------------------------------------------------------------------------------


def _cipher(key: bytes) -> AESGCM:
    if len(key) != KEY_SIZE:
        raise ConfigError(f"an encryption key must be {KEY_SIZE} bytes, got {len(key)}")
    return AESGCM(key)


def _decode_base64_key(text: str) -> bytes | None:
    """The key if `text` is the base64 (either alphabet, padding optional) of 32 bytes."""
    standard = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_SIZE else None


@functools.lru_cache(maxsize=4)
def _derive(passphrase: str) -> bytes:
    # scrypt costs ~0.1 s and 32 MiB on purpose; cached so a process pays it once.
    kdf = Scrypt(salt=_SCRYPT_SALT, length=KEY_SIZE, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


def _create_key_file(path: Path) -> bool:
    """Write a new key to `path` unless it exists; False when another process won the race.

    The key is written and synced under a temporary name, then hard-linked into place:
    linking fails if the file exists, so concurrent processes all end up with one key and
    nobody ever reads a half-written file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(generate_key() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        # Losing the key loses every credential: make the new name durable too.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfigError(f"cannot create the encryption key file {path}: {exc}") from exc
    return True


def _read_key_file(path: Path) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the encryption key file {path}: {exc}") from exc
    # Like ssh with private keys: a key others can read protects nothing.
    if mode & 0o077:
        raise ConfigError(
            f"the encryption key file {path} is accessible by other users (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )
    key = _decode_base64_key(text.strip())
    if key is None:
        raise ConfigError(
            f"the encryption key file {path} does not hold a base64 32-byte key; restore it "
            "from your backup (credentials stored with the lost key cannot be decrypted)"
        )
    return key
