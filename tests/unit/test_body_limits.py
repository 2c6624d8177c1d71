"""REST body limits without a server: gzip is inflated only up to --rest_api_max_body_bytes."""

import gzip
import zlib

import pytest

from core.errors import AspireError, BodyTooLarge
from deployments.router.tfs_rest import gunzip_limited


def test_gzip_within_the_limit_round_trips_including_several_members():
    assert gunzip_limited(gzip.compress(b"x" * 1000), 1000) == b"x" * 1000
    assert gunzip_limited(gzip.compress(b"ab") + gzip.compress(b"cd"), 4) == b"abcd"


def test_gzip_bomb_stops_at_the_limit(monkeypatch):
    bomb = gzip.compress(bytes(100 * 1024 * 1024))  # 100 MiB of zeros in about 100 KiB
    assert len(bomb) < 200 * 1024
    inflated = []
    real = zlib.decompressobj

    def watching(*args):  # record how much was ever inflated
        obj = real(*args)

        class Probe:
            def __getattr__(self, name):
                return getattr(obj, name)

            def decompress(self, data, max_length=0):
                out = obj.decompress(data, max_length)
                inflated.append(len(out))
                return out

        return Probe()

    monkeypatch.setattr(zlib, "decompressobj", watching)
    with pytest.raises(BodyTooLarge) as info:
        gunzip_limited(bomb, 1024 * 1024)
    assert info.value.http == 413 and info.value.code == "RESOURCE_EXHAUSTED"
    assert info.value.message == (
        "Decompressed request body is larger than the limit of 1048576 bytes "
        "(--rest_api_max_body_bytes)"
    )
    assert sum(inflated) <= 1024 * 1024 + 1


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"not gzip at all", "Failed to decompress gzip request body"),
        (gzip.compress(b"hello")[:-6], "ends before the end of its gzip stream"),
    ],
)
def test_broken_gzip_is_invalid_argument(body, fragment):
    with pytest.raises(AspireError) as info:
        gunzip_limited(body, 1024)
    assert info.value.code == "INVALID_ARGUMENT" and fragment in info.value.message
