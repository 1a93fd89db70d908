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
* :mod:`wheretolearn.client_protocol` -- the wire protocol between that client and the
  engine, defined once (standard library only).
* :mod:`wheretolearn.loading` -- ``load_model(RUN_DIR)``: the trained surrogate of any
  finished run folder, rebuilt from what the run recorded (a run folder is data, not code).

The numerical core never imports :mod:`wheretolearn.online` or the CLI.

The user-facing names are re-exported here (``__all__``): the three studies
(``run_bilevel_study``, ``run_ama_study``, ``run_online_study``, each taking a config object
and an ``out_dir`` and returning a :class:`~wheretolearn.report.runfolder.StudyResult`), the
problem registry and ``load_model``.
"""

__version__ = "0.1.0"

#: The public API in one place: name -> the module that defines it. Imported on first use,
#: so ``import wheretolearn`` stays light (no torch, dask or scipy until a name is used).
_PUBLIC = {
    # the three studies: a config object, ``run_*_study(config, out_dir)`` -> StudyResult
    "BilevelStudyConfig": "wheretolearn.design.bilevel_study",
    "resolve_bilevel_config": "wheretolearn.design.bilevel_study",
    "run_bilevel_study": "wheretolearn.design.bilevel_study",
    "AMAStudyConfig": "wheretolearn.design.ama_study",
    "resolve_ama_config": "wheretolearn.design.ama_study",
    "run_ama_study": "wheretolearn.design.ama_study",
    "OnlineStudyConfig": "wheretolearn.online.config",
    "load_online_config": "wheretolearn.online.config",
    "run_online_study": "wheretolearn.online.study",
    "resume_online_study": "wheretolearn.online.study",
    "StudyResult": "wheretolearn.report.runfolder",
    # problems (one registry; kinds "all" | "builtin" | "online")
    "Problem": "wheretolearn.problems.base",
    "available_problems": "wheretolearn.problems.base",
    "get_problem": "wheretolearn.problems.base",
    "problem_factory": "wheretolearn.problems.base",
    "problem_signature": "wheretolearn.problems.base",
    "register_problem": "wheretolearn.problems.base",
    # results
    "load_model": "wheretolearn.loading",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'wheretolearn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value              # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
