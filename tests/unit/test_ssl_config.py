"""--ssl_config_file (config/ssl_config.py): TF Serving's SSLConfig text, inline PEM values and
path values, and every file that cannot be served refused at load with the file named."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from config.ssl_config import SslConfigError, SslSettings, load_ssl_config, server_context
from tests.support.certs import CertAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CertAuthority.create(folder, "ca")
    return folder, ca, ca.issue(folder, "server"), ca.issue(folder, "other")


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'


def write_config(folder: Path, name: str = "ssl.cfg", **fields) -> Path:
    lines = []
    for field, value in fields.items():
        lines.append(f"{field}: {str(value).lower() if isinstance(value, bool) else quoted(value)}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def refusal(path: Path) -> str:
    with pytest.raises(SslConfigError) as err:
        load_ssl_config(str(path))
    return str(err.value)


def test_inline_pem_values_load_as_tf_serving_writes_them(pki):
    folder, ca, server, _ = pki
    path = write_config(
        folder,
        server_key=server.key_pem(),
        server_cert=server.cert_pem(),
        custom_ca=ca.cert.read_text(),
        client_verify=True,
    )
    settings = load_ssl_config(str(path))
    assert settings == SslSettings(
        server_key=server.key.read_bytes(),
        server_cert=server.cert.read_bytes(),
        custom_ca=ca.cert.read_bytes(),
        client_verify=True,
        files=(str(path),),
    )


def test_path_values_are_read_and_listed_and_relative_ones_follow_the_config_file(pki):
    folder, ca, server, _ = pki
    path = write_config(
        folder, server_key=str(server.key), server_cert="server.crt", custom_ca=str(ca.cert)
    )
    settings = load_ssl_config(str(path))
    assert settings.server_key == server.key.read_bytes()
    assert settings.server_cert == server.cert.read_bytes()
    assert settings.custom_ca == ca.cert.read_bytes()
    assert settings.client_verify is False
    assert settings.files == (str(path), str(server.key), str(server.cert), str(ca.cert))


def test_the_key_never_shows_in_the_settings_repr(pki):
    folder, _, server, _ = pki
    settings = load_ssl_config(str(write_config(folder, server_key=server.key_pem(),
                                                server_cert=server.cert_pem())))  # fmt: skip
    assert "PRIVATE" not in repr(settings) and "PRIVATE" not in str(settings)


def test_the_rest_context_is_tls_1_2_and_later_and_verifies_clients_only_with_client_verify(pki):
    folder, ca, server, _ = pki
    plain = load_ssl_config(
        str(write_config(folder, server_key=str(server.key), server_cert=str(server.cert)))
    )
    mutual = load_ssl_config(
        str(
            write_config(
                folder,
                server_key=str(server.key),
                server_cert=str(server.cert),
                custom_ca=str(ca.cert),
                client_verify=True,
            )
        )
    )
    assert server_context(plain).minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(plain).verify_mode == ssl.CERT_NONE
    assert server_context(mutual).verify_mode == ssl.CERT_REQUIRED
    assert len(server_context(mutual).get_ca_certs()) == 1


def test_text_that_does_not_parse_is_refused_with_tf_servings_wording_and_line_and_column(pki):
    folder, _, server, _ = pki
    path = folder / "typo.cfg"
    path.write_text(f'server_key: "{server.key}"\nserver_certificate: "x"\n')
    message = refusal(path)
    assert message.startswith(f"Invalid protobuf file: '{path}': 2:1 : ")
    assert "server_certificate" in message


def test_a_missing_config_file_is_refused_with_its_name(tmp_path):
    assert str(tmp_path / "nope.cfg") in refusal(tmp_path / "nope.cfg")


@pytest.mark.parametrize("left_out", ["server_key", "server_cert"])
def test_a_config_without_key_or_certificate_is_refused_naming_the_field(pki, left_out):
    folder, _, server, _ = pki
    fields = {"server_key": str(server.key), "server_cert": str(server.cert)}
    del fields[left_out]
    path = write_config(folder, **fields)
    message = refusal(path)
    assert str(path) in message and f"{left_out} is missing" in message


def test_client_verify_without_custom_ca_is_refused(pki):
    folder, _, server, _ = pki
    path = write_config(
        folder, server_key=str(server.key), server_cert=str(server.cert), client_verify=True
    )
    message = refusal(path)
    assert str(path) in message and "client_verify is true but custom_ca is empty" in message


def test_a_key_that_does_not_match_the_certificate_is_refused_naming_both_files(pki):
    folder, _, server, other = pki
    path = write_config(folder, server_key=str(other.key), server_cert=str(server.cert))
    message = refusal(path)
    assert str(path) in message and "does not match" in message
    assert str(other.key) in message and str(server.cert) in message


def test_an_inline_key_that_does_not_match_is_refused_too(pki):
    folder, _, server, other = pki
    path = write_config(folder, server_key=other.key_pem(), server_cert=server.cert_pem())
    message = refusal(path)
    assert str(path) in message and "server_key (inline) does not match" in message


def test_an_unreadable_pem_path_is_refused_naming_config_and_pem_file(pki):
    folder, _, server, _ = pki
    path = write_config(folder, server_key=str(server.key), server_cert="missing.crt")
    message = refusal(path)
    assert str(path) in message and str(folder / "missing.crt") in message
    assert "No such file or directory" in message


def test_a_pem_path_with_a_nul_byte_is_refused_naming_the_config_file(pki):
    folder, _, server, _ = pki
    path = folder / "nul.cfg"
    path.write_text(f'server_key: "key\\000.pem"\nserver_cert: "{server.cert}"\n')
    assert refusal(path) == (
        f"SSL config file '{path}': server_key: cannot read "
        f"{str(folder / 'key') + chr(0) + '.pem'!r}: a path cannot hold a NUL byte"
    )


def broken_pem(folder: Path) -> Path:
    path = folder / "broken.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return path


@pytest.mark.parametrize(
    "field, bad",
    [
        ("server_cert", "key"),  # a key where the certificate goes
        ("server_cert", "broken"),
        ("server_cert", "text"),
        ("server_key", "cert"),  # a certificate where the key goes
        ("server_key", "text"),
        ("custom_ca", "key"),
        ("custom_ca", "broken"),
        ("custom_ca", "text"),
    ],
)
def test_a_pem_file_that_does_not_load_is_refused_naming_config_field_and_file(pki, field, bad):
    folder, ca, server, _ = pki
    text = folder / "not-pem.txt"
    text.write_text("hello\n")
    bad_path = {"key": server.key, "cert": server.cert, "broken": broken_pem(folder), "text": text}
    fields = {"server_key": str(server.key), "server_cert": str(server.cert),
              "custom_ca": str(ca.cert), field: str(bad_path[bad])}  # fmt: skip
    path = write_config(folder, **fields)
    message = refusal(path)
    assert str(path) in message and f"{field} ('{bad_path[bad]}')" in message


def test_an_encrypted_key_is_refused_without_a_passphrase_prompt(pki):
    folder, _, server, _ = pki
    key = serialization.load_pem_private_key(server.key.read_bytes(), None)
    locked = folder / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    path = write_config(folder, server_key=str(locked), server_cert=str(server.cert))
    message = refusal(path)
    assert str(path) in message and str(locked) in message and "encrypted" in message
