"""Where the package decides how its Dask clusters are secured (one place for all of them).

Every cluster the package starts -- a local ``LocalCluster`` for ``online``, ``generate``
or AMA labelling, and Slurm / PBS / SGE clusters through dask-jobqueue -- uses TLS with
mutual authentication and temporary credentials made for that run
(:func:`temporary_security`): a client without the run's certificate cannot connect, so
another user of the machine cannot run code as you or read the data. Local clusters also
listen on 127.0.0.1 only, HTTP endpoints included.

``tls = false`` (``[cluster]`` table) is the documented opt-out for a machine the user
knows to be private: it warns (:class:`InsecureClusterWarning`, :data:`INSECURE_MESSAGE`)
and the run records it in ``summary.json``.

Code that is handed only a scheduler address (dataset generation, AMA labelling) finds the
credentials of a scheduler this process started through :func:`register_scheduler`, which
also installs :func:`security_loader` as Dask's client security loader.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["INSECURE_MESSAGE", "InsecureClusterWarning", "check_tls_credentials",
           "client_security", "forget_scheduler", "register_scheduler", "security_loader",
           "temporary_security"]


class InsecureClusterWarning(UserWarning):
    """A cluster the package starts runs without TLS (``[cluster] tls = false``)."""


#: The warning printed (once) for a cluster started with ``tls = false``.
INSECURE_MESSAGE = (
    "[cluster] tls = false: the Dask scheduler of this run accepts plain tcp:// connections "
    "without authentication; anyone who can reach its port can run code as you and read "
    "the simulation data (recorded in summary.json)"
)

# Credentials of the TLS schedulers this process started (address -> distributed Security),
# so that code given only the address (AMA labelling, dataset generation) can connect.
_OWN_SCHEDULERS: dict[str, Any] = {}


def temporary_security() -> Any:
    """Fresh self-signed TLS credentials for one cluster (``Security.temporary()``: CA,
    certificate and key in memory, encryption required, mutual authentication).

    Raises ``ValueError`` when the ``cryptography`` package is missing."""
    try:
        import cryptography  # noqa: F401  (Security.temporary() needs it)
    except ImportError:
        raise ValueError(
            "TLS for the Dask cluster needs the 'cryptography' package (pip install "
            "cryptography), or set [cluster] tls = false to run without encryption"
        ) from None
    from distributed.security import Security

    return Security.temporary()


def register_scheduler(address: str, security: Any) -> None:
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


def security_loader(info: dict) -> Any:
    """Dask client security loader: the credentials of a scheduler started in this process,
    ``None`` (Dask's configuration) for any other address."""
    return _OWN_SCHEDULERS.get(info.get("address"))


def client_security(address: str) -> Any:
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
    from distributed.security import Security

    sec = Security()
    missing = [key for key, value in (("distributed.comm.tls.ca-file", sec.tls_ca_file),
                                      ("distributed.comm.tls.client.cert", sec.tls_client_cert))
               if not value]
    if missing:
        raise ValueError(
            f"scheduler {address} uses TLS but the Dask configuration sets no "
            f"{' and no '.join(missing)} (e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE=ca.pem "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=client.pem "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=client.key)"
        )
    for value in (sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key):
        if value and "\n" not in value and not os.path.isfile(os.path.expanduser(value)):
            raise ValueError(
                f"scheduler {address}: TLS file {value!r} from the Dask configuration does "
                "not exist"
            )
