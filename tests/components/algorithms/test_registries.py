"""Every registry name resolves through its getter; unknown names list the choices."""

import pytest

import components.algorithms as algorithms
from components.algorithms import REGISTRIES

GETTERS = {
    "aggregation": algorithms.get_aggregation,
    "kl_estimator": algorithms.get_kl_estimator,
    "advantage_estimator": algorithms.get_advantage_estimator,
    "dpo_loss": algorithms.get_dpo_loss,
    "distill_loss": algorithms.get_distill_loss,
    "policy_loss": algorithms.get_policy_loss,
}


def test_every_registry_has_a_getter():
    assert set(GETTERS) == set(REGISTRIES)


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_names_resolve_and_unknown_lists_choices(kind):
    registry, getter = REGISTRIES[kind], GETTERS[kind]
    assert registry, kind
    for name, fn in registry.items():
        assert getter(name) is fn and callable(fn)
    with pytest.raises(ValueError) as err:
        getter("no-such-name")
    for name in registry:
        assert name in str(err.value)


def test_public_names_exist():
    for name in algorithms.__all__:
        assert hasattr(algorithms, name), name
