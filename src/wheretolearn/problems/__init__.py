"""Ground-truth maps behind one interface: benchmark functions and PDE solvers.

``get_problem(name, **options)`` builds any of them; see :class:`Problem`.
Problem modules register themselves on import (below).
"""

from .base import (Problem, available_problems, get_problem, problem_factory, problem_signature,
                   problem_spec, register_problem)
from .simulator import (SimulationError, SimulatorProblem, check_function_contract,
                        check_online_contract)

from . import burgers as _burgers  # noqa: F401,E402
from . import darcy as _darcy  # noqa: F401,E402
from . import functions as _functions  # noqa: F401,E402
from .functions import Friedman1, Friedman2, RKHSFunction, SobolG  # noqa: E402
from . import grayscott as _grayscott  # noqa: F401,E402
from . import heat2d as _heat2d  # noqa: F401,E402
from . import ntd as _ntd  # noqa: F401,E402
from . import radiative as _radiative  # noqa: F401,E402
from .external import (ExternalCommandProblem, LaunchOptions,  # noqa: E402  (registers "external")
                       SupervisionOptions)

__all__ = ["Friedman1", "Friedman2", "RKHSFunction", "SobolG",
           "Problem", "available_problems", "get_problem", "problem_factory", "register_problem",
           "problem_spec", "SimulatorProblem", "SimulationError", "check_online_contract",
           "check_function_contract", "ExternalCommandProblem", "LaunchOptions",
           "SupervisionOptions", "problem_signature"]
