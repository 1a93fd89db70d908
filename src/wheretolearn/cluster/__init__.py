"""wheretolearn.cluster: opening, reaching and securing the Dask clusters the package uses.

One floor below :mod:`wheretolearn.online`, :mod:`wheretolearn.datasets` and
:mod:`wheretolearn.design`, which all run work on Dask through it; it imports none of them.

* :mod:`.config` -- the ``[cluster]`` table (:class:`ClusterConfig`);
* :mod:`.security` -- the one place where security is decided: TLS with temporary
  credentials for every cluster started here, the ``tls = false`` opt-out and its warning;
* :mod:`.start` -- :func:`open_cluster` (local, Slurm / PBS / SGE, or an address) and
  :func:`local_cluster`;
* :mod:`.jobs`, :mod:`.job_watch`, :mod:`.dask_private` -- batch job scripts, the job
  watchdog (:class:`ClusterHandle`) and the private dask API used;
* :mod:`.reach` -- is a scheduler there, and is it a Dask scheduler?
"""

from .config import BATCH_KINDS, CLUSTER_KINDS, ClusterConfig
from .job_watch import ClusterHandle
from .jobs import job_script
from .reach import check_scheduler_reachable
from .security import INSECURE_MESSAGE, InsecureClusterWarning, client_security
from .start import local_cluster, open_cluster

__all__ = [
    "BATCH_KINDS",
    "CLUSTER_KINDS",
    "ClusterConfig",
    "ClusterHandle",
    "INSECURE_MESSAGE",
    "InsecureClusterWarning",
    "check_scheduler_reachable",
    "client_security",
    "job_script",
    "local_cluster",
    "open_cluster",
]
