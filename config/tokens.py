"""Token files (--auth_token_file, --admin_token_file) and the digests that stand for their tokens.

The CLI reads each file once (`read_token`) and passes only `digest(token)` on: Serve
checkpoints a deployment's constructor arguments in the GCS, so the plaintext never leaves the
CLI's process. The routers hash a presented token the same way (deployments/router/auth.py).
"""

from __future__ import annotations

import hashlib
import logging
import os

log = logging.getLogger("aspire.auth")

MIN_TOKEN_CHARS = 16


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and the reason."""


def read_token(path: str) -> str:
    """The token in `path`, surrounding whitespace stripped. Raises TokenFileError when the file
    cannot be read, is empty, or holds characters a header value cannot carry."""
    try:
        with open(path, "rb") as f:
            raw = f.read(64 * 1024 + 1)
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if len(raw) > 64 * 1024:
        raise TokenFileError(f"token file {path} is larger than 64 KiB")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {path} holds non-ASCII bytes") from None
    if not token:
        raise TokenFileError(f"token file {path} is empty")
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise TokenFileError(
            f"token file {path} holds whitespace or control characters inside the token"
        )
    if len(token) < MIN_TOKEN_CHARS:
        log.warning(
            "the token in %s has %d characters; use a long random one (openssl rand -hex 32)",
            path,
            len(token),
        )
    if os.stat(path).st_mode & 0o077:
        log.warning("token file %s is readable by other users (chmod 600 it)", path)
    return token


def digest(token: str) -> str:
    """The SHA-256 hex digest that stands for `token` everywhere after the CLI."""
    # UTF-8, not a lossy codec: a presented "é" must not hash like a "?" in the real token
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
