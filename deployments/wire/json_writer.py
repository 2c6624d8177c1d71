"""RapidJSON 1.1.0's writer as TF Serving's REST API shows it: JsonValueToDebugString.

TF Serving echoes request values back in error messages through JsonValueToDebugString
(PrettyWriter, single-line arrays, cut once 256 bytes are written), with numbers written as
RapidJSON's Writer does: Grisu2 digits laid out by Prettify (ported in `_rj_dtoa`).
`debug_string(value)` reproduces those bytes. The parser is in deployments/wire/json_parser.py.
"""

from __future__ import annotations

import json
import math
import re
import struct
from fractions import Fraction

_MAX_DEBUG_BYTES = 256
DBL_MAX = 1.7976931348623157e308


# ----------------------------------------------------------- debug strings (JsonValueToDebugString)
_ESC = {c: b"\\u%04X" % c for c in range(32)}
_ESC.update({8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r", 34: b'\\"', 92: b"\\\\"})
_NEEDS_ESC = re.compile(rb'[\x00-\x1f"\\]')


def _rj_string_bytes(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogateescape")
    return b'"' + _NEEDS_ESC.sub(lambda m: _ESC[m.group()[0]], raw) + b'"'


def _cached_power(index: int) -> tuple[int, int]:  # 10**(8 * index - 348) as a rounded 64-bit DiyFp
    v = Fraction(10) ** (8 * index - 348)
    e = v.numerator.bit_length() - v.denominator.bit_length() - 64
    while v / Fraction(2) ** e >= 2**64:
        e += 1
    while v / Fraction(2) ** e < 2**63:
        e -= 1
    return round(v / Fraction(2) ** e), e


_CACHED_POWERS = [_cached_power(i) for i in range(87)]
_M64 = 2**64 - 1


def _grisu2(value: float) -> tuple[str, int]:
    """RapidJSON internal::Grisu2 (digits, K); not always the shortest or closest digits, hence
    ported."""
    bits = int.from_bytes(struct.pack("<d", value), "little")
    f, e = (bits & (2**52 - 1)) | (2**52 if bits >> 52 else 0), max(bits >> 52, 1) - 1075
    pf, pe = (f << 1) + 1, e - 1
    while not pf & 2**53:
        pf, pe = pf << 1, pe - 1
    pf, pe = pf << 10, pe - 10
    mf, me = ((f << 2) - 1, e - 2) if f == 2**52 else ((f << 1) - 1, e - 1)
    mf <<= me - pe
    dk = (-61 - pe) * 0.30102999566398114 + 347
    k = int(dk) + (dk - int(dk) > 0)
    index = (k >> 3) + 1
    cf, ce = _CACHED_POWERS[index]
    big_k = 348 - 8 * index

    def times_c(x):  # DiyFp multiply keeping the rounded high 64 bits
        p = x * cf
        return (p >> 64) + ((p >> 63) & 1)

    shift = 64 - f.bit_length()
    w, wp, wm = times_c(f << shift), times_c(pf) - 1, times_c(mf) + 1
    one_e = -(pe + ce + 64)
    delta, wp_w = wp - wm, wp - w
    p1, p2 = wp >> one_e, wp & ((1 << one_e) - 1)
    kappa = len(str(p1))
    digits: list[int] = []

    def grisu_round(rest, ten_kappa, wp_w):
        while (
            rest < wp_w
            and delta - rest >= ten_kappa
            and (rest + ten_kappa < wp_w or wp_w - rest > rest + ten_kappa - wp_w)
        ):
            digits[-1] -= 1
            rest += ten_kappa

    while kappa > 0:
        d, p1 = divmod(p1, 10 ** (kappa - 1))
        if d or digits:
            digits.append(d)
        kappa -= 1
        rest = (p1 << one_e) + p2
        if rest <= delta:
            grisu_round(rest, (10**kappa << one_e) & _M64, wp_w)
            return "".join(map(str, digits)), big_k + kappa
    while True:
        p2, delta = (p2 * 10) & _M64, (delta * 10) & _M64
        d = p2 >> one_e
        if d or digits:
            digits.append(d)
        p2 &= (1 << one_e) - 1
        kappa -= 1
        if p2 < delta:
            grisu_round(p2, 1 << one_e, (wp_w * (10**-kappa if -kappa < 9 else 0)) & _M64)
            return "".join(map(str, digits)), big_k + kappa


def _rj_dtoa(d: float) -> str:
    """RapidJSON Writer::Double text: Grisu2 digits laid out by internal::Prettify."""
    if d == 0:
        return "-0.0" if math.copysign(1.0, d) < 0 else "0.0"
    digits, k = _grisu2(abs(d))
    n = len(digits)
    kk = n + k
    if 0 <= k and kk <= 21:
        s = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        s = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        s = "0." + "0" * -kk + digits
    elif n == 1:
        s = f"{digits}e{kk - 1}"
    else:
        s = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return ("-" if d < 0 else "") + s


def _rj_scalar(v) -> bytes | None:
    """None where RapidJSON's Writer refuses the value (NaN/Inf without kWriteNanAndInfFlag)."""
    if v is None or v is True or v is False:
        return json.dumps(v).encode()
    if isinstance(v, str):
        return _rj_string_bytes(v)
    if type(v) is int and -(2**63) <= v < 2**64:
        return str(v).encode()
    v = (
        float(v) if type(v) is float or abs(v) <= DBL_MAX else math.inf
    )  # other ints are doubles to RapidJSON
    return _rj_dtoa(v).encode() if math.isfinite(v) else None


def _events(v):
    if isinstance(v, dict):
        yield "{", None
        for k, x in v.items():
            yield "k", k
            yield from _events(x)
        yield "}", None
    elif isinstance(v, list):
        yield "[", None
        for x in v:
            yield from _events(x)
        yield "]", None
    else:
        yield "v", v


def debug_string(value) -> str:
    """TF Serving's JsonValueToDebugString: PrettyWriter with kFormatSingleLineArray, stopped at the
    first event that starts once 256 bytes are written (the last token may overrun; closing brackets
    are then missing)."""
    return _debug_bytes(value).decode("utf-8", "replace")


def _debug_bytes(value) -> bytes:
    buf = bytearray()
    levels: list[list] = []  # [in_array, value_count] per open container
    for kind, x in _events(value):
        if len(buf) >= _MAX_DEBUG_BYTES:
            break
        if kind in "}]":
            _, count = levels.pop()
            if kind == "}" and count:
                buf += b"\n" + b" " * (4 * len(levels))
            buf += kind.encode()
            continue
        if levels:  # PrettyWriter::PrettyPrefix
            lv = levels[-1]
            if lv[0]:
                buf += b", " if lv[1] else b""
            else:
                buf += (b",\n" if lv[1] % 2 == 0 else b": ") if lv[1] else b"\n"
                if lv[1] % 2 == 0:
                    buf += b" " * (4 * len(levels))
            lv[1] += 1
        if kind in "{[":
            levels.append([kind == "[", 0])
            buf += kind.encode()
        elif kind == "k":
            buf += _rj_string_bytes(x)
        else:
            tok = _rj_scalar(x)
            if tok is None:  # the prefix is already out; Accept() stops here
                break
            buf += tok
    return bytes(buf)
