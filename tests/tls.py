"""TLS for the tests' own servers: a self-signed certificate for 127.0.0.1 (openssl), and
the server options that serve TLS beside the plain port the readiness check uses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .servers import free_port


def certificate(directory: Path) -> tuple[str, str]:
    """``(cert, key)`` paths: one self-signed CA certificate valid for 127.0.0.1, which
    the server presents and the client trusts (``ssl_ca_certs``)."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the TLS tests need openssl on PATH (Debian: openssl)"
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def tls_options(cert: str, key: str) -> tuple[int, tuple[str, ...]]:
    """A free TLS port and the server options that serve it."""
    port = free_port()
    return port, ("--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key,
                  "--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
