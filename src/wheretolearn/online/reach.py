"""Is a Dask scheduler reachable? (checked before an online study writes anything)."""

from __future__ import annotations

import socket

__all__ = ["check_scheduler_reachable"]


def check_scheduler_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ``ValueError`` unless a TCP connection to the scheduler ``address`` opens
    within ``timeout`` seconds.

    Parameters
    ----------
    address : str
        ``tcp://host:port`` (``tls://`` and ``ws://`` are checked the same way; a bare
        ``host:port`` means ``tcp://``).
    timeout : float
        Seconds to wait for the connection.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    if not isinstance(address, str) or not address:
        raise ValueError(f"scheduler address must be a string like 'tcp://host:8786', got {address!r}")
    try:
        _, location = parse_address(address)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"scheduler address {address!r} is not of the form 'tcp://host:port' ({exc})"
        ) from None
    if not port:
        raise ValueError(f"scheduler address {address!r} has no port (e.g. 'tcp://host:8786')")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(
            f"scheduler at {address} cannot be reached within {timeout:g} s ({exc.__class__.__name__}: {exc})"
        ) from None
