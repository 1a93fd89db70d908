"""A tiny AMA study set-up shared by the AMA tests: the setup, its labeller, a meta-test of
``k`` measures (3 seen, 4 unseen samples each) and a small DeepONet factory."""

from wheretolearn.design.ama_problems import ama_setup, prepare_setup
from wheretolearn.design.labelling import Labeller
from wheretolearn.design.operator_metatest import MetaTestDraws, make_operator_metatest
from wheretolearn.models import DeepONet


def small_ama(name, n, k=4, dtype=None, *, prepare=False, **options):
    """``(setup, labeller, metatest, factory)``; ``prepare``: the setup prepared for the
    meta-test (:func:`prepare_setup`, e.g. the mixture family started at the Q_j)."""
    s = ama_setup(name, n=n, **options)
    lab = Labeller(s.problem)
    ms, ps = s.family(k, 0)
    mt = make_operator_metatest(lab, ms, MetaTestDraws(3, 4), params=ps,
                                output_weights=s.output_weights)
    if prepare:
        s = prepare_setup(s, mt)

    def factory(seed):
        return DeepONet([s.branch[0], 32, 16], [2, 32, 16], s.points,
                        output_shape=s.problem.output_shape, seed=seed, dtype=dtype)

    return s, lab, mt, factory
