"""Is a Dask scheduler there? (checked before a study writes anything or waits on it)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from .security import client_security

__all__ = ["check_scheduler_reachable"]


def check_scheduler_reachable(address: str, timeout: float = 5.0, *,
                              identify: bool = False) -> None:
    """Raise ``ValueError`` unless a TCP connection to the scheduler ``address`` opens
    within ``timeout`` seconds (and, for ``tls://``, the client has credentials for it).

    Parameters
    ----------
    address : str
        ``tcp://host:port`` or ``tls://host:port`` (a bare ``host:port`` means
        ``tcp://``). A ``tls://`` scheduler this process started is reached with the run's
        own credentials; any other needs ``distributed.comm.tls.ca-file`` and
        ``distributed.comm.tls.client.cert`` (and ``.key`` unless the cert file holds it)
        in the Dask configuration, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``.
    timeout : float
        Seconds to wait for the connection (and for the identity reply).
    identify : bool
        Also ask for the scheduler's identity: something that listens but is not a Dask
        scheduler (or never answers) is an error now, not a ``Client`` that waits forever
        or reads garbage frame sizes.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    if not isinstance(address, str) or not address:
        raise ValueError(
            f"scheduler address must be a string like 'tcp://host:8786', got {address!r}")
    address = address if "://" in address else f"tcp://{address}"
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
        client_security(address)  # a ValueError naming the missing certificates
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(f"scheduler at {address} cannot be reached within {timeout:g} s "
                         f"({type(exc).__name__}: {exc})") from None
    if identify:
        _check_identity(address, timeout)


def _check_identity(address: str, timeout: float) -> None:
    try:
        reply = asyncio.run(asyncio.wait_for(_identity(address, timeout), timeout))
    except Exception as exc:  # noqa: BLE001  (timeouts, protocol garbage, MemoryError)
        reply = exc
    if not (isinstance(reply, dict) and reply.get("type") == "Scheduler"):
        detail = type(reply).__name__ if isinstance(reply, BaseException) else "no identity"
        raise ValueError(f"no Dask scheduler answers at {address} within {timeout:g} s "
                         f"({detail}); is that the scheduler's address?")


async def _identity(address: str, timeout: float) -> Any:
    """The scheduler's ``identity`` reply (a dict with ``type = "Scheduler"``)."""
    from distributed.comm import connect

    # tls:// schedulers: the run's own credentials or those of the Dask configuration.
    tls = client_security(address).get_connection_args("client")
    comm = await connect(address, timeout=timeout, **tls)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()
