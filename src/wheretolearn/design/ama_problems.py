"""What AMA needs to know about a problem (SPEC §4): its norms, its parametric training
family ``nu(theta)``, its meta-test family and the update rule for ``theta``.

:func:`ama_setup` is the single lookup from a problem name to an :class:`AMASetup`
(``ntd``, ``darcy``, ``burgers``); further built-in problems (particles) add a builder to
:data:`AMA_SETUPS`. Burgers' test data is one labelled pool (:data:`POOL_AMA_PROBLEMS`): its
setup builds the meta-test itself, with ``Q`` the Gaussian fitted to the pool.
``family="mixture"`` (built-in problems) wraps the single family into a uniform mixture of one
field per ``Q_j`` (:func:`mixture_setup`, :class:`MixtureField`).

User problems (``"pkg.mod:factory"``, ``"file.py:factory"`` or an installed plugin name, as
for every other command; docs/user_solver.md) come in two kinds:

* the factory returns an :class:`AMASetup`: full control over the family ``nu(theta)``,
  the meta-test family, the norms and the update;
* the factory returns a :class:`~wheretolearn.problems.Problem` whose input is a field on
  a uniform grid of ``[0, 1]`` (shape ``(n,)``) or ``[0, 1]^2`` (shape ``(n, n)``),
  boundary nodes included: :func:`field_setup` makes it a Darcy-like study -- ``nu(theta)``
  is a Gaussian random field with a learnable constant mean ``theta``, the ``Q_j`` are
  :func:`~wheretolearn.design.operator_metatest.field_family`; ``theta`` moves by Adam
  through model and solver when the problem is ``differentiable``, else by differential
  evolution within ``bounds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..measures.fields import matern_sqrt_eigenvalues

__all__ = ["AMASetup", "SpectrumField", "MixtureField", "mixture_setup", "FAMILIES",
           "MIXTURE_BOUNDS",
           "barycenter_field", "prepare_setup", "vector_theta",
           "ama_setup", "AMA_SETUPS", "POOL_AMA_PROBLEMS", "available_ama_problems",
           "fit_fourier_gaussian", "burgers_steps", "BURGERS_POOL_GP", "BURGERS_INITIAL",
           "field_setup", "grid_weights", "grid_points", "PARTICLE_STARTS"]


@dataclass
class AMASetup:
    """A problem prepared for AMA.

    Attributes
    ----------
    name : str
    problem : Problem
        The ground truth ``G*`` (batched solver).
    input_weights, output_weights : tensors of the input / output shape
        Quadrature weights of the one norm used in every term of ``J``.
    points : (P, d) array
        Output coordinates (the DeepONet's trunk inputs).
    build : callable
        ``theta (scalar tensor) -> Measure``: the training family ``nu(theta)``; samples are
        ``build(theta).from_coefficients(xi)`` (differentiable in ``theta``).
    theta0 : float
        Initial parameter (NtD: omega = 4 pi; Darcy: mean m = 0).
    parameter : str
        Name of ``theta`` in reports.
    bounds : (float, float) or None
        Search interval for a global update.
    update : "de" | "adam" | "de+adam"
        Default update rule (differential evolution / Adam through model and solver / DE
        over the first component then Adam over all).
    family : callable
        ``(n_measures, seed) -> (measures, params)``: the meta-test family ``Q_j``.
    branch, trunk : list of int
        Default DeepONet layer lists (paper sizes for the input size of this grid).
    jvp : "forward" | "fd" | "fd-random"
        How the Lipschitz estimate applies the solver's Jacobian (``"fd-random"``: a solver
        with no gradient at all, see :func:`~wheretolearn.design.ama_bound.estimate_lipschitz`).
    linear : bool
        ``G*`` is known to be linear (NtD): its Lipschitz estimate gets safety factor 1.
    basis, center : KLE basis of the family and its mean removal (barycenter baseline).
    mask : list of bool or None
        Components of ``theta`` that the update may move (None: all).
    truth : callable or None
        ``(nu, xi) -> G*(nu.from_coefficients(xi))`` when a problem has a cheaper exact route
        (Darcy's constant-shift identity); None: the solver on the samples.
    metatest : callable or None
        A problem whose test data is one labelled pool (Burgers) builds its meta-test itself:
        ``(labeller, *, n_seen, n_unseen, seed, output_weights, progress) ->``
        :class:`~wheretolearn.design.operator_metatest.PoolMetaTest` (the ``Q`` of ``J``
        fitted to the pool, held-out rows scored); None: ``family`` is labelled instead.

    ``theta0`` is a float (one parameter) or a list (a vector ``theta``, ``parameter`` then
    lists the names); ``bounds`` is one ``(low, high)`` or a list of them.
    """

    name: str
    problem: Any
    input_weights: torch.Tensor
    output_weights: torch.Tensor
    points: np.ndarray
    build: Callable[[Any], Any]
    theta0: Any
    parameter: Any
    bounds: Any
    update: str
    family: Callable[[int, int], tuple[list, list[dict]]]
    branch: list[int]
    trunk: list[int]
    jvp: str = "forward"
    options: dict = field(default_factory=dict)
    linear: bool = False
    basis: Any = None
    center: bool = False
    mask: Any = None
    truth: Any = None
    component_theta: Any = None
    metatest: Any = None
    origin: float = 0.0
    theta_summary: Any = None
    initial_theta: Any = None

    # ``component_theta``: ``params dict of a Q_j -> theta of the single family`` (the
    # meta-test's own parameters in this family's coordinates); the mixture family
    # (:func:`mixture_setup`) starts its components there.
    # ``origin``: the input where ``G(0)`` and ``G*(0)`` are evaluated and about which
    # ``m2`` is taken (radiative transport: ``a = 1``, SPEC §4; else 0).
    # ``theta_summary``: ``theta -> dict`` for the records when theta is large (particles).
    # ``initial_theta``: ``metatest -> theta0`` when the start depends on the meta-test (the
    # particles' mixture start); :func:`prepare_setup` calls it while ``theta0`` is None.

    def origin_input(self) -> torch.Tensor:
        """The input ``0`` of ``J`` (1, *in): every entry ``origin``."""
        return torch.full((1, *self.problem.input_shape), float(self.origin),
                          dtype=torch.float64)

    def g0_true_sq(self) -> float:
        """``||G*(0)||_q^2`` (NtD: 0; Darcy: the solution for ``a = 1``; radiative transport:
        the density for ``a = origin = 1``)."""
        from .ama_bound import quadrature_norm_sq

        zero = self.origin_input()
        with torch.no_grad():
            y = self.problem(zero)
        return float(quadrature_norm_sq(y, self.output_weights.double())[0])


class SpectrumField:
    """A Gaussian KLE field with a free spectrum and an optional random constant offset: the
    parametric training family ``nu(theta)`` of the built-in AMA problems (issue 21).

    A sample is ``u = P(mean + sum_k s_k xi_k phi_k) + offset_sd * eta`` with ``xi_k, eta``
    i.i.d. ``N(0, 1)``, ``s_k = sqrt(lambda_k)`` (K,), ``phi_k`` the basis functions and ``P``
    the removal of the grid average (``center=True``, NtD boundary data) or the identity.

    Parameters
    ----------
    basis : KLEBasis
    mean : scalar or grid-shaped tensor (may require grad)
    sqrt_eigenvalues : (K,) tensor (may require grad)
    offset_sd : float >= 0
        Spread of the random constant offset (a design choice, not learned).
    center : bool
        Remove the grid average from every sample (NtD compatibility).
    meta : dict
        Natural parameters reported by :meth:`to_dict` (``omega``, ``tau`` ...).

    Latent draws ``xi`` have ``K + 1`` columns (the last is ``eta``) when ``offset_sd > 0``.
    """

    def __init__(self, basis, *, mean, sqrt_eigenvalues, offset_sd: float = 0.0,
                 center: bool = False, meta: dict | None = None, dtype=torch.float64):
        if offset_sd < 0 or not math.isfinite(offset_sd):
            raise ValueError(f"offset_sd must be a finite number >= 0, got {offset_sd!r}")
        self.basis, self.dtype, self.center = basis, dtype, bool(center)
        self.mean = torch.as_tensor(mean, dtype=dtype)
        self.sqrt_eigenvalues = torch.as_tensor(sqrt_eigenvalues, dtype=dtype)
        if self.sqrt_eigenvalues.shape != (basis.n_terms,):
            raise ValueError(f"sqrt_eigenvalues must have shape ({basis.n_terms},), got "
                             f"{tuple(self.sqrt_eigenvalues.shape)}")
        self.offset_sd = float(offset_sd)
        self.meta = dict(meta or {})

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.basis.grid_shape)

    @property
    def n_latent(self) -> int:
        return self.basis.n_terms + (1 if self.offset_sd > 0 else 0)

    def sample_coefficients(self, n: int, generator=None) -> torch.Tensor:
        """Standard normal latent draws, shape (n, K [+ 1])."""
        from .._validation import torch_generator

        return torch.randn(int(n), self.n_latent, generator=torch_generator(generator),
                           dtype=self.dtype)

    def kle_part(self, xi: torch.Tensor) -> torch.Tensor:
        """``sum_k s_k xi_k phi_k`` (no mean, no offset) for xi (n, K [+ 1]) -> (n, *grid)."""
        k = self.basis.n_terms
        return self.basis.synthesize(xi[:, :k].to(self.dtype) * self.sqrt_eigenvalues)

    def offsets(self, xi: torch.Tensor) -> torch.Tensor:
        """Per-sample constant shift ``mean + offset_sd * eta`` (n,) (scalar mean only)."""
        eta = xi[:, -1].to(self.dtype) if self.offset_sd > 0 else 0.0 * xi[:, 0].to(self.dtype)
        return self.mean + self.offset_sd * eta

    def from_coefficients(self, xi) -> torch.Tensor:
        """Samples for latent draws xi (n, K [+ 1]) -> (n, *grid); differentiable."""
        xi = torch.as_tensor(xi, dtype=self.dtype)
        if xi.ndim != 2 or xi.shape[1] != self.n_latent:
            raise ValueError(f"xi must have shape (n, {self.n_latent}), got {tuple(xi.shape)}")
        u = self.mean + self.kle_part(xi)
        if self.center:
            u = u - u.reshape(u.shape[0], -1).mean(1).reshape(-1, *[1] * (u.ndim - 1))
        if self.offset_sd > 0:
            u = u + self.offset_sd * xi[:, -1].reshape(-1, *[1] * (u.ndim - 1))
        return u

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        return self.from_coefficients(self.sample_coefficients(n, generator))

    def _gram(self) -> torch.Tensor:
        """``B_kl = <P phi_k, P phi_l>_q`` (K, K); the identity without centring."""
        q = self.basis.quadrature_weights.to(self.dtype).reshape(-1)
        phi = self.basis.functions.to(self.dtype).reshape(self.basis.n_terms, -1)
        if not self.center:
            return (phi * q) @ phi.T
        pc = phi - phi.mean(1, keepdim=True)
        return (pc * q) @ pc.T

    def second_moment(self) -> torch.Tensor:
        """``E ||u||_q^2 = ||P mean||_q^2 + sum_k s_k^2 B_kk + offset_sd^2 sum q`` (the
        offset is independent of the zero-mean KLE part; the cross term with a constant
        mean is ``2 mean offset E eta = 0``)."""
        q = self.basis.quadrature_weights.to(self.dtype)
        m = self.mean.expand(self.event_shape)
        if self.center:
            m = m - m.mean()
        diag = torch.diagonal(self._gram())
        return ((q * m ** 2).sum() + (self.sqrt_eigenvalues ** 2 * diag).sum()
                + self.offset_sd ** 2 * q.sum())

    def w2_squared_to(self, other) -> torch.Tensor:
        """``W2(nu, Q)^2`` to a Gaussian field ``Q`` on the same basis (an NtD measure: its
        field before the mean removal, paper F.16, as :func:`~.ama_bound._w2_view`):

            ||mean - mean_Q||_q^2 + sum_k (s_k - s_Q,k)^2 + offset_sd^2 sum q.

        Without an offset this is the closed form; with one it is the cost of the coupling
        that shares ``xi`` (the offset is independent of everything), an upper bound of
        ``W2^2`` -- so ``J`` stays an upper bound of the OOD error."""
        from .ama_bound import _w2_view

        field = _w2_view(other)
        q = self.basis.quadrature_weights.to(self.dtype)
        dm = self.mean.expand(self.event_shape) - field.mean.to(self.dtype).expand(
            self.event_shape)
        ds = self.sqrt_eigenvalues - field.sqrt_eigenvalues.to(self.dtype)
        return (q * dm ** 2).sum() + (ds ** 2).sum() + self.offset_sd ** 2 * q.sum()

    def detach(self) -> "SpectrumField":
        return SpectrumField(self.basis, mean=self.mean.detach(),
                             sqrt_eigenvalues=self.sqrt_eigenvalues.detach(),
                             offset_sd=self.offset_sd, center=self.center, meta=self.meta,
                             dtype=self.dtype)

    def to_dict(self) -> dict:
        """JSON description (also the labelling cache key: it holds every parameter)."""
        m = self.mean.detach().double()
        return {"kind": "spectrum_field", "basis": repr(self.basis), **self.meta,
                "mean": float(m) if m.ndim == 0 else m.reshape(-1).tolist(),
                "sqrt_eigenvalues": self.sqrt_eigenvalues.detach().double().tolist(),
                "offset_sd": self.offset_sd, "center": self.center}

    def __repr__(self) -> str:
        return f"SpectrumField({self.basis!r}, offset_sd={self.offset_sd:.4g}, {self.meta})"


class MixtureField:
    """A uniform mixture ``nu = (1/K) sum_k nu_k`` of :class:`SpectrumField` components on one
    basis: the ``"mixture"`` training family of the built-in AMA problems (issue 21).

    Sampling is *stratified*: latent row ``i`` belongs to component ``i mod K`` (the rows are
    interleaved, so any ``n`` draws hold ``floor(n / K)`` or ``ceil(n / K)`` samples of every
    component). On fixed latent draws the samples are therefore differentiable in every
    component's parameters, and ``part1`` of ``J`` is the stratified estimate of
    ``(1/K) sum_k E_{nu_k} ||G* - G||^2``.

    Closed forms used by ``J``:

    * ``m2(nu) = (1/K) sum_k m2(nu_k)`` (exact: the second moment is linear in the measure);
    * ``W2(nu, Q)^2 <= (1/K) sum_k W2(nu_k, Q)^2`` (:meth:`w2_squared_to` returns the right
      side, the *mixture-coupling bound*: couple each component optimally to ``Q`` and mix
      the couplings -- its marginals are ``nu`` and ``Q``). It is an upper bound, so ``J``
      stays an upper bound of the OOD error. (``min_k W2(nu_k, Q)`` is *not* an upper bound
      of ``W2(nu, Q)`` and is not used as one.)

    ``bound`` picks how ``J`` treats the mixture (both are upper bounds of the OOD error):

    * ``"component"`` (default): each ``Q_j`` is bounded through one component, with that
      component's own in-distribution error
      (:func:`~wheretolearn.design.ama_bound.mixture_component_bound`); at the start
      (component ``j`` = ``Q_j``) ``J`` is ``part1`` alone;
    * ``"coupling"``: the single-family ``J`` of the whole mixture with the mixture-coupling
      W2 bound above. Its ``part2 * part3`` is smallest when every component sits at the
      barycenter, so the update pulls the components together.
    """

    def __init__(self, components: list, meta: dict | None = None, bound: str = "component"):
        if bound not in MIXTURE_BOUNDS:
            raise ValueError(f"bound must be one of {', '.join(MIXTURE_BOUNDS)}, got {bound!r}")
        self.bound = bound
        comps = list(components)
        if not comps:
            raise ValueError("a mixture needs at least one component")
        lat = {c.n_latent for c in comps}
        if len(lat) != 1 or len({tuple(c.event_shape) for c in comps}) != 1:
            raise ValueError("mixture components must share the basis and the latent size")
        self.components, self.meta = comps, dict(meta or {})
        self.basis, self.dtype = comps[0].basis, comps[0].dtype

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.components[0].event_shape

    @property
    def n_latent(self) -> int:
        return self.components[0].n_latent

    @property
    def sqrt_eigenvalues(self) -> torch.Tensor:
        """All components' ``sqrt(lambda)`` concatenated (K * modes,) (Darcy's solve cache
        keys on it)."""
        return torch.cat([c.sqrt_eigenvalues for c in self.components])

    def sample_coefficients(self, n: int, generator=None) -> torch.Tensor:
        return self.components[0].sample_coefficients(n, generator)

    def component_of(self, n: int) -> torch.Tensor:
        """The component of each of ``n`` latent rows: ``i mod K`` (n,)."""
        return torch.arange(int(n)) % self.n_components

    def _rows(self, xi: torch.Tensor, fn: Callable) -> torch.Tensor:
        """``fn(component_k, xi[k::K])`` scattered back to the rows of ``xi``."""
        xi = torch.as_tensor(xi, dtype=self.dtype)
        if xi.ndim != 2 or xi.shape[1] != self.n_latent:
            raise ValueError(f"xi must have shape (n, {self.n_latent}), got {tuple(xi.shape)}")
        k, idx = self.n_components, torch.arange(xi.shape[0])
        used = range(min(k, xi.shape[0]))
        order = torch.cat([idx[j::k] for j in used])
        out = torch.cat([fn(self.components[j], xi[j::k]) for j in used])
        return out[torch.argsort(order)]

    def from_coefficients(self, xi) -> torch.Tensor:
        """Samples (n, *grid): row ``i`` from component ``i mod K``; differentiable."""
        return self._rows(xi, lambda c, x: c.from_coefficients(x))

    def kle_part(self, xi: torch.Tensor) -> torch.Tensor:
        return self._rows(xi, lambda c, x: c.kle_part(x))

    def offsets(self, xi: torch.Tensor) -> torch.Tensor:
        return self._rows(xi, lambda c, x: c.offsets(x))

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        return self.from_coefficients(self.sample_coefficients(n, generator))

    def second_moment(self) -> torch.Tensor:
        """``(1/K) sum_k m2(nu_k)`` (exact)."""
        return torch.stack([c.second_moment() for c in self.components]).mean()

    def w2_squared_to(self, other) -> torch.Tensor:
        """The mixture-coupling upper bound ``(1/K) sum_k W2(nu_k, Q)^2`` of ``W2(nu, Q)^2``."""
        return torch.stack([c.w2_squared_to(other) for c in self.components]).mean()

    def detach(self) -> "MixtureField":
        return MixtureField([c.detach() for c in self.components], meta=self.meta,
                            bound=self.bound)

    def to_dict(self) -> dict:
        """JSON description (also the labelling cache key: it holds every parameter)."""
        return {"kind": "spectrum_mixture", "assignment": "row i -> component i mod K",
                "bound": self.bound, **self.meta,
                "components": [c.to_dict() for c in self.components]}

    def __repr__(self) -> str:
        return f"MixtureField(K={self.n_components}, {self.components[0].basis!r})"


def _spectrum(theta: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``theta[1:] = (log sigma, log tau, log alpha)`` -> sqrt eigenvalues and natural values."""
    sigma, tau, alpha = torch.exp(theta[1]), torch.exp(theta[2]), torch.exp(theta[3])
    meta = {"sigma": float(sigma.detach()), "tau": float(tau.detach()),
            "alpha": float(alpha.detach())}
    return matern_sqrt_eigenvalues(mu.to(theta.dtype), sigma, tau, alpha), meta


def vector_theta(theta: Any, theta0: Any) -> torch.Tensor:
    """``theta`` as a float64 vector like ``theta0``: a scalar replaces the first (location)
    component only, the others keep their initial values; a vector must match."""
    t0 = torch.as_tensor(np.atleast_1d(np.asarray(theta0, dtype=np.float64)))
    t = theta if isinstance(theta, torch.Tensor) else torch.as_tensor(
        np.asarray(theta, dtype=np.float64))
    t = t.to(torch.float64)
    if t.ndim == 0:
        return torch.cat([t.reshape(1), t0[1:]]) if t0.numel() > 1 else t.reshape(1)
    if t.shape != t0.shape:
        raise ValueError(f"theta must be a scalar or have shape {tuple(t0.shape)}, got "
                         f"{tuple(t.shape)}")
    return t


def barycenter_field(basis, measures: list, *, center: bool = False) -> SpectrumField:
    """The W2 barycenter of Gaussian fields on one basis (commuting covariances): mean
    ``mean_j m_j``, ``sqrt(lambda) = mean_j sqrt(lambda_j)``. NtD measures enter through
    their fields before the mean removal (``center=True`` removes it from the samples)."""
    from .ama_bound import _w2_view

    fields = [_w2_view(q) for q in measures]
    mean = torch.stack([f.mean.double().expand(basis.grid_shape) for f in fields]).mean(0)
    if all(f.mean.ndim == 0 for f in fields):
        mean = mean.reshape(-1)[0]
    sqrt_eig = torch.stack([f.sqrt_eigenvalues.double() for f in fields]).mean(0)
    return SpectrumField(basis, mean=mean, sqrt_eigenvalues=sqrt_eig, center=center,
                         meta={"source": "W2 barycenter of the Q_j"})


def _ntd_setup(n: int = 128, n_modes: int | None = None) -> AMASetup:
    from ..measures import SineBasis1D
    from ..problems import get_problem
    from .operator_metatest import ntd_family

    problem = get_problem("ntd", n=n)
    nb = 4 * n - 4
    k = min(128, nb - 2) if n_modes is None else int(n_modes)
    basis = SineBasis1D(nb, k)
    w = basis.quadrature_weights.float()
    s = torch.linspace(0.0, 1.0, nb, dtype=torch.float64)

    def build(theta):
        t = vector_theta(theta, theta0)
        sqrt_eig, meta = _spectrum(t, basis.laplacian_eigenvalues)
        return SpectrumField(basis, mean=torch.sin(t[0] * (s - 0.5)), sqrt_eigenvalues=sqrt_eig,
                             center=True, meta={"omega": float(t[0].detach()), **meta})

    # omega = 4 pi, the paper's training spectrum sigma = 3^1.5, tau = 3, alpha = 2
    theta0 = [4 * math.pi, 1.5 * math.log(3.0), math.log(3.0), math.log(2.0)]
    return AMASetup(
        name="ntd", problem=problem, input_weights=w, output_weights=w,
        points=problem.coordinates()["points"], build=build, theta0=theta0,
        parameter=["omega", "log_sigma", "log_tau", "log_alpha"],
        bounds=[(-4 * math.pi, 4 * math.pi), (0.0, math.log(200.0)), (0.0, math.log(60.0)),
                (0.0, math.log(3.0))], update="de+adam",
        family=lambda j, seed: ntd_family(nb, n_measures=j, seed=seed, n_modes=k,
                                          dtype=torch.float64),
        branch=[nb, 256, 256, 128, 200], trunk=[2, 128, 128, 128, 200], jvp="forward",
        options={"n": n, "n_modes": k}, linear=True, basis=basis, center=True,
        component_theta=lambda p: [p["omega"], math.log(p["sigma"]), math.log(p["tau"]),
                                   math.log(p["alpha"])])


def _darcy_setup(n: int = 64, n_modes: int | None = None, offset_sd: Any = "family",
                 learn_spectrum: bool = True) -> AMASetup:
    """Darcy: ``theta = (m, log sigma, log tau, log alpha)``; ``log a = m + offset_sd eta +
    KLE``. ``offset_sd="family"`` sets the offset spread to the sd of the meta-test means (a
    design choice: ``J`` alone would shrink it to 0); set by :func:`prepare_setup`."""
    from ..measures import SineBasis2D
    from ..problems import get_problem
    from .operator_metatest import darcy_family

    problem = get_problem("darcy", n=n)
    k = min(n - 2, 32) if n_modes is None else int(n_modes)
    basis = SineBasis2D(n, k)
    w = basis.quadrature_weights.float()
    state = {"offset_sd": 0.0 if offset_sd == "family" else float(offset_sd)}

    def build(theta):
        t = vector_theta(theta, theta0)
        sqrt_eig, meta = _spectrum(t, basis.laplacian_eigenvalues)
        return SpectrumField(basis, mean=t[0], sqrt_eigenvalues=sqrt_eig,
                             offset_sd=state["offset_sd"],
                             meta={"m": float(t[0].detach()), **meta})

    theta0 = [0.0, math.log(3.0), math.log(3.0), math.log(2.0)]
    setup = AMASetup(
        name="darcy", problem=problem, input_weights=w, output_weights=w,
        points=problem.coordinates()["points"], build=build, theta0=theta0,
        parameter=["mean", "log_sigma", "log_tau", "log_alpha"],
        bounds=None, update="adam",
        family=lambda j, seed: darcy_family(basis, n_measures=j, seed=seed, dtype=torch.float64),
        branch=[n * n, 256, 256, 128, 200], trunk=[2, 128, 128, 128, 200], jvp="linearised",
        options={"n": n, "n_modes": k, "offset_sd": offset_sd, "learn_spectrum": learn_spectrum},
        basis=basis, mask=[True, learn_spectrum, learn_spectrum, learn_spectrum],
        component_theta=lambda p: [p["mean"], math.log(p["sigma"]), math.log(p["tau"]),
                                   math.log(p["alpha"])])
    setup.state = state
    setup.truth = _darcy_truth(problem, frozen_spectrum=not learn_spectrum)
    return setup


def _darcy_truth(problem, frozen_spectrum: bool = False) -> Callable:
    """``G*`` on samples of a Darcy :class:`SpectrumField` through the exact identity
    ``G*(c + v) = exp(-c) G*(v)`` for a constant ``c`` (``a -> e^c a`` scales the solution
    by ``e^-c``): the solves ``G*(v)`` of the KLE parts are cached per spectrum, so moving the
    mean (or the offset) needs no solve; a spectrum that requires grad is solved (adjoint)
    unless ``frozen_spectrum`` (the update never moves it: its gradient is discarded)."""
    cache: dict = {}

    def truth(nu, xi: torch.Tensor) -> torch.Tensor:
        if nu.sqrt_eigenvalues.requires_grad and not frozen_spectrum:
            base = problem(nu.kle_part(xi))
        else:
            key = (tuple(nu.sqrt_eigenvalues.detach().tolist()), xi.data_ptr(),
                   tuple(xi.shape))
            if key not in cache:
                cache.clear()
                with torch.no_grad():
                    cache[key] = problem(nu.detach().kle_part(xi))
            base = cache[key]
        scale = torch.exp(-nu.offsets(xi))
        return scale.reshape(-1, *[1] * (base.ndim - 1)) * base

    return truth


def _default_bounds(setup: AMASetup) -> list[tuple[float, float]]:
    """Bounds of the spectrum components (log sigma, log tau, log alpha) for a global search."""
    return [(-10.0, 10.0), (0.0, math.log(200.0)), (0.0, math.log(60.0)), (0.0, math.log(4.0))]


FAMILIES = ("single", "mixture")
MIXTURE_BOUNDS = ("component", "coupling")


def mixture_setup(single: AMASetup, bound: str = "component") -> AMASetup:
    """The ``"mixture"`` family of a built-in problem: ``nu(theta) = (1/K) sum_k
    nu_single(theta_k)`` (:class:`MixtureField`), ``theta`` the ``K`` component vectors of the
    single family concatenated, ``K`` = the number of ``Q_j``.

    ``theta0`` is set by :func:`prepare_setup` from the meta-test's own parameters
    (``single.component_theta``), so the start *is* the (stratified) mixture of the ``Q_j``
    when the family's parametrisation matches the meta-test's (NtD, Darcy). The update is
    Adam over all components (no bounds; a frozen component of the single family stays
    frozen in every component). ``J`` uses the mixture-coupling upper bound of W2 (see
    :class:`MixtureField`).
    """
    if bound not in MIXTURE_BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(MIXTURE_BOUNDS)}, got {bound!r}")
    if single.component_theta is None or np.ndim(single.theta0) == 0:
        raise ValueError(f"problem {single.name!r} has no mixture family (it needs a vector "
                         "theta and the meta-test's parameters in its coordinates)")
    d = len(single.theta0)
    names = list(single.parameter)

    def build(theta):
        t = theta if isinstance(theta, torch.Tensor) else torch.as_tensor(
            np.asarray(theta, dtype=np.float64))
        t = t.to(torch.float64).reshape(-1, d)
        return MixtureField([single.build(t[k]) for k in range(t.shape[0])],
                            meta={"family": "mixture", "n_components": int(t.shape[0])},
                            bound=bound)

    setup = AMASetup(
        name=single.name, problem=single.problem, input_weights=single.input_weights,
        output_weights=single.output_weights, points=single.points, build=build,
        theta0=None, parameter=names, bounds=None, update="adam", family=single.family,
        branch=single.branch, trunk=single.trunk, jvp=single.jvp,
        options={**single.options, "family": "mixture", "mixture_bound": bound},
        linear=single.linear,
        basis=single.basis, center=single.center, mask=single.mask, truth=single.truth,
        component_theta=single.component_theta)
    if getattr(single, "state", None) is not None:
        setup.state = single.state
    setup.single = single
    return setup


def prepare_setup(setup: AMASetup, metatest) -> AMASetup:
    """Settings that depend on the meta-test family: Darcy's offset spread ``"family"`` =
    the (population) sd of the ``Q_j`` means; the mixture family's ``theta0`` (the ``Q_j``'s
    own parameters, one component each), its parameter names and its mask."""
    if setup.theta0 is None and setup.initial_theta is not None:
        setup.theta0 = setup.initial_theta(metatest)
    if setup.options.get("family") == "mixture" and setup.theta0 is None:
        comps = [list(map(float, setup.component_theta(p))) for p in metatest.params]
        d = len(comps[0])
        setup.theta0 = [v for c in comps for v in c]
        base = list(setup.parameter)[:d]
        setup.parameter = [f"{n}_{k}" for k in range(len(comps)) for n in base]
        if setup.mask is not None:
            setup.mask = list(setup.mask)[:d] * len(comps)
        setup.options["n_components"] = len(comps)
    state = getattr(setup, "state", None)
    if state is not None and setup.options.get("offset_sd") == "family":
        means = [float(p["mean"]) for p in metatest.params]
        state["offset_sd"] = float(np.std(means)) if len(means) > 1 else 0.0
        setup.options["offset_sd_value"] = state["offset_sd"]
    return setup


def fit_fourier_gaussian(basis, x: Any, *, ddof: int = 1) -> SpectrumField:
    """The Gaussian fitted to samples ``x`` that is diagonal in the KLE ``basis``: the ``Q``
    of the Burgers study (paper SM F.6: the test pool "assumed Gaussian").

    With ``c = basis.project(x)`` (P, K) the coefficients of each sample (exact on the span of
    the basis), the fit has per-mode mean ``m_k = mean_i c_ik`` and variance
    ``v_k = sum_i (c_ik - m_k)^2 / (P - ddof)``; it is the :class:`SpectrumField` with mean
    field ``sum_k m_k phi_k`` and free ``sqrt_eigenvalues = sqrt(v_k)`` (K,), so its ``m2``
    and its ``W2`` to any field of the family on ``basis`` are closed forms
    (:meth:`SpectrumField.w2_squared_to`). Off-diagonal covariances are dropped (for a
    stationary periodic field they vanish in the Fourier basis).

    Parameters
    ----------
    basis : KLEBasis
    x : (P, *grid) samples, P > ddof
    ddof : 0 or 1 (default 1, the unbiased variance)

    The fraction of the samples' energy outside the span of the basis
    (``sum ||x - P x||_q^2 / sum ||x||_q^2``) is reported as ``meta["residual"]``.
    """
    xt = torch.as_tensor(x).to(torch.float64)
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    if tuple(xt.shape[1:]) != tuple(basis.grid_shape) or xt.shape[0] <= ddof:
        raise ValueError(f"x must have shape (P, {', '.join(map(str, basis.grid_shape))}) with "
                         f"P > {ddof}, got {tuple(xt.shape)}")
    c = basis.project(xt)
    mean_c = c.mean(0)
    var = ((c - mean_c) ** 2).sum(0) / (c.shape[0] - ddof)
    q = basis.quadrature_weights.to(torch.float64)
    rest = xt - basis.synthesize(c)
    residual = float((q * rest ** 2).sum() / (q * xt ** 2).sum().clamp_min(1e-300))
    return SpectrumField(basis, mean=basis.synthesize(mean_c[None])[0],
                         sqrt_eigenvalues=var.sqrt(),
                         meta={"source": "Gaussian fitted to the pool, diagonal in the basis",
                               "n_samples": int(c.shape[0]), "ddof": int(ddof),
                               "residual": residual})


#: The Gaussian process of the Burgers test pool (the paper's data file is not available, SPEC
#: §4): the FNO benchmark's prior ``N(0, 625 (-Laplace + 25 I)^-2)`` on the period-1 domain
#: carried to ``[0, 2 pi)`` by ``x -> 2 pi x``. Its Fourier variances
#: ``2 pi * 625 ((2 pi k)^2 + 25)^-2 = sigma^2 (k^2 + tau^2)^-alpha`` give this Matern field.
BURGERS_POOL_GP = {"alpha": 2.0, "tau": 5.0 / (2 * math.pi), "sigma": 25.0 / (2 * math.pi) ** 1.5}
#: The initial training field (SPEC §4): periodic KLE with alpha = 3, tau = 1.4, sigma = 5.
BURGERS_INITIAL = {"alpha": 3.0, "tau": 1.4, "sigma": 5.0}


def burgers_steps(n: int) -> int:
    """IF-RK4 steps of the Burgers AMA solver on ``n`` points, checked against 4000-step
    references for samples of the pool GP and of the initial field (max error relative
    to ``max |u0|``): n = 128 and 100 steps 2e-8; n = 256 and 200 steps 1.5e-7; n = 1024 and
    500 steps < 1e-7 (tests/problems/test_burgers.py); n > 2048: the paper's 2000 (only
    modes with ``nu k^2 dt < 1`` limit the step, so the count barely grows with n)."""
    return 100 if n <= 128 else 200 if n <= 256 else 500 if n <= 2048 else 2000


def _burgers_setup(n: int = 1024, n_modes: int | None = None, n_pool: int = 1843,
                   n_steps: int | None = None) -> AMASetup:
    """Burgers (paper §5, SM F.6): ``u0 -> u(., 1)`` on ``n`` periodic points of
    ``[0, 2 pi)``, ``nu = 0.1``.

    Training family: the periodic Matern KLE ``nu(theta)`` on :class:`FourierBasis1D`
    (``n_modes`` frequencies, default all below Nyquist; no constant mode), ``theta =
    (log sigma, log tau, log alpha)`` from :data:`BURGERS_INITIAL`, moved by L-BFGS-B with
    exact gradients (part1 through the model and the solver's discrete adjoint, ``m2`` and
    ``W2`` in closed form; paper SM F.6) within the box sigma, tau in [0.25, 10], alpha in
    [1.5, 5] (large, rough inputs steepen into shocks the grid cannot resolve: a trial point
    where the solver diverges counts as ``J = inf``).

    Test data: ``n_pool`` + held-out samples of :data:`BURGERS_POOL_GP`, labelled once by the
    same solver (:meth:`AMASetup.metatest`); ``Q`` in ``J`` is :func:`fit_fourier_gaussian`
    of the pool rows (never of the held-out rows), ``K = 1``. Norm: the quadrature L2 norm
    of ``[0, 2 pi)`` (weights ``2 pi / n``) for inputs and outputs.
    """
    from ..measures import FourierBasis1D, GaussianRandomField
    from ..problems import get_problem
    from .operator_metatest import pool_operator_metatest

    n = int(n)
    steps = burgers_steps(n) if n_steps is None else int(n_steps)
    problem = get_problem("burgers", n=n, n_steps=steps, dtype="float64")
    k = problem.n_modes if n_modes is None else int(n_modes)
    n_pool = int(n_pool)
    if n_pool < 2:
        raise ValueError(f"n_pool must be at least 2 (the fitted Q needs a variance), got "
                         f"{n_pool}")
    basis = FourierBasis1D(n, k, period=2 * math.pi)
    w = basis.quadrature_weights.float()
    mu = basis.laplacian_eigenvalues

    def build(theta):
        t = vector_theta(theta, theta0)
        sigma, tau, alpha = torch.exp(t[0]), torch.exp(t[1]), torch.exp(t[2])
        return SpectrumField(basis, mean=0.0,
                             sqrt_eigenvalues=matern_sqrt_eigenvalues(mu, sigma, tau, alpha),
                             meta={"sigma": float(sigma.detach()), "tau": float(tau.detach()),
                                   "alpha": float(alpha.detach())})

    def pool_gp():
        return GaussianRandomField(basis, dtype=torch.float64, **BURGERS_POOL_GP)

    def family(j, seed):
        return [pool_gp()], [{"source": "pool GP", **BURGERS_POOL_GP}]

    def metatest(labeller, *, n_seen, n_unseen, seed, output_weights=None, progress=None):
        total = n_pool + int(n_seen) + int(n_unseen)
        x, y = labeller.label(pool_gp(), total, int(seed) * 1000)
        if progress is not None:
            progress()
        q = fit_fourier_gaussian(basis, x[:n_pool])
        return pool_operator_metatest(
            x, y, n_pool=n_pool, n_seen=n_seen, n_unseen=n_unseen, measure=q,
            output_weights=output_weights,
            params={"source": "Gaussian fitted to the pool (diagonal in Fourier)",
                    "pool_gp": dict(BURGERS_POOL_GP), "n_pool": n_pool,
                    "n_heldout": int(n_seen) + int(n_unseen),
                    "residual": q.meta["residual"]})

    theta0 = [math.log(BURGERS_INITIAL["sigma"]), math.log(BURGERS_INITIAL["tau"]),
              math.log(BURGERS_INITIAL["alpha"])]
    points = (np.arange(n, dtype=np.float64) / n)[:, None]      # x / (2 pi), the trunk input
    return AMASetup(
        name="burgers", problem=problem, input_weights=w, output_weights=w, points=points,
        build=build, theta0=theta0, parameter=["log_sigma", "log_tau", "log_alpha"],
        bounds=[(math.log(0.25), math.log(10.0)), (math.log(0.25), math.log(10.0)),
                (math.log(1.5), math.log(5.0))], update="lbfgsb", family=family,
        branch=[n, 1024, 512, 256, 128, 128], trunk=[1, 128, 128, 128, 128, 128], jvp="fd",
        options={"n": n, "n_modes": k, "n_steps": steps, "n_pool": n_pool,
                 "pool_gp": dict(BURGERS_POOL_GP), "initial": dict(BURGERS_INITIAL)},
        metatest=metatest)


#: The particle starts of radiative AMA: the paper's ``c = 1e-3 N(0, I)`` and the empirical
#: mixture of the ``Q_k`` (particle ``i`` a sample of ``Q_{i mod K}``).
PARTICLE_STARTS = ("paper", "mixture")
#: The scale of the paper's initial particles ``c = scale * N(0, I)`` (SPEC §4).
PAPER_START_SCALE = 1e-3


def _radiative_family(basis, n_measures: int, seed: int) -> tuple[list, list[dict]]:
    """The radiative meta-test (SPEC §4): ``K`` log-normal scattering fields ``a = exp(m +
    v_k)``, ``v_k`` a sine-KLE Gaussian field with alpha = 2, tau = 1, sigma_k = k (k = 1..K;
    K = 3 gives the SPEC's 1, 2, 3) around one fixed mean ``m``, itself drawn once (``seed``)
    from the field with alpha = 2, tau = 1, sigma = 1. Second moments about ``a = 1``."""
    from ..measures import GaussianRandomField, LogNormalField

    g = torch.Generator().manual_seed(int(seed))
    mean = GaussianRandomField(basis, alpha=2.0, tau=1.0, sigma=1.0,
                               dtype=torch.float64).sample(1, generator=g)[0]
    measures, params = [], []
    for k in range(1, int(n_measures) + 1):
        f = GaussianRandomField(basis, alpha=2.0, tau=1.0, sigma=float(k), mean=mean,
                                dtype=torch.float64)
        measures.append(LogNormalField(f, origin=1.0))
        params.append({"alpha": 2.0, "tau": 1.0, "sigma": float(k), "mean_seed": int(seed),
                       "mean_field": "GP alpha = 2, tau = 1, sigma = 1"})
    return measures, params


def _reference_bank(n_samples: int) -> Callable[[Any], torch.Tensor]:
    """``Q -> (S, *grid)`` fixed samples of ``Q`` (drawn once per measure, seeded by its
    description, so every evaluation of W2 uses the same samples: ``J`` is deterministic)."""
    import json
    import zlib

    bank: dict[int, tuple[Any, torch.Tensor]] = {}

    def reference(q) -> torch.Tensor:
        if id(q) not in bank:
            seed = zlib.crc32(json.dumps(q.to_dict(), sort_keys=True).encode()) + 12_345
            with torch.no_grad():
                bank[id(q)] = (q, q.sample(int(n_samples), generator=seed).double())
        return bank[id(q)][1]

    return reference


def _mixture_particles(basis, measures: list, m: int, seed: int) -> torch.Tensor:
    """``m`` particles from the empirical mixture of the ``Q_k``: particle ``i`` is the
    coefficient vector of ``log a`` for a sample of ``Q_{i mod K}`` (exact: the ``Q_k`` live
    on the particles' basis). Returns (m, d)."""
    g = torch.Generator().manual_seed(int(seed))
    k = len(measures)
    rows = torch.empty(m, basis.n_terms, dtype=torch.float64)
    for j, q in enumerate(measures):
        idx = torch.arange(j, m, k)
        if idx.numel():
            rows[idx] = basis.project(q.log_field.sample(idx.numel(), generator=g).double())
    return rows


def _radiative_setup(n: int = 51, n_modes: int | None = None, knudsen: float = 1.0 / 8.0,
                     particle_start: str = "paper", n_particles: int = 120,
                     w2_samples: int | None = None, start_seed: int = 0) -> AMASetup:
    """Radiative transport with particles (paper §4.2, SM F.5; SPEC §4): ``a -> rho``.

    ``nu`` is the empirical measure of ``n_particles`` particles ``c_i`` (sine-basis
    coefficients, ``n_modes`` per side, default ``min(n - 2, 20)``: the authors' code) of the
    log-scattering, ``a_i = exp(c_i . phi)`` (:class:`~wheretolearn.measures.FieldParticles`),
    moved by the Wasserstein gradient flow of :mod:`.ama_particles` (update ``"particles"``).
    ``m2``, ``W2`` (``ot.emd`` against ``w2_samples`` fixed samples per ``Q_k``, default
    ``n_particles``) and every error in the trapezoid L2 norm of the grid; ``m2`` and
    ``G(0)`` taken at ``a = 1`` (``origin``). Starts (``particle_start``): ``"paper"``, ``c =
    1e-3 N(0, I)`` (seed ``start_seed``); ``"mixture"``, the empirical mixture of the ``Q_k``
    (set by :func:`prepare_setup` from the meta-test). Meta-test: :func:`_radiative_family`.
    """
    from ..measures import FieldParticles, SineBasis2D
    from ..problems import get_problem

    if particle_start not in PARTICLE_STARTS:
        raise ValueError(f"particle_start must be one of {', '.join(PARTICLE_STARTS)}, got "
                         f"{particle_start!r}")
    n, m = int(n), int(n_particles)
    if m < 2:
        raise ValueError(f"n_particles must be at least 2, got {n_particles}")
    problem = get_problem("radiative", n=n, knudsen=float(knudsen))
    k = min(n - 2, 20) if n_modes is None else int(n_modes)
    basis = SineBasis2D(n, k)
    w = basis.quadrature_weights.float()
    s = m if w2_samples is None else int(w2_samples)
    reference = _reference_bank(s)

    def build(theta):
        c = theta if isinstance(theta, torch.Tensor) else torch.as_tensor(
            np.asarray(theta, dtype=np.float64))
        return FieldParticles(basis, c.to(torch.float64), origin=1.0, reference=reference)

    theta0 = None
    if particle_start == "paper":
        g = torch.Generator().manual_seed(int(start_seed))
        theta0 = PAPER_START_SCALE * torch.randn(m, basis.n_terms, generator=g,
                                                 dtype=torch.float64)

    def initial_theta(metatest):
        return _mixture_particles(basis, list(metatest.measures), m, start_seed)

    hidden = [100, 100, 100, 64, 32]
    return AMASetup(
        name="radiative", problem=problem, input_weights=w, output_weights=w,
        points=problem.coordinates()["points"], build=build, theta0=theta0,
        parameter="particles", bounds=None, update="particles",
        family=lambda j, seed: _radiative_family(basis, j, seed),
        branch=[n * n, *hidden], trunk=[2, *hidden], jvp="fd",
        options={"n": n, "n_modes": k, "knudsen": float(knudsen),
                 "particle_start": particle_start, "n_particles": m, "w2_samples": s,
                 "start_seed": int(start_seed), "origin": 1.0},
        origin=1.0, theta_summary=lambda t: FieldParticles(basis, t.detach()).to_dict(),
        initial_theta=initial_theta)


#: Builders of AMA setups by problem name (keyword options: grid size ``n``, ``n_modes``;
#: Darcy ``offset_sd``, ``learn_spectrum``; Burgers ``n_pool``, ``n_steps``; radiative
#: ``knudsen``, ``particle_start``, ``n_particles``, ``w2_samples``, ``start_seed``).
AMA_SETUPS: dict[str, Callable[..., AMASetup]] = {"ntd": _ntd_setup, "darcy": _darcy_setup,
                                                  "burgers": _burgers_setup,
                                                  "radiative": _radiative_setup}
#: Problems whose test data is one labelled pool (``AMASetup.metatest``): the only ones the
#: active-learning comparison (``compare``) runs on.
POOL_AMA_PROBLEMS = ("burgers",)


def available_ama_problems() -> list[str]:
    return sorted(AMA_SETUPS)


def grid_weights(shape: tuple[int, ...]) -> torch.Tensor:
    """Trapezoid weights (float32) of a uniform grid of ``shape`` on ``[0, 1]^d`` (d = 1, 2),
    boundary nodes included; other shapes get equal weights ``1 / size``. The weights sum
    to 1, so ``sum w u^2`` is the grid's L2 norm squared on the unit domain."""
    from ..measures.fields import trapezoid_weights

    shape = tuple(int(s) for s in shape)
    if len(shape) in (1, 2) and min(shape) >= 2:
        sides = [trapezoid_weights(m) for m in shape]
        w = sides[0] if len(shape) == 1 else sides[0][:, None] * sides[1][None, :]
    else:
        w = torch.full(shape, 1.0 / max(1, math.prod(shape)), dtype=torch.float64)
    return w.float()


def grid_points(shape: tuple[int, ...]) -> np.ndarray:
    """``(prod(shape), d)`` node coordinates of a uniform grid of ``shape`` on ``[0, 1]^d``
    (row-major, the order of ``reshape``); a 0-d or 3-d+ shape is numbered along ``[0, 1]``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        a, b = (np.linspace(0.0, 1.0, m) for m in shape)
        return np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.linspace(0.0, 1.0, max(1, math.prod(shape)))[:, None]


def _output_points(problem: Any) -> np.ndarray:
    size = math.prod(problem.output_shape)
    pts = problem.coordinates().get("points") if hasattr(problem, "coordinates") else None
    if pts is not None:
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim == 2 and pts.shape[0] == size:
            return pts
    return grid_points(problem.output_shape)


def field_setup(problem: Any, *, n_modes: int | None = None,
                bounds: tuple[float, float] | None = None,
                mean_range: tuple[float, float] = (0.0, 1.0), name: str | None = None) -> AMASetup:
    """A Darcy-like :class:`AMASetup` for a user problem whose input is a grid field.

    ``nu(theta) = GRF(alpha = 2, tau = 3, sigma = tau^(alpha - dim/2), mean = theta)`` on a
    sine basis of the problem's input grid (``(n,)`` on [0, 1] or ``(n, n)`` on [0, 1]^2),
    ``theta0 = 0``; meta-test family :func:`field_family` (means on ``mean_range``); norms:
    the basis' quadrature weights on the input, :func:`grid_weights` on the output; trunk
    inputs: ``problem.coordinates()["points"]`` when it has one row per output value, else
    :func:`grid_points`. Update: Adam through model and solver when
    ``problem.differentiable``, else differential evolution within ``bounds`` (default
    ``mean_range`` widened by its length on each side). Lipschitz: ``jvp="fd"`` with the
    autograd adjoint when differentiable, ``"fd-random"`` otherwise.
    """
    from ..measures import GaussianRandomField, SineBasis1D, SineBasis2D
    from .operator_metatest import field_family

    label = name or getattr(problem, "name", "user")
    shape = tuple(int(s) for s in problem.input_shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != shape[1]) or min(shape) < 5:
        raise ValueError(
            f"problem {label!r}: AMA learns a distribution of input *fields*; its input_shape "
            f"{shape} is not (n,) or (n, n) with n >= 5. Return an AMASetup from the factory "
            "for other inputs (docs/user_solver.md), or use `bilevel` for vectors")
    n = shape[0]
    if len(shape) == 1:
        k = min(n - 2, 64) if n_modes is None else int(n_modes)
        basis = SineBasis1D(n, k)
    else:
        k = min(n - 2, 32) if n_modes is None else int(n_modes)
        basis = SineBasis2D(n, k)
    lo, hi = (float(v) for v in mean_range)
    if bounds is None:
        bounds = (lo - (hi - lo), hi + (hi - lo))
    bounds = (float(bounds[0]), float(bounds[1]))
    if not (math.isfinite(bounds[0]) and math.isfinite(bounds[1]) and bounds[0] < bounds[1]):
        raise ValueError(f"bounds must be two finite numbers low < high, got {bounds!r}")
    points = _output_points(problem)
    differentiable = bool(getattr(problem, "differentiable", False))
    size_in = math.prod(shape)

    def build(theta):
        return GaussianRandomField(basis, alpha=2.0, tau=3.0, mean=theta, dtype=torch.float64)

    return AMASetup(
        name=label, problem=problem, input_weights=basis.quadrature_weights.float(),
        output_weights=grid_weights(problem.output_shape), points=points, build=build,
        theta0=0.0, parameter="mean", bounds=bounds,
        update="adam" if differentiable else "de",
        family=lambda j, seed: field_family(basis, n_measures=j, seed=seed,
                                            mean_range=(lo, hi), dtype=torch.float64),
        branch=[size_in, 256, 256, 128, 200], trunk=[points.shape[1], 128, 128, 128, 200],
        jvp="fd" if differentiable else "fd-random",
        options={"n": n, "n_modes": k, "bounds": list(bounds), "mean_range": [lo, hi],
                 "input_shape": list(shape), "output_shape": list(problem.output_shape)})


def _user_setup(spec: str, *, problem_options: dict | None, n_modes: int | None,
                bounds: Any, mean_range: Any) -> AMASetup:
    """Resolve a user problem (import path, file path, plugin) into an :class:`AMASetup`."""
    from ..problems import Problem, available_problems
    from ..problems.plugins import find_factory
    from ..problems.simulator import SimulatorProblem

    options = dict(problem_options or {})
    factory = find_factory(spec)
    if factory is None:
        builtin = set(available_problems())
        why = (f"problem {spec!r} is not an AMA problem" if spec in builtin
               else f"unknown AMA problem {spec!r}")
        raise ValueError(f"{why}; choose one of {', '.join(available_ama_problems())}, an "
                         "installed plugin or an import path 'package.module:factory'")
    try:
        obj = factory(**options)
    except TypeError as exc:
        raise ValueError(f"problem {spec!r}: its factory rejected problem_options "
                         f"{options!r} ({exc})") from exc
    if isinstance(obj, AMASetup):
        return obj
    if not isinstance(obj, Problem):
        raise ValueError(f"problem {spec!r}: the factory returned a {type(obj).__name__}, "
                         "not a wheretolearn Problem or an AMASetup")
    if isinstance(obj, SimulatorProblem):
        raise ValueError(f"problem {spec!r} is a time-stepping simulator of parameter vectors; "
                         "AMA learns distributions of input fields (use `online`, `generate` "
                         "or `bilevel` for it)")
    obj.record_spec(spec, options)                          # Dask workers rebuild it
    kw = {} if mean_range is None else {"mean_range": tuple(mean_range)}
    return field_setup(obj, n_modes=n_modes, bounds=None if bounds is None else tuple(bounds),
                       name=spec, **kw)


def ama_setup(name: str, *, problem_options: dict | None = None, bounds: Any = None,
              mean_range: Any = None, **options: Any) -> AMASetup:
    """The :class:`AMASetup` of problem ``name`` (the one place problems are looked up).

    ``name`` is a built-in AMA problem (``options``: grid size ``n``, ``n_modes``, and those
    of :data:`AMA_SETUPS`) or a user problem (see the module docstring; ``problem_options``
    go to its factory, ``n_modes``, ``bounds`` and ``mean_range`` to :func:`field_setup`).
    """
    if name in AMA_SETUPS:
        if problem_options:
            raise ValueError(f"problem_options are for user problems; {name!r} takes n and "
                             "n_modes")
        if mean_range is not None:
            raise ValueError(f"mean_range is for user field problems; {name!r} has its own "
                             "meta-test family")
        family = options.pop("family", None) or "single"
        mixture_bound = options.pop("mixture_bound", None) or "component"
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
        if family == "mixture" and name == "darcy" and options.get("offset_sd") is None:
            options["offset_sd"] = 0.0          # the Q_j have no random offset
        setup = AMA_SETUPS[name](**{k: v for k, v in options.items() if v is not None})
        if family == "mixture":
            if bounds is not None:
                raise ValueError("bounds are for the single family's global update; the "
                                 "mixture family is updated by Adam without bounds")
            return mixture_setup(setup, bound=mixture_bound)
        if bounds is not None:
            b = (float(bounds[0]), float(bounds[1]))
            if isinstance(setup.bounds, list) or (setup.bounds is None and
                                                  isinstance(setup.theta0, list)):
                rest = list(setup.bounds or [])[1:] or _default_bounds(setup)[1:]
                setup.bounds = [b, *rest]
            else:
                setup.bounds = b
        return setup
    if not isinstance(name, str) or not name:
        raise ValueError(f"problem must be a name or an import path, got {name!r}")
    if options.get("family") not in (None, "single") or options.get("mixture_bound"):
        raise ValueError("the mixture family is for the built-in problems (ntd, darcy)")
    return _user_setup(name, problem_options=problem_options, n_modes=options.get("n_modes"),
                       bounds=bounds, mean_range=mean_range)
