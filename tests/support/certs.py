"""Throwaway TLS material made with the openssl CLI."""

from __future__ import annotations

import pathlib
import subprocess


def self_signed(d: pathlib.Path) -> pathlib.Path:
    """A self-signed certificate for localhost and 127.0.0.1, valid one day: `d`/cert.pem and
    `d`/key.pem. Returns `d`."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d
