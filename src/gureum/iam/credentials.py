"""Who may sign requests: the root key pair, and short-lived session keys for function instances.

Both live in the data directory as private (0600) files: `root-credentials.json` holds the root
pair, `master.key` the secret from which every session key is derived, so that session keys
never need to be stored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from gureum.errors import AuthError, ConfigurationError

ROOT_CREDENTIALS_FILE = "root-credentials.json"
MASTER_KEY_FILE = "master.key"
ROOT_PRINCIPAL = "root"

_MASTER_KEY_BYTES = 32
_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9]{3,128}")
_MIN_SECRET_LEN = 8
_MAX_CHECKED_TOKENS = 4096
_INVALID_TOKEN = "The security token included in the request is invalid."
_EXPIRED_TOKEN = "The security token included in the request is expired"


@dataclass(frozen=True)
class RootCredentials:
    """The account's all-powerful key pair (like an AWS root user, or MinIO's root user)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)  # keep it out of logs and tracebacks
    account_id: str


def load_or_create_root(
    data_dir: Path, *, access_key_id: str | None, secret_access_key: str | None
) -> tuple[RootCredentials, bool]:
    """Return the root credentials and whether this call created them.

    The file in `data_dir` always wins once it exists: keys offered later (e.g. changed
    environment variables) are validated but otherwise ignored, so restarting with different
    settings never locks out clients configured with the stored pair. On first start the offered
    pair is stored if given, else a fresh AWS-shaped pair and a random 12-digit account id.
    """
    offered = _validated_offer(access_key_id, secret_access_key)
    path = data_dir / ROOT_CREDENTIALS_FILE
    existing = _read_root(path)
    if existing is not None:
        return existing, False
    access_key_id, secret_access_key = offered or (_new_key_id("AKIA"), secrets.token_urlsafe(30))
    creds = RootCredentials(
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        account_id=str(1 + secrets.randbelow(9))
        + "".join(str(secrets.randbelow(10)) for _ in range(11)),
    )
    document = {
        "access_key_id": creds.access_key_id,
        "secret_access_key": creds.secret_access_key,
        "account_id": creds.account_id,
    }
    _ensure_private_dir(data_dir)
    if _create_private_file(path, json.dumps(document, indent=2).encode() + b"\n"):
        return creds, True
    # another process created it first; agree with it
    winner = _read_root(path)
    assert winner is not None
    return winner, False


def _validated_offer(
    access_key_id: str | None, secret_access_key: str | None
) -> tuple[str, str] | None:
    if access_key_id is None and secret_access_key is None:
        return None
    if access_key_id is None or secret_access_key is None:
        raise ConfigurationError(
            "root access key id and secret access key must be given together "
            "(GUREUM_ROOT_ACCESS_KEY_ID, GUREUM_ROOT_SECRET_ACCESS_KEY)"
        )
    if not _ACCESS_KEY_RE.fullmatch(access_key_id):
        raise ConfigurationError(
            "root access key id must be 3 to 128 letters and digits, "
            f"got {len(access_key_id)} characters"
        )
    if len(secret_access_key) < _MIN_SECRET_LEN:
        raise ConfigurationError(
            f"root secret access key must be at least {_MIN_SECRET_LEN} characters"
        )
    return access_key_id, secret_access_key


def _read_root(path: Path) -> RootCredentials | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    fields = ("access_key_id", "secret_access_key", "account_id")
    try:
        document = json.loads(raw)
        values = [document[name] for name in fields]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"{path} is not a valid root credentials file: {exc}") from None
    if not all(isinstance(value, str) and value for value in values):
        raise ConfigurationError(f"{path} is not a valid root credentials file: empty field")
    return RootCredentials(*values)


class SessionIssuer:
    """Issues and checks short-lived credentials (for function instances) without storing them: the
    secret is HMAC(master_key, access_key_id) and the session token is a MAC-protected blob naming
    account, principal and expiry.

    Tokens are `b64url(json{akid, acct, prin, exp}) + "." + b64url(HMAC-SHA256)`, unpadded.
    Secrets and token MACs use separate keys derived from the master key, so a secret can never
    double as a token MAC. Nothing can be revoked before it expires except by replacing the
    master key, which revokes everything.
    """

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) < _MASTER_KEY_BYTES:
            raise ValueError(f"master key must be at least {_MASTER_KEY_BYTES} bytes")
        self._secret_key = hmac.digest(master_key, b"gureum/session-secret/v1", hashlib.sha256)
        self._token_key = hmac.digest(master_key, b"gureum/session-token/v1", hashlib.sha256)
        # (access key id, token) -> (secret, account, principal, expiry) of tokens whose MAC
        # matched: a token is immutable, so only the expiry needs checking again
        self._checked: dict[tuple[str, str], tuple[str, str, str, float]] = {}

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SessionIssuer:
        """Use `data_dir/master.key`, creating 32 random bytes (mode 0600) if it is missing."""
        path = data_dir / MASTER_KEY_FILE
        if not path.exists():
            _ensure_private_dir(data_dir)
            _create_private_file(path, secrets.token_bytes(_MASTER_KEY_BYTES))
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path}: {exc}") from exc
        if len(key) != _MASTER_KEY_BYTES:
            raise ConfigurationError(
                f"{path} must hold exactly {_MASTER_KEY_BYTES} bytes, found {len(key)}"
            )
        return cls(key)

    def issue(
        self, account_id: str, principal: str, ttl_s: int = 43200, now: float | None = None
    ) -> tuple[str, str, str]:
        """Return fresh `(access_key_id, secret_access_key, session_token)` valid for ttl_s."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        now = time.time() if now is None else now
        access_key_id = _new_key_id("ASIA")
        claims = {"akid": access_key_id, "acct": account_id, "prin": principal}
        payload = json.dumps({**claims, "exp": int(now) + ttl_s}, separators=(",", ":"))
        body = _b64encode(payload.encode())
        token = f"{body}.{_b64encode(self._mac(body))}"
        return access_key_id, self._secret_for(access_key_id), token

    def check(
        self, access_key_id: str, session_token: str | None, now: float | None = None
    ) -> tuple[str, str, str]:
        """Return `(secret_access_key, account_id, principal)` for a key this issuer made.

        Raises AuthError 'UnrecognizedClientException' when the token is missing, forged or
        made for another key, and 'ExpiredTokenException' once it has expired.
        """
        now = time.time() if now is None else now
        checked = self._checked.get((access_key_id, session_token or ""))
        if checked is not None:
            secret, account_id, principal, expires = checked
            if now >= expires:
                raise AuthError(_EXPIRED_TOKEN, code="ExpiredTokenException")
            return secret, account_id, principal
        invalid = AuthError(_INVALID_TOKEN, code="UnrecognizedClientException")
        if not session_token:
            raise invalid
        body, sep, mac = session_token.partition(".")
        try:
            given_mac = _b64decode(mac)
        except ValueError:
            raise invalid from None
        if not sep or not hmac.compare_digest(given_mac, self._mac(body)):
            raise invalid
        claims = json.loads(_b64decode(body))  # the MAC matched, so we wrote this
        account_id, principal, expires = claims["acct"], claims["prin"], claims["exp"]
        if claims["akid"] != access_key_id:
            raise invalid
        if now >= expires:
            raise AuthError(_EXPIRED_TOKEN, code="ExpiredTokenException")
        result = (self._secret_for(access_key_id), str(account_id), str(principal))
        if len(self._checked) >= _MAX_CHECKED_TOKENS:
            self._checked.clear()
        self._checked[(access_key_id, session_token)] = (*result, expires)
        return result

    def _mac(self, body: str) -> bytes:
        return hmac.digest(self._token_key, body.encode(), hashlib.sha256)

    def _secret_for(self, access_key_id: str) -> str:
        digest = hmac.digest(self._secret_key, access_key_id.encode(), hashlib.sha256)
        return _b64encode(digest)[:40]


class KeyRing:
    """The `SecretLookup` for the gateway: the root pair plus session keys from one issuer."""

    def __init__(self, root: RootCredentials, sessions: SessionIssuer) -> None:
        self._root = root
        self._sessions = sessions

    def __call__(self, access_key_id: str, session_token: str | None) -> tuple[str, str, str]:
        """Return `(secret_access_key, account_id, principal)`; AuthError for unknown keys."""
        if access_key_id == self._root.access_key_id:
            if session_token is not None:
                # root keys are long-term keys; a token with them is a confused client
                raise AuthError(_INVALID_TOKEN, code="UnrecognizedClientException")
            return self._root.secret_access_key, self._root.account_id, ROOT_PRINCIPAL
        if access_key_id.startswith("ASIA"):
            return self._sessions.check(access_key_id, session_token)
        raise AuthError(_INVALID_TOKEN, code="UnrecognizedClientException")


def _new_key_id(prefix: str) -> str:
    # 10 random bytes are exactly 16 base32 characters, the length of AWS key ids' tails
    return prefix + base64.b32encode(secrets.token_bytes(10)).decode()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _ensure_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create data directory {path}: {exc}") from exc


def _create_private_file(path: Path, data: bytes) -> bool:
    """Atomically create `path` (mode 0600) holding `data`; False if it already existed.

    The content is written and fsynced under a temporary name first, then published with
    `os.link`, which (unlike rename) refuses to replace a file another process published
    meanwhile, so concurrent first starts agree on one set of keys.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
