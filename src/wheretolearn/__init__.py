"""wheretolearn: decide where a scientific surrogate should get its training data.

Subpackages, one concept each (data flows top to bottom):

* :mod:`wheretolearn.measures` -- probability measures (Gaussian, mixtures, random fields,
  empirical) and distances between them (W2, barycenters).
* :mod:`wheretolearn.problems` -- ground-truth maps: benchmark functions and PDE solvers,
  behind one interface (:func:`wheretolearn.problems.get_problem`).
* :mod:`wheretolearn.models` -- surrogate models (kernel ridge regression, MLP, ...).
* :mod:`wheretolearn.design` -- training-distribution design loops (bilevel) and baselines.
* :mod:`wheretolearn.report` -- metrics, run folders and figures.
* :mod:`wheretolearn.datasets` -- dataset generation to zarr.
* :mod:`wheretolearn.cluster` -- opening, reaching and securing the Dask clusters that
  ``datasets``, ``design`` and ``online`` run on (TLS for every cluster it starts).
* :mod:`wheretolearn.online` -- online training from streaming simulation ensembles (Dask).
* :mod:`wheretolearn.client` -- in-situ client: a user's simulation loop sends its time
  steps to the online engine (``connect()`` / ``send(step, field)``; numpy only).
* :mod:`wheretolearn.loading` -- ``load_model(RUN_DIR)``: the trained surrogate of any
  finished run folder, rebuilt from what the run recorded (a run folder is data, not code).

The numerical core never imports :mod:`wheretolearn.online` or the CLI.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # ``wheretolearn.load_model(RUN_DIR)`` without importing torch at package import
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(f"module 'wheretolearn' has no attribute {name!r}")
