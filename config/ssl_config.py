"""TF Serving's `--ssl_config_file`: a text-format `tensorflow.serving.SSLConfig`.

    server_key: "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----\\n"
    server_cert: "-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----\\n"
    custom_ca: "-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----\\n"
    client_verify: true

Contract:
1. `load_ssl_config(path)` -> frozen `SslSettings` (the PEM bytes, client_verify, and every file it
   read, for change detection), or `SslConfigError` whose message names the config file and, for
   a path value, the PEM file.
2. Fields as ts/config/ssl_config.proto: `server_key` (PEM private key), `server_cert` (PEM
   certificate, or a chain, leaf first), `custom_ca` (PEM CA certificates, optional),
   `client_verify` (require client certificates signed by custom_ca).
3. Aspire extension: a value that does not start with `-----BEGIN` is a path to a PEM file (what
   Kubernetes secrets and cert-manager give); a relative one is taken from the config file's
   directory.
4. Everything is checked at load: the text parses (TF's `Invalid protobuf file: '<path>'` and the
   parser's line:column), key and certificate are present, load and match, custom_ca loads,
   client_verify has a custom_ca. TF Serving checks none of it before a client's handshake fails.
5. `server_context(settings)`: the ssl.SSLContext a REST port serves (TLS 1.2 and later; client
   certificates required and verified against custom_ca when client_verify). The key is handed to
   OpenSSL through an in-memory file (memfd), never written to disk.

The message class is built in a private descriptor pool from ssl_config.proto (field numbers 1-4
as there): tensorflow-serving-api does not ship ssl_config_pb2.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

from config.model_config import read_proto_text
from core.errors import AspireError

PEM_MARKER = "-----BEGIN"


class SslConfigError(ValueError):
    """An SSL config (or a PEM file it names) that cannot be served; the message says which."""


@dataclass(frozen=True)
class SslSettings:
    """What an SSLConfig file holds, with path values read; `files`: the config file and the PEM
    files it names, absolute (a change to any of them is a change of settings)."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes = b""
    client_verify: bool = False
    files: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the key, in a log line or a traceback
        return f"SslSettings(files={self.files!r}, client_verify={self.client_verify})"


def _ssl_config_class() -> type[Message]:
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/ssl_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    F = descriptor_pb2.FieldDescriptorProto
    message = proto.message_type.add(name="SSLConfig")
    for name, number, kind in (
        ("server_key", 1, F.TYPE_STRING),
        ("server_cert", 2, F.TYPE_STRING),
        ("custom_ca", 3, F.TYPE_STRING),
        ("client_verify", 4, F.TYPE_BOOL),
    ):
        message.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")
    )


SSLConfigProto = _ssl_config_class()


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read `data` from: an anonymous in-memory file where Linux has them,
    else a private temporary file removed on exit."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("aspire-tls", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="aspire-tls-") as folder:  # mode 0700
        path = os.path.join(folder, "pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(data)
        yield path


def _no_passphrase() -> bytes:
    raise SslConfigError("the key is encrypted; give it unencrypted (openssl pkey -in k -out k2)")


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    with _pem_file(cert) as cert_path, _pem_file(key) as key_path:
        ctx.load_cert_chain(cert_path, key_path, password=_no_passphrase)


def _load_cas(ctx: ssl.SSLContext, pem: bytes) -> None:
    ctx.load_verify_locations(cadata=pem.decode("ascii"))  # str: PEM (bytes would be DER)


def server_context(settings: SslSettings) -> ssl.SSLContext:
    """The REST port's context for `settings` (already checked by load_ssl_config)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain(ctx, settings.server_cert, settings.server_key)
    if settings.custom_ca:
        _load_cas(ctx, settings.custom_ca)
    if settings.client_verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Reader:
    """Reads one SSLConfig file's values, naming the file (and the PEM file) in every error."""

    def __init__(self, path: str):
        self.path = path
        self.folder = os.path.dirname(path)
        self.files = [path]

    def error(self, message: str) -> SslConfigError:
        return SslConfigError(f"SSL config file '{self.path}': {message}")

    def value(self, field: str, text: str) -> tuple[bytes, str]:
        """(PEM bytes, how errors name where they came from) of one field."""
        if text.lstrip().startswith(PEM_MARKER):
            return text.encode("utf-8"), f"{field} (inline)"
        pem = os.path.abspath(os.path.join(self.folder, text.strip()))
        try:
            with open(pem, "rb") as f:
                data = f.read(1024 * 1024 + 1)
        except OSError as exc:
            raise self.error(f"{field}: cannot read '{pem}': {exc.strerror or exc}") from None
        except ValueError:  # open() refuses a path with a NUL byte
            raise self.error(
                f"{field}: cannot read {pem!r}: a path cannot hold a NUL byte"
            ) from None
        if len(data) > 1024 * 1024:
            raise self.error(f"{field}: '{pem}' is larger than 1 MiB: not a PEM file")
        self.files.append(pem)
        return data, f"{field} ('{pem}')"

    def check_pem(self, data: bytes, where: str, what: str) -> None:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"{where} is not PEM text: it holds non-ASCII bytes") from None
        if PEM_MARKER not in text:
            raise self.error(f"{where} holds no PEM block ({what})")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    return str(exc)


def load_ssl_config(path: str) -> SslSettings:
    """The settings of SSLConfig file `path`, every part checked (see the module's contract)."""
    path = os.path.abspath(path)
    reader = _Reader(path)
    try:
        text = read_proto_text(path)
    except AspireError as err:
        raise SslConfigError(f"cannot read SSL config file: {err.message}") from None
    proto = SSLConfigProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise SslConfigError(f"Invalid protobuf file: '{path}': {err}") from None
    for field in ("server_key", "server_cert"):
        if not getattr(proto, field).strip():
            raise reader.error(f"{field} is missing: TLS needs the server's key and certificate")
    key, key_at = reader.value("server_key", proto.server_key)
    cert, cert_at = reader.value("server_cert", proto.server_cert)
    ca, ca_at = reader.value("custom_ca", proto.custom_ca) if proto.custom_ca.strip() else (b"", "")
    if proto.client_verify and not ca:
        raise reader.error(
            "client_verify is true but custom_ca is empty: client certificates are verified "
            "against custom_ca"
        )
    reader.check_pem(cert, cert_at, "a certificate")
    reader.check_pem(key, key_at, "a private key")
    try:  # the certificate alone first, so that a failure below is the key's
        _load_cas(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert)
    except (ssl.SSLError, ValueError) as exc:
        raise reader.error(f"{cert_at} is not a PEM certificate: {_reason(exc)}") from None
    try:
        _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    except SslConfigError as exc:
        raise reader.error(f"{key_at}: {exc}") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            raise reader.error(f"{key_at} does not match the certificate in {cert_at}") from None
        raise reader.error(
            f"{key_at} is not a PEM private key (or does not go with {cert_at}): {_reason(exc)}"
        ) from None
    if ca:
        reader.check_pem(ca, ca_at, "CA certificates")
        try:
            _load_cas(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca)
        except (ssl.SSLError, ValueError) as exc:
            raise reader.error(f"{ca_at} is not a PEM certificate: {_reason(exc)}") from None
    return SslSettings(
        server_key=key,
        server_cert=cert,
        custom_ca=ca,
        client_verify=proto.client_verify,
        files=tuple(dict.fromkeys(reader.files)),
    )
