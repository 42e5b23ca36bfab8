"""TLS for ``tls+tcp://`` addresses: the router's certificate and key, the client's CA.

A ``tls+...`` address needs them, any other address must not be given them; PEM files are
read here and handed to nng as strings. See ``docs/bus.md`` (*Security*: what TLS adds).
"""

from __future__ import annotations

import pynng

from cordtrio.errors import CordtrioError


def uses_tls(address: str) -> bool:
    return address.partition("://")[0].startswith("tls+")


def read_pem(who: str, option: str, path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CordtrioError(f"{who}: cannot read {option} {path!r}: {exc}") from None


def server_tls(addresses: tuple[str, ...], cert_file: str | None,
               key_file: str | None) -> pynng.TLSConfig | None:
    """The router's TLS configuration: needed exactly when an address is ``tls+...``."""
    tls_addresses = [a for a in addresses if uses_tls(a)]
    if not tls_addresses:
        if cert_file or key_file:
            raise ValueError("open_nng_router: tls_cert_file/tls_key_file given, but no "
                             "tls+tcp:// address to use them on")
        return None
    if not cert_file or not key_file:
        raise CordtrioError(f"nng router: {tls_addresses[0]!r} needs tls_cert_file and "
                            "tls_key_file")
    cert = read_pem("nng router", "tls_cert_file", cert_file)
    key = read_pem("nng router", "tls_key_file", key_file)
    try:
        return pynng.TLSConfig(pynng.TLSConfig.MODE_SERVER, own_cert_string=cert,
                               own_key_string=key)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng router: unusable TLS certificate or key "
                            f"({cert_file}, {key_file}): {exc}") from exc


def client_tls(address: str, ca_file: str | None,
               server_name: str | None) -> pynng.TLSConfig | None:
    """The client's TLS configuration: needed exactly when the address is ``tls+...``."""
    if not uses_tls(address):
        if ca_file or server_name:
            raise ValueError("open_nng_bus: tls_ca_file/tls_server_name given for "
                             f"{address!r}, which is not a tls+tcp:// address")
        return None
    if not ca_file:
        raise CordtrioError(f"nng bus: {address!r} needs tls_ca_file (the router's "
                            "certificate or its CA)")
    if server_name is None:
        server_name = address.partition("://")[2].rpartition(":")[0].strip("[]")
    ca = read_pem("nng bus", "tls_ca_file", ca_file)
    try:
        return pynng.TLSConfig(pynng.TLSConfig.MODE_CLIENT, ca_string=ca,
                               server_name=server_name)
    except pynng.NNGException as exc:
        raise CordtrioError(f"nng bus: unusable tls_ca_file {ca_file!r}: {exc}") from exc


__all__ = ["client_tls", "read_pem", "server_tls", "uses_tls"]
