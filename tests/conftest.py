"""Shared test configuration."""


import pytest
import torch

# Tests run on 2 cores (CI) next to Dask worker processes: with 2 OpenMP threads the small
# LAPACK calls (250x250 Cholesky, 2x2 triu) busy-wait and run 10-100x slower under load.
torch.set_num_threads(1)


@pytest.fixture
def tmp_run_dir(tmp_path):
    """A path for a run folder that does not exist yet."""
    return tmp_path / "run"


# -- clients without a run's credentials (security tests of every cluster kind) ----------
def _intruder_refused(address: str, security=None) -> str:
    """Try a Dask client at ``address``; return how the connection was refused (the test
    fails if it got in, or if it failed for another reason than a refused connection)."""
    from distributed import Client

    try:
        with Client(address, security=security, timeout=5):
            pass
    except (OSError, TimeoutError) as exc:  # CommClosedError, FatalCommClosedError are OSErrors
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    raise AssertionError(f"a client without the run's credentials connected to {address}")


def _tls_without_certificate_refused(address: str) -> str:
    """Open a TLS connection that presents no client certificate (and trusts any server);
    return how the scheduler refused it (mutual TLS: it demands a certificate)."""
    import socket
    import ssl

    host, port = address.split("://", 1)[1].rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\0" * 8)
                data = tls.recv(1)  # TLS 1.3: the server's verdict arrives with the first read
        except (ssl.SSLError, ConnectionError) as exc:
            return f"{type(exc).__name__}: {str(exc)[:100]}"
    assert data == b"", f"the scheduler answered a client without a certificate: {data!r}"
    return "connection closed by the scheduler"


@pytest.fixture
def intruders_refused():
    """``check(address) -> [how each was refused]``: a plain tcp:// client at the TLS port,
    a TLS client without a certificate, and one with another CA are all refused (the
    test fails if any gets in)."""

    def check(address: str) -> list[str]:
        from distributed.security import Security

        return [
            _intruder_refused("tcp://" + address.split("://", 1)[1]),  # plain tcp, TLS port
            _tls_without_certificate_refused(address),  # tls, no client certificate
            _intruder_refused(address, Security.temporary()),  # tls with someone else's CA
        ]

    return check


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: many small kernels on a shared 2-core machine run up
    to 100x slower with two OpenMP threads per process (busy-waiting on a busy core). Modules
    opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
