"""RapidJSON 1.1.0 emulation: the parser behaviour that TF Serving's REST API exposes to
clients.

TF Serving parses request bodies with RapidJSON 1.1.0 (kParseIterativeFlag | kParseNanAndInfFlag |
kParseStopWhenDoneFlag) and echoes values back through JsonValueToDebugString (PrettyWriter,
single-line arrays, cut once 256 bytes are written). Clients see both in error messages, so this
module reproduces them byte for byte:
* `_parse_value(body)` returns the document as Python values (see tfs_json's contract) or raises
  an AspireError `JSON Parse error: <RapidJSON message> at offset: <byte offset>` with RapidJSON's
  exact message and offset. Bodies that json.loads reads the same way take the C-speed path; the
  rest go through `_rj_parse`, a port of RapidJSON's iterative parser and number parsing.
* The writer side (JsonValueToDebugString, echoed in error messages) is
  deployments/wire/json_writer.py.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from core.errors import AspireError, invalid_argument
from deployments.wire.json_writer import DBL_MAX

# -------------------------------------------------------------- parsing (RapidJSON 1.1.0 emulation)
_M_EMPTY, _M_INVALID = "The document is empty.", "Invalid value."
_M_NAME, _M_COLON = (
    "Missing a name for object member.",
    "Missing a colon after a name of object member.",
)
_M_CURLY, _M_SQUARE = (
    "Missing a comma or '}' after an object member.",
    "Missing a comma or ']' after an array element.",
)
_M_HEX, _M_SURROGATE = (
    "Incorrect hex digit after \\u escape in string.",
    "The surrogate pair in string is invalid.",
)
_M_ESCAPE, _M_QUOTE = (
    "Invalid escape character in string.",
    "Missing a closing quotation mark in string.",
)
_M_BIG, _M_FRAC, _M_EXP = (
    "Number too big to be stored in double.",
    "Miss fraction part in number.",
    "Miss exponent in number.",
)
_START, _FINISH, _OBJ, _KEY, _KV, _MVAL, _MDELIM, _ARR, _ELEM, _EDELIM = range(10)
_AFTER_VALUE = {_START: _FINISH, _KV: _MVAL, _ARR: _ELEM, _EDELIM: _ELEM}
_STATE_ERROR = {
    _START: _M_EMPTY,
    _OBJ: _M_NAME,
    _MDELIM: _M_NAME,
    _KEY: _M_COLON,
    _MVAL: _M_CURLY,
    _KV: _M_INVALID,
    _ARR: _M_INVALID,
    _EDELIM: _M_INVALID,
    _ELEM: _M_SQUARE,
}
_SIMPLE_ESC = {
    ord(k): v
    for k, v in {
        '"': b'"',
        "\\": b"\\",
        "/": b"/",
        "b": b"\b",
        "f": b"\f",
        "n": b"\n",
        "r": b"\r",
        "t": b"\t",
    }.items()
}
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]+')
_DIGIT = re.compile(rb"[0-9]*")
# A run of array elements that are plain numbers RapidJSON cannot reject, each followed by a comma.
_NUMBER_RUN = re.compile(
    rb"(?:-?(?:0|[1-9][0-9]{0,299})(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,2})?[ \t\n\r]*,[ \t\n\r]*)+"
)
# Where Python's json and RapidJSON could disagree on a body that Python accepts
# (see _python_disagrees).
_CLASSES = bytes(0x31 if 48 <= c <= 57 else 0x65 if c in b"eE+" else 0x30 for c in range(256))
_NUMBER_BEFORE = re.compile(rb"[\[,:][ \t\n\r]*(-?[0-9]*\.?[0-9]*[eE]\+?)\Z")
_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*\\u[dD]([89a-fA-F])[0-9a-fA-F]{2}"
)  # unescaped backslash
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# Aspire's limit on how deeply arrays and objects nest (RapidJSON's iterative parser has none).
# A tensor has at most 64 dimensions (tfs_json), plus the object and "instances"/"inputs"
# levels around it, so no valid request comes near; a 500,000-deep body (CVE-2025-0649's shape)
# is refused after reading 256 brackets instead of being built.
MAX_JSON_DEPTH = 256
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _perr(msg: str, offset: int) -> AspireError:
    return invalid_argument(f"JSON Parse error: {msg} at offset: {offset}")


def _hex4(b: bytes, j: int, esc: int) -> tuple[int, int]:
    digits = b[j : j + 4]
    if len(digits) < 4 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
        raise _perr(_M_HEX, esc)
    return int(digits, 16), j + 4


def _rj_string(b: bytes, j: int) -> tuple[str, int]:
    out, j, n = bytearray(), j + 1, len(b)
    while True:
        m = _PLAIN.match(b, j)
        if m:
            out += m.group()
            j = m.end()
        c = b[j] if j < n else 0
        if c == 0x22:
            return out.decode("utf-8", "surrogateescape"), j + 1
        if c != 0x5C:  # NUL ends the stream; other control bytes must be escaped
            raise _perr(_M_QUOTE if c == 0 else _M_ESCAPE, j)
        esc, e = j, (b[j + 1] if j + 1 < n else 0)
        if e in _SIMPLE_ESC:
            out += _SIMPLE_ESC[e]
            j += 2
            continue
        if e != 0x75:
            raise _perr(_M_ESCAPE, esc)
        cp, j = _hex4(b, j + 2, esc)
        if 0xD800 <= cp <= 0xDBFF:  # a lone low surrogate is accepted as-is, as in 1.1.0
            if b[j : j + 2] != b"\\u":
                raise _perr(_M_SURROGATE, esc)
            lo, j = _hex4(b, j + 2, esc)
            if not 0xDC00 <= lo <= 0xDFFF:
                raise _perr(_M_SURROGATE, esc)
            cp = ((cp - 0xD800) << 10 | (lo - 0xDC00)) + 0x10000
        out += chr(cp).encode("utf-8", "surrogatepass")


def _rj_number(b: bytes, i: int):
    """Reader::ParseNumber (normal precision): same acceptance, errors and offsets; the value is
    correctly rounded."""
    n, start = len(b), i

    def pk(j):
        return b[j] if j < n else 0

    def digits_at(j):
        m = _DIGIT.match(b, j)
        assert m is not None  # [0-9]* matches anywhere
        return m.group(), m.end()

    minus = pk(i) == 0x2D
    i += minus
    int_digits, acc, sig, d = b"", 0, 0, 0.0
    use_double = nan_inf = has_frac = has_exp = False
    c = pk(i)
    if 0x30 <= c <= 0x39:
        int_digits, i = digits_at(i) if c != 0x30 else (b"0", i + 1)
        limit = 2**63 if minus else 2**64 - 1
        kept = (
            next(
                (k for k in range(1, min(len(int_digits), 21) + 1) if int(int_digits[:k]) > limit),
                0,
            )
            - 1
        )
        if kept < 0:  # fits (u)int64
            acc, sig = int(int_digits), len(int_digits) - 1
        else:  # RapidJSON goes on in a double and refuses to pass DBL_MAX / 10
            use_double, sig, d = True, kept - 1, float(int(int_digits[:kept]))
            for ch in int_digits[kept:]:
                if d >= 1.7976931348623157e307:
                    raise _perr(_M_BIG, start)
                d = d * 10 + (ch - 48)
    elif c in (0x49, 0x4E):  # Consume() chains: 'N','a','N' else 'I','n','f'[,'i','n','i','t','y']
        nan_inf = True
        if b[i : i + 3] == b"NaN":
            d, i = math.nan, i + 3
        else:
            i += (c == 0x4E) + (c == 0x4E and pk(i + 1) == 0x61)
            for word in (b"Inf", b"inity"):
                if word == b"inity" and pk(i) != 0x69:
                    break
                for ch in word:
                    if pk(i) != ch:
                        raise _perr(_M_INVALID, i)
                    i += 1
            d = -math.inf if minus else math.inf
    else:
        raise _perr(_M_INVALID, i)
    exp_frac, frac_digits = 0, b""
    if pk(i) == 0x2E:
        has_frac = True
        if not 0x30 <= pk(i + 1) <= 0x39:
            raise _perr(_M_FRAC, i + 1)
        frac_digits, i = digits_at(i + 1)
        rest = frac_digits
        if not use_double:  # up to 2**53 in the integer accumulator
            taken = 0
            for ch in frac_digits:
                if acc > 2**53 - 1:
                    break
                acc, taken = acc * 10 + ch - 48, taken + 1
                sig += acc != 0
            exp_frac, rest, d, use_double = -taken, frac_digits[taken:], float(acc), True
        for ch in rest:  # then at most 17 significant digits count
            if sig < 17:
                d = d * 10.0 + ch - 48
                exp_frac -= 1
                sig += d > 0
    exp = 0
    if pk(i) in (0x65, 0x45):
        has_exp = True
        exp_minus = pk(i + 1) == 0x2D
        i += 1 + (pk(i + 1) in (0x2B, 0x2D))
        if not 0x30 <= pk(i) <= 0x39:
            raise _perr(_M_EXP, i)
        text, i = digits_at(i)
        if exp_minus:
            exp = -int(text.lstrip(b"0")[:12] or b"0")  # leading zeros add nothing (RapidJSON)
        else:
            max_exp, exp = 308 - exp_frac, text[0] - 48
            for ch in text[1:]:
                exp = exp * 10 + ch - 48
                if exp > max_exp:
                    raise _perr(_M_BIG, start)
    if has_frac or has_exp:
        mag = float(f"{int(int_digits or b'0')}.{(frac_digits or b'0').decode()}e{exp}")
        return (-mag if minus else mag), i
    if nan_inf:
        return d, i
    value: float = int(int_digits)
    if (
        value > DBL_MAX
    ):  # no Python float holds it (float() raises); RapidJSON keeps the finite d accumulated above
        value = d
    return (-value if minus else value), i


def _rj_value(b: bytes, i: int):
    c = b[i]
    if c == 0x22:
        return _rj_string(b, i)
    for word, value in ((b"null", None), (b"true", True), (b"false", False)):
        if c == word[0]:
            for k in range(1, len(word)):
                if b[i + k : i + k + 1] != word[k : k + 1]:
                    raise _perr(_M_INVALID, i + k)
            return value, i + len(word)
    return _rj_number(b, i)


def _rj_parse(b: bytes, i: int):
    """GenericReader::IterativeParse with kParseStopWhenDoneFlag; returns the root value or
    raises."""
    n, state, root = len(b), _START, None
    stack: list[list[Any]] = []  # [container, state after it, pending object key] per level

    def ws(j):
        while j < n and b[j] in b" \t\n\r":
            j += 1
        return j

    def attach(v):
        nonlocal root
        if not stack:
            root = v
        elif isinstance(stack[-1][0], list):
            stack[-1][0].append(v)
        else:
            stack[-1][0][stack[-1][2]] = v

    def close():
        frame = stack.pop()
        attach(frame[0])
        return frame[1]

    i = ws(i)
    while i < n and b[i]:
        c = b[i]
        run = _NUMBER_RUN.match(b, i) if state in (_ARR, _EDELIM) else None
        if run:  # only speeds up reaching an error deep inside a large numeric body
            stack[-1][0].extend(json.loads(b"[" + run.group().rstrip(b" \t\n\r,") + b"]"))
            state, i = _EDELIM, run.end()
            continue
        if state in _AFTER_VALUE:
            if c in (0x5B, 0x7B):
                if len(stack) >= MAX_JSON_DEPTH:
                    raise invalid_argument(
                        f"JSON Parse error: arrays and objects nest deeper than "
                        f"{MAX_JSON_DEPTH} levels at offset: {i}"
                    )
                stack.append([[] if c == 0x5B else {}, _AFTER_VALUE[state], None])
                state, i = (_ARR if c == 0x5B else _OBJ), i + 1
            elif c == 0x5D and state == _ARR:
                state, i = close(), i + 1
            elif c in b"]},:":
                raise _perr(_STATE_ERROR[state], i)
            else:
                v, i = _rj_value(b, i)
                state = _AFTER_VALUE[state]
                attach(v)
        elif state in (_OBJ, _MDELIM):
            if c == 0x22:
                stack[-1][2], i = _rj_string(b, i)
                state = _KEY
            elif c == 0x7D and state == _OBJ:
                state, i = close(), i + 1
            else:
                raise _perr(_M_NAME, i)
        elif c == {_KEY: 0x3A, _MVAL: 0x2C, _ELEM: 0x2C}[state]:
            state, i = {_KEY: _KV, _MVAL: _MDELIM, _ELEM: _EDELIM}[state], i + 1
        elif c == {_KEY: None, _MVAL: 0x7D, _ELEM: 0x5D}[state]:
            state, i = close(), i + 1
        else:
            raise _perr(_STATE_ERROR[state], i)
        if state == _FINISH:
            return root
        i = ws(i)
    raise _perr(_STATE_ERROR[state], i)


def _python_disagrees(body: bytes) -> bool:
    """True when json.loads may accept what RapidJSON rejects or decodes differently: a positive
    exponent of 3+ digits that overflows under RapidJSON's own rule, 300+ digit runs, \\u escapes of
    unpaired surrogates. Each test is a C-speed scan; only the rare hits are looked at closely."""
    classes = body.translate(_CLASSES)
    if b"1" * 300 in classes:
        return True
    pos = classes.find(b"e111")
    while pos >= 0:
        m = _NUMBER_BEFORE.search(body, max(0, pos - 700), pos + 1)
        if m:
            try:
                _rj_number(body, m.start(1))
            except AspireError:
                return True
        pos = classes.find(b"e111", pos + 1)
    if b"\\u" in body:
        escapes = list(_SURROGATE.finditer(body))
        for k, m in enumerate(escapes):
            high = m.group(1) in b"89abAB"
            mate = (
                (escapes[k + 1] if k + 1 < len(escapes) else None)
                if high
                else escapes[k - 1]
                if k
                else None
            )
            if (
                mate is None
                or (mate.start() != m.end() if high else mate.end() != m.start())
                or ((mate.group(1) in b"89abAB") == high)
            ):
                return True
    return False


def _may_nest_too_deep(body: bytes) -> bool:
    """True when the body's brackets, counted as if none sat inside a string, pass
    MAX_JSON_DEPTH. A C-speed count rules most bodies out; the exact parser decides the rest."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for c in body.translate(None, _NOT_BRACKETS):
        if c in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _parse_value(body: bytes):
    start = 0
    for bom in (0xEF, 0xBB, 0xBF):  # EncodedInputStream<UTF8> drops each BOM byte that is present
        if start < len(body) and body[start] == bom:
            start += 1
    if not _python_disagrees(body) and not _may_nest_too_deep(body):
        text = body[start:].decode("utf-8", "surrogateescape")
        try:
            blank = _WS.match(text)
            assert blank is not None  # [ \t\n\r]* matches anywhere
            doc, _ = _DECODER.raw_decode(text, blank.end())
            if type(doc) not in (
                int,
                float,
            ):  # a root number may end in what RapidJSON rejects ("1.", "2e")
                return doc
        except (ValueError, RecursionError):
            pass
    return _rj_parse(body, start)
