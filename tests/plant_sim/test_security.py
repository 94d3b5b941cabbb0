"""Tests for plant_sim/security.py: password hashes, users file, certificates."""

from __future__ import annotations

import asyncio
import logging
import stat

import pytest
from asyncua.crypto import uacrypto
from cryptography import x509

from plant_sim import security
from plant_sim.security import (
    CLIENT_APPLICATION_URI,
    SERVER_APPLICATION_URI,
    SecurityConfigError,
    add_user,
    certs_command,
    check_server_material,
    generate_certificates,
    hash_password,
    load_users,
    verify_password,
)


def test_hash_verify_round_trip():
    stored = hash_password("correct horse", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert verify_password("correct horse", stored)


def test_wrong_password_is_false():
    stored = hash_password("correct horse", iterations=1000)
    assert not verify_password("correct hors", stored)
    assert not verify_password("", stored)


def test_same_password_hashes_differently():
    assert hash_password("pw", iterations=1000) != hash_password("pw", iterations=1000)


@pytest.mark.parametrize("stored", ["", "plain", "md5$1$AA==$AA==", "pbkdf2_sha256$x$AA==$AA==", "pbkdf2_sha256$10$!!$AA=="])
def test_malformed_hash_never_matches(stored):
    assert not verify_password("pw", stored)


def test_default_iterations_in_hash():
    stored = hash_password("pw")
    assert stored.split("$")[1] == str(security.DEFAULT_ITERATIONS)
    assert verify_password("pw", stored)


def test_empty_password_refused():
    with pytest.raises(ValueError):
        hash_password("")


def test_users_file_round_trip(tmp_path):
    path = tmp_path / "sub" / "users.yaml"
    add_user(path, "alice", "a-secret")
    add_user(path, "bob", "b-secret")
    add_user(path, "alice", "new-secret")  # replaces
    users = load_users(path)
    assert sorted(users) == ["alice", "bob"]
    assert verify_password("new-secret", users["alice"])
    assert not verify_password("a-secret", users["alice"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "a-secret" not in path.read_text() and "new-secret" not in path.read_text()


def test_load_users_errors(tmp_path):
    with pytest.raises(SecurityConfigError, match="not found"):
        load_users(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("users:\n  alice: 3\n")
    with pytest.raises(SecurityConfigError, match="alice"):
        load_users(bad)


def test_certificates_generated_and_loadable(tmp_path):
    paths = generate_certificates(tmp_path / "certs")
    assert set(paths) == {"server_cert", "server_key", "client_cert", "client_key"}
    for key in ("server_key", "client_key"):
        assert stat.S_IMODE(paths[key].stat().st_mode) == 0o600

    async def load():
        out = {}
        for role in ("server", "client"):
            cert = await uacrypto.load_certificate(paths[f"{role}_cert"])
            key = await uacrypto.load_private_key(paths[f"{role}_key"])
            out[role] = (cert, key)
        return out

    loaded = asyncio.run(load())
    for role, uri in (("server", SERVER_APPLICATION_URI), ("client", CLIENT_APPLICATION_URI)):
        cert, key = loaded[role]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert "127.0.0.1" in san.get_values_for_type(x509.DNSName)
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        # asyncua's own check (expiry, application URI, host name) passes
        assert uacrypto.check_certificate(cert, uri, "127.0.0.1") is False


def test_check_server_material(tmp_path):
    certs = tmp_path / "certs"
    users = tmp_path / "users.yaml"
    with pytest.raises(SecurityConfigError, match="xtalpilot certs"):
        check_server_material(str(certs), str(users))
    generate_certificates(certs)
    with pytest.raises(SecurityConfigError, match="users_file"):
        check_server_material(str(certs), None)
    with pytest.raises(SecurityConfigError, match="not found"):
        check_server_material(str(certs), str(users))
    add_user(users, "op", "pw")
    assert list(check_server_material(str(certs), str(users))) == ["op"]
    (certs / security.SERVER_CERT_FILE).write_bytes(b"garbage")
    with pytest.raises(SecurityConfigError, match="DER"):
        check_server_material(str(certs), str(users))


def test_certs_command_password_from_env(tmp_path, monkeypatch):
    users = tmp_path / "users.yaml"
    monkeypatch.setenv("XTALPILOT_TEST_PW", "s3cret")
    rc = certs_command(str(tmp_path / "certs"), "operator", str(users), password_env="XTALPILOT_TEST_PW")
    assert rc == 0
    assert verify_password("s3cret", load_users(users)["operator"])
    assert (tmp_path / "certs" / security.SERVER_CERT_FILE).is_file()


def test_certs_command_without_users_file_is_usage_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XTALPILOT_TEST_PW", "s3cret")
    with caplog.at_level(logging.ERROR):
        rc = certs_command(str(tmp_path / "certs"), "operator", None, password_env="XTALPILOT_TEST_PW")
    assert rc == 2
    assert "users_file" in caplog.text


def test_certs_command_without_user_only_writes_certs(tmp_path):
    assert certs_command(str(tmp_path / "c"), None, None) == 0
    assert (tmp_path / "c" / security.CLIENT_KEY_FILE).is_file()
