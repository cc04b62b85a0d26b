"""Coding schemes: which subNNs carry each class. `scheme` (the K x N table, its metrics, JSON,
the shipped `tables/`), `generate` (Algorithm 1 + algebraic pools + column balancing)."""
from .generate import generate_scheme, max_codewords_bound
from .scheme import *  # noqa: F401,F403
from .scheme import __all__ as _scheme_all

__all__ = list(_scheme_all) + ['generate_scheme', 'max_codewords_bound']
