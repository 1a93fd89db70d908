"""What to do after an attempt ended badly (SPEC §5, Melissa's rules) -- a pure function."""

from __future__ import annotations

__all__ = ["decide_after_failure", "ACTIONS"]

#: Possible decisions.
ACTIONS = ("completed", "relaunch", "redraw", "give_up")


def decide_after_failure(*, completed: bool, lineage_failures: int, sim_failures: int,
                         max_retries: int, failures_before_redraw: int | None) -> str:
    """Decide the fate of a simulation whose current attempt just failed.

    Parameters
    ----------
    completed : bool
        All its steps arrived meanwhile (the failure came too late to matter).
    lineage_failures : int
        Failed attempts (crash, timeout, lost) of the lineage, this one included.
    sim_failures : int
        Failed attempts with the current parameters, this one included.
    max_retries : int
        Failed attempts a lineage may relaunch; one more failure gives it up.
    failures_before_redraw : int or None
        Failures of one parameter set after which the lineage gets new parameters
        (Melissa's ``crashes_before_redraw``, which counts timeouts and lost workers too);
        None: never.

    Returns
    -------
    str, one of :data:`ACTIONS`: ``"completed"`` (nothing to relaunch; the sampler hears of
    a completion), ``"give_up"`` (record the lineage failed), ``"redraw"`` (new parameters,
    new simulation id, same lineage) or ``"relaunch"`` (same parameters).
    """
    if completed:
        return "completed"
    if lineage_failures > max_retries:
        return "give_up"
    if failures_before_redraw is not None and sim_failures >= failures_before_redraw:
        return "redraw"
    return "relaunch"
