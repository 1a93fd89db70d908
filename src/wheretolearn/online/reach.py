"""Is a Dask scheduler reachable? (checked before an online study writes anything)."""

from __future__ import annotations

import socket

__all__ = ["check_scheduler_reachable", "check_tls_credentials", "client_security", "security_loader"]

# Credentials of the TLS schedulers this process started (address -> distributed Security),
# so that code given only the address (AMA labelling, dataset generation) can connect.
_OWN_SCHEDULERS: dict = {}


def register_scheduler(address: str, security) -> None:
    """Remember the credentials of a TLS scheduler started here, and make
    ``distributed.Client(address)`` find them (Dask's ``distributed.client.security-loader``,
    set unless the user configured one)."""
    import dask

    _OWN_SCHEDULERS[address] = security
    if dask.config.get("distributed.client.security-loader", None) is None:
        dask.config.set({"distributed.client.security-loader": f"{__name__}.security_loader"})


def forget_scheduler(address: str) -> None:
    """Forget the credentials of a scheduler that closed."""
    _OWN_SCHEDULERS.pop(address, None)


def security_loader(info: dict):
    """Dask client security loader: the credentials of a scheduler started in this process,
    ``None`` (Dask's configuration) for any other address."""
    return _OWN_SCHEDULERS.get(info.get("address"))


def client_security(address: str):
    """The ``distributed.security.Security`` a client of ``address`` uses: the run's own
    credentials for a TLS scheduler this process started, else the Dask configuration
    (for a ``tls://`` address it must name the certificates: :func:`check_tls_credentials`)."""
    from distributed.security import Security

    own = _OWN_SCHEDULERS.get(address)
    if own is not None:
        return own
    if address.startswith("tls://"):
        check_tls_credentials(address)
    return Security()


def check_tls_credentials(address: str) -> None:
    """Raise ``ValueError`` unless the Dask configuration gives a client of the ``tls://``
    scheduler at ``address`` a CA file and a certificate (``distributed.comm.tls.*``)."""
    import os

    from distributed.security import Security

    sec = Security()
    missing = [key for key, value in (("distributed.comm.tls.ca-file", sec.tls_ca_file),
                                      ("distributed.comm.tls.client.cert", sec.tls_client_cert))
               if not value]
    if missing:
        raise ValueError(
            f"scheduler {address} uses TLS but the Dask configuration sets no {' and no '.join(missing)} "
            "(e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE=ca.pem "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=client.pem "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=client.key)"
        )
    for value in (sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key):
        if value and "\n" not in value and not os.path.isfile(os.path.expanduser(value)):
            raise ValueError(
                f"scheduler {address}: TLS file {value!r} from the Dask configuration does not exist"
            )


def check_scheduler_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ``ValueError`` unless a TCP connection to the scheduler ``address`` opens
    within ``timeout`` seconds (and, for ``tls://``, the Dask configuration names the
    client's certificates).

    Parameters
    ----------
    address : str
        ``tcp://host:port`` or ``tls://host:port`` (a bare ``host:port`` means
        ``tcp://``). A ``tls://`` scheduler needs ``distributed.comm.tls.ca-file`` and
        ``distributed.comm.tls.client.cert`` (and ``.key`` unless the cert file holds it)
        in the Dask configuration, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``.
    timeout : float
        Seconds to wait for the connection.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    if not isinstance(address, str) or not address:
        raise ValueError(f"scheduler address must be a string like 'tcp://host:8786', got {address!r}")
    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"scheduler address {address!r} is not of the form 'tcp://host:port' ({exc})"
        ) from None
    if not port:
        raise ValueError(f"scheduler address {address!r} has no port (e.g. 'tcp://host:8786')")
    if scheme == "tls":
        client_security(address)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(
            f"scheduler at {address} cannot be reached within {timeout:g} s ({exc.__class__.__name__}: {exc})"
        ) from None
