"""timm's own tests that select models by module (so never pick ours), called for our names.

The rest of timm's model suite runs against our models directly:
`pytest -p timm_coded .cache/timm-src/timm-<ver>/tests/test_models.py -k coded_` (see README).
"""
import os

import pytest
import timm

import timm_coded  # noqa: F401  (registers the models)
from timm_suite import load_timm_test_models

CODED = timm.list_models('coded_*')
# the ImageNet-size nets are covered by the main suite; here the small and CIFAR shapes keep this fast
FAST = ['coded_resnext17_10x2d', 'coded_resnext29_10x11d']

_upstream = None


def upstream():
    global _upstream
    if _upstream is None:
        try:
            _upstream = load_timm_test_models(fetch=bool(os.environ.get('CI')))
        except Exception as e:  # no registry access outside CI: say so
            pytest.fail(f'could not fetch timm tests: {e}') if os.environ.get('CI') else pytest.skip(str(e))
        if _upstream is None:
            if os.environ.get('CI'):
                pytest.fail('timm tests not found (run `python dev.py test`)')
            pytest.skip('timm source tests not fetched; run `python dev.py test` or tests/timm_suite.py')
    return _upstream


def test_every_model_is_registered():
    assert {'coded_resnext29_10x11d', 'coded_resnext29_20x6d', 'coded_resnext50_32x4d', 'coded_resnext50',
            'coded_resnext17_10x2d'} <= set(CODED)


@pytest.mark.parametrize('model_name', CODED)
def test_forward_intermediates(model_name):
    upstream().test_model_forward_intermediates(model_name, 1)


@pytest.mark.parametrize('model_name', FAST)
def test_forward_intermediates_getter_features(model_name):
    upstream().test_model_forward_intermediates_features(model_name, 1)


@pytest.mark.parametrize('model_name', FAST)
def test_prune_intermediate_layers_contract(model_name):
    upstream().test_prune_intermediate_layers_contract(model_name)


@pytest.mark.parametrize('model_name', FAST)
def test_prune_intermediate_layers_params_used(model_name):
    upstream().test_prune_intermediate_layers_params_used(model_name)
