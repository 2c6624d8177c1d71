"""The rule for model names and version labels that requests carry (REST path, gRPC ModelSpec).

Aspire never builds a file-system path from a request's model name: a name is only a key into
the serving map and the manager's streams, and each model's files live under the base path its
configuration gives (`--model_base_path`, `--model_config_file`, a reload config). Requests name
models; they never name directories. So a name such as `../../etc` cannot reach a file even
without this rule. The rule is defence in depth: a name that *could* mean a path, or that cannot
be shown safely in logs, status pages and metrics labels, is refused at the edge with 400 /
INVALID_ARGUMENT before anything looks it up, and the refusal is the same over REST and gRPC.

`check_name(value, what)` refuses, after percent-decoding (REST) and on the string as sent (gRPC):

1. `.` and `..` (` ..` and `.. `, which Triton trims into `..`, fall under rule 5).
2. Anything containing `/` or `\\`: a path separator on some file system.
3. The same after NFKC normalisation, so fullwidth and compatibility forms of dot and slash that
   a later normaliser (a file system, an object store, a tool) would fold into them count as
   them: `U+FF0E U+FF0E` and `U+2025` are `..`, `U+FF0F` is `/`, `U+FF3C` is `\\`. A few slash
   look-alikes that NFKC leaves alone (`U+2215`, `U+2044`, `U+29F8`, `U+2216`, `U+29F9`, and the
   combining solidus overlays) are refused too: they exist to look like a separator.
4. Characters that are not printable (`str.isprintable`): NUL and the other C0 controls, DEL, C1
   controls, format characters such as zero-width spaces, line and paragraph separators,
   unassigned code points. These hide or fake text in logs and terminals.
5. Leading or trailing whitespace: never part of a real name, and stripped by some tools.
6. A leading `~`: a home directory to anything that expands user paths (a shell, `expanduser`,
   an operator's script building a path from a model name). No file system gives it that meaning,
   but no real model name starts with it, so refusing costs nothing.
7. More than 256 characters.

Names that only look odd are valid and reach the normal lookup, which answers 404 / NOT_FOUND for
an unknown model: `...`, `model..1`, `..my_model`, `a.b`, names with inner spaces or non-ASCII
letters. The message echoes at most 64 characters of the refused value, with every character
outside printable ASCII (and the backslash) escaped, so the answer never carries control bytes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from core.errors import invalid_argument

MAX_NAME_CHARS = 256
ECHO_CHARS = 64
# Separator look-alikes that NFKC does not fold into "/" or "\".
SEPARATOR_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u2216\u29f9\u0337\u0338")


def escape(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` cut to `limit` characters, printable ASCII kept and everything else escaped."""
    out = []
    for ch in value[:limit]:
        code = ord(ch)
        if 0x20 <= code < 0x7F and ch != "\\":
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out) + ("..." if len(value) > limit else "")


def why_invalid(value: str) -> str | None:
    """The reason `value` is refused as a model name or label, or None when it is valid."""
    if len(value) > MAX_NAME_CHARS:
        return f"longer than {MAX_NAME_CHARS} characters"
    if not value.isprintable():
        return "contains a control or other non-printable character"
    if value != value.strip():
        return "starts or ends with whitespace"
    folded = unicodedata.normalize("NFKC", value)
    if value in (".", "..") or folded in (".", ".."):
        return "is a relative path component"
    if any(sep in v for v in (value, folded) for sep in "/\\") or SEPARATOR_LOOKALIKES & set(value):
        return "contains a path separator"
    if value.startswith("~") or folded.startswith("~"):
        return "starts with '~'"
    return None


def check_name(value: str, what: str = "model name") -> str:
    """`value` if it is a valid model name (or label, with `what="model version label"`);
    else INVALID_ARGUMENT `Invalid <what>: <escaped value> (<reason>)`."""
    reason = why_invalid(value)
    if reason is not None:
        raise invalid_argument(f"Invalid {what}: '{escape(value)}' ({reason})")
    return value


# --- names Aspire gives its own parts on Ray --------------------------------------------------
NAMESPACE = "aspire"  # the Ray namespace of the manager actor and of the GCS state keys
MANAGER_NAME = "aspire_manager"  # the manager actor's name in NAMESPACE
APP_PREFIX = "aspire-servable-"  # every version's Serve application starts with it


def app_name(name: str, version: int) -> str:
    """A Serve application name for (name, version): readable, unique even for odd model names."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{APP_PREFIX}{safe}-{digest}-v{version}"
