"""Entry point of a simulation attempt's child process (``python -m
wheretolearn.online._attempt_main``; see :mod:`wheretolearn.online.attempt`). A module of
its own, so that running it does not import :mod:`~wheretolearn.online.attempt` twice."""

from wheretolearn.online.attempt import _child_main

if __name__ == "__main__":
    _child_main()
