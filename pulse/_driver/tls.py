"""TLS contexts from pulse URLs and serve options, shared by the stream plugins."""

from __future__ import annotations

import errno
import os
import ssl

from pulse.registry import Endpoint, ServeOptions


def server_context(endpoint: Endpoint, options: ServeOptions, secure_scheme: str) -> ssl.SSLContext | None:
    """The server's TLS context for ``secure_scheme`` (``tls``, ``wss``), else None.

    The certificate comes from ``options.extra["certfile"]`` (and ``"keyfile"``).
    """
    if endpoint.scheme != secure_scheme:
        return None
    certfile = options.extra.get("certfile")
    if not certfile:
        raise ValueError(f"{secure_scheme}:// needs a certificate: pass certfile (and keyfile)")
    keyfile = options.extra.get("keyfile")
    for path in (certfile, keyfile):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "certificate or key file not found", path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ValueError(f"cannot load the certificate {certfile}"
                         + (f" with key {keyfile}" if keyfile else "") + f": {exc.reason or exc}") from exc
    return context


def client_context(endpoint: Endpoint, secure_scheme: str) -> ssl.SSLContext | None:
    """The client's TLS context for ``secure_scheme``: the system's trust store, plus the
    CA file named by ``?cafile=`` in the URL; None for the plain scheme."""
    if endpoint.scheme != secure_scheme:
        return None
    context = ssl.create_default_context()
    cafile = endpoint.query.get("cafile")
    if cafile:
        context.load_verify_locations(cafile)
    return context
