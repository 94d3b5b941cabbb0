"""OPC UA security material for the plant simulator and the agent: passwords and certificates.

- **Passwords.** A users file is YAML::

      users:
        operator:
          password_hash: pbkdf2_sha256$200000$<salt b64>$<hash b64>

  Hashes are PBKDF2-HMAC-SHA256 with a random 16-byte salt; the iteration count travels in
  the string, so it can be raised later without invalidating existing users. Passwords are
  never accepted on the command line (environment variable or an interactive prompt).
- **Certificates.** :func:`generate_certificates` writes a self-signed server certificate
  and a client certificate for the agent (DER certificates, PEM private keys, as asyncua
  loads them). The application URI in each certificate's SubjectAltName is the one the
  server (:data:`SERVER_APPLICATION_URI`) and the client (:data:`CLIENT_APPLICATION_URI`)
  announce; OPC UA peers check that they match.

This module does no network I/O.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_log = logging.getLogger(__name__)

#: Application URI the plant simulator's OPC UA server announces (and has in its certificate).
SERVER_APPLICATION_URI = "urn:xtalpilot:plant:server"
#: Application URI the agent's OPC UA client must announce (``client.application_uri``).
CLIENT_APPLICATION_URI = "urn:xtalpilot:agent:client"

#: File names inside ``cert_dir``.
SERVER_CERT_FILE = "server_cert.der"
SERVER_KEY_FILE = "server_key.pem"
CLIENT_CERT_FILE = "client_cert.der"
CLIENT_KEY_FILE = "client_key.pem"

_ALGORITHM = "pbkdf2_sha256"
#: PBKDF2 iterations for new hashes. Verifying costs about this many SHA-256 rounds
#: (~0.1-0.2 s here); it runs once per OPC UA session activation.
DEFAULT_ITERATIONS = 200_000
_SALT_BYTES = 16
_CERT_DAYS = 825


class SecurityConfigError(RuntimeError):
    """Security material that is missing or unusable; the message says how to fix it."""


# --------------------------------------------------------------------------- passwords


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash a password for the users file.

    Args:
        password: the clear-text password (non-empty).
        iterations: PBKDF2 iteration count, stored in the result.

    Returns:
        ``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>``.
    """
    if not password:
        raise ValueError("password must not be empty")
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "$".join((_ALGORITHM, str(iterations), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches the ``stored`` hash (constant-time compare).

    A malformed stored hash never matches (and never raises).
    """
    try:
        algorithm, iterations_text, salt_text, digest_text = stored.split("$")
        iterations = int(iterations_text)
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(digest_text, validate=True)
    except (ValueError, AttributeError, TypeError):
        return False
    if algorithm != _ALGORITHM or iterations < 1 or not expected:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", str(password).encode("utf-8"), salt, iterations)
    return hmac.compare_digest(digest, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def load_users(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a users file.

    Returns:
        ``{username: password_hash}``.

    Raises:
        SecurityConfigError: file missing, not YAML, or not of the documented shape.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SecurityConfigError(
            f"users file {path} not found; create it with `xtalpilot certs username=<name> users_file={path}`"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise SecurityConfigError(f"users file {path} cannot be read: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("users", {}) or {}, dict):
        raise SecurityConfigError(f"users file {path}: expected a mapping 'users: {{name: {{password_hash: ...}}}}'")
    users: dict[str, str] = {}
    for name, entry in (data.get("users") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password_hash"), str):
            raise SecurityConfigError(f"users file {path}: user {name!r} needs a 'password_hash' string")
        users[str(name)] = entry["password_hash"]
    return users


def add_user(path: str | os.PathLike[str], name: str, password: str) -> None:
    """Add or replace a user in the users file (created if missing, written with mode 0600)."""
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"invalid user name {name!r}")
    path = Path(path)
    data: dict[str, Any] = {"users": {}}
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise SecurityConfigError(f"users file {path} is not a YAML mapping")
        data = loaded
        data.setdefault("users", {})
        if data["users"] is None:
            data["users"] = {}
    data["users"][name] = {"password_hash": hash_password(password)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- certificates


def server_certificate_paths(cert_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(certificate, private key) of the plant's OPC UA server inside ``cert_dir``."""
    d = Path(cert_dir)
    return d / SERVER_CERT_FILE, d / SERVER_KEY_FILE


def client_certificate_paths(cert_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(certificate, private key) of the agent's OPC UA client inside ``cert_dir``."""
    d = Path(cert_dir)
    return d / CLIENT_CERT_FILE, d / CLIENT_KEY_FILE


def generate_certificates(
    cert_dir: str | os.PathLike[str], hostname: str = "127.0.0.1", *, days: int = _CERT_DAYS
) -> dict[str, Path]:
    """Write a self-signed server and client certificate pair into ``cert_dir``.

    Existing files are overwritten. Private keys are written with mode 0600.

    Args:
        cert_dir: output folder (created).
        hostname: host name or IP the server is reached at; goes into the SubjectAltName
            together with ``localhost``, ``127.0.0.1`` and this machine's host name.
        days: validity.

    Returns:
        ``{"server_cert", "server_key", "client_cert", "client_key"}`` -> paths.
    """
    out = Path(cert_dir)
    out.mkdir(parents=True, exist_ok=True)
    server_cert, server_key = server_certificate_paths(out)
    client_cert, client_key = client_certificate_paths(out)
    _write_pair(server_cert, server_key, "xtalpilot plant simulator", SERVER_APPLICATION_URI, hostname,
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days)
    _write_pair(client_cert, client_key, "xtalpilot agent", CLIENT_APPLICATION_URI, hostname,
                [ExtendedKeyUsageOID.CLIENT_AUTH], days)
    return {"server_cert": server_cert, "server_key": server_key, "client_cert": client_cert, "client_key": client_key}


def _write_pair(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    application_uri: str,
    hostname: str,
    usages: list[x509.ObjectIdentifier],
    days: int,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xtalpilot"),
    ])
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    dns_names: list[str] = []
    ips: list[str] = []
    for host in (hostname, "localhost", "127.0.0.1", socket.gethostname()):
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            if host and host not in dns_names:
                dns_names.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    # asyncua compares the host name against the DNS entries, so an IP also goes in as DNS.
    for ip in ips:
        if ip not in dns_names:
            dns_names.append(ip)
    sans += [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True,
                data_encipherment=True, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)


def check_server_material(cert_dir: str | os.PathLike[str], users_file: str | None) -> dict[str, str]:
    """Validate what a ``sign_encrypt`` server needs, before any socket is opened.

    Returns:
        the users (``{name: password_hash}``).

    Raises:
        SecurityConfigError: with a message naming the file and the command that fixes it.
    """
    cert, key = server_certificate_paths(cert_dir)
    hint = f"create them with `xtalpilot certs cert_dir={cert_dir} username=<name> users_file=<file>`"
    for path, what in ((cert, "server certificate"), (key, "server private key")):
        if not path.is_file():
            raise SecurityConfigError(f"{what} {path} not found; {hint}")
    try:
        x509.load_der_x509_certificate(cert.read_bytes())
    except ValueError as exc:
        raise SecurityConfigError(f"server certificate {cert} is not a DER X.509 certificate ({exc}); {hint}") from None
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityConfigError(f"server private key {key} cannot be loaded ({exc}); {hint}") from None
    if not users_file:
        raise SecurityConfigError(
            "security=sign_encrypt needs a users file (users_file=...); "
            "create one with `xtalpilot certs username=<name> users_file=<file>`"
        )
    users = load_users(users_file)
    if not users:
        raise SecurityConfigError(f"users file {users_file} has no users; add one with `xtalpilot certs username=<name>`")
    return users


def certs_command(
    cert_dir: str,
    username: str | None,
    users_file: str | None,
    password_env: str = "XTALPILOT_OPCUA_PASSWORD",
) -> int:
    """``xtalpilot certs``: generate certificates and optionally add a user.

    The password comes from the environment variable ``password_env`` or, when that is
    unset and stdin is a terminal, from an interactive prompt; never from the command line.

    Returns:
        process exit code: 0 on success, 2 on a usage error.
    """
    paths = generate_certificates(cert_dir)
    for what, path in paths.items():
        _log.info("wrote %s: %s", what, path)
    if username is None:
        return 0
    if not users_file:
        _log.error("username=%s given without users_file=...; nothing written for the user", username)
        return 2
    password = os.environ.get(password_env)
    if password is None:
        try:
            password = getpass.getpass(f"OPC UA password for {username}: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            _log.error("no password: set %s or run interactively", password_env)
            return 2
        if password != again:
            _log.error("passwords do not match")
            return 2
    if not password:
        _log.error("empty password refused")
        return 2
    try:
        add_user(users_file, username, password)
    except (ValueError, SecurityConfigError) as exc:
        _log.error("%s", exc)
        return 2
    _log.info("user %s written to %s", username, users_file)
    return 0
