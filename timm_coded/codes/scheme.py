"""Coding schemes: the K x N binary table that assigns every class a path through a coded stage.

Row k is the codeword of class k: which of the N subNNs of a coded block carry that class.
Every row has exactly N_act ones (paper rule A); good schemes have a large minimum pairwise
Hamming distance H_min (rule B) and balanced column sums (rule C).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..constants import CIFAR10_CLASSES
from ..errors import SchemeError, UnknownClassError

__all__ = [
    'CodingScheme', 'SchemeError', 'builtin_scheme', 'list_builtin_schemes', 'builtin_name',
    'load_scheme', 'CIFAR10_CLASSES',
]


def _as_bool_table(codewords: Union[np.ndarray, Sequence[Sequence[int]], Sequence[str]]) -> np.ndarray:
    if isinstance(codewords, np.ndarray):
        table = codewords
    else:
        rows = list(codewords)
        if not rows:
            raise SchemeError('a coding scheme needs at least one codeword, got none')
        if all(isinstance(r, str) for r in rows):
            bad = [r for r in rows if set(r) - {'0', '1'}]
            if bad:
                raise SchemeError(f'codewords must be strings of 0 and 1, got {bad[0]!r}')
            lengths = {len(r) for r in rows}
            if len(lengths) != 1:
                raise SchemeError(f'codewords have different lengths {sorted(lengths)}')
            table = np.array([[c == '1' for c in r] for r in rows])
        else:
            try:
                table = np.asarray(rows)
            except ValueError as e:  # ragged rows
                raise SchemeError(f'codewords have different lengths: {e}') from None
    if table.ndim != 2 or table.size == 0:
        raise SchemeError(f'a coding scheme is a non-empty K x N table, got shape {tuple(table.shape)}')
    if table.dtype != np.bool_:
        if not np.isin(table, (0, 1)).all():
            raise SchemeError('codewords must be binary (0/1); found other values')
        table = table.astype(bool)
    return table


@dataclass(frozen=True, eq=False)
class CodingScheme:
    """K codewords of length N, each with exactly N_act ones.

    Args:
        codewords: K x N table of 0/1 (array, nested lists, or '0101..' strings).
        class_names: optional names of the K classes, in row order.
        name: optional identifier (built-in schemes use e.g. 'k10_n10_a5').
        source: optional provenance (the paper table or the generator call that produced it).
    """
    codewords: np.ndarray
    class_names: Optional[tuple] = None
    name: Optional[str] = None
    source: Optional[str] = None
    _metrics: dict = field(default_factory=dict, repr=False, compare=False)

    def __init__(self, codewords, class_names: Optional[Iterable[str]] = None, name: Optional[str] = None,
                 source: Optional[str] = None):
        table = _as_bool_table(codewords)
        table.setflags(write=False)
        weights = table.sum(axis=1)
        if (weights != weights[0]).any():
            bad = int(np.flatnonzero(weights != weights[0])[0])
            raise SchemeError(
                f'every codeword needs the same number of ones (N_act); row 0 has {int(weights[0])}, '
                f'row {bad} has {int(weights[bad])}')
        num_classes, num_subnns = table.shape
        num_active = int(weights[0])
        if num_active == 0:
            raise SchemeError('codewords with no active subNN carry no class')
        if num_classes > math.comb(num_subnns, num_active):
            raise SchemeError(
                f'{num_classes} classes need {num_classes} distinct codewords, but only '
                f'C({num_subnns},{num_active}) = {math.comb(num_subnns, num_active)} exist')
        packed = {r.tobytes(): i for i, r in enumerate(table)}
        if len(packed) != num_classes:
            seen = {}
            for i, r in enumerate(table):
                if r.tobytes() in seen:
                    raise SchemeError(f'classes {seen[r.tobytes()]} and {i} have the same codeword')
                seen[r.tobytes()] = i
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if len(class_names) != num_classes:
                raise SchemeError(f'{len(class_names)} class names for {num_classes} codewords')
            if len(set(class_names)) != len(class_names):
                raise SchemeError('class names must be unique')
        object.__setattr__(self, 'codewords', table)
        object.__setattr__(self, 'class_names', class_names)
        object.__setattr__(self, 'name', name)
        object.__setattr__(self, 'source', None if source is None else str(source))
        object.__setattr__(self, '_metrics', {})

    # --- shape -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.codewords.shape[0])

    @property
    def num_subnns(self) -> int:
        return int(self.codewords.shape[1])

    @property
    def num_active(self) -> int:
        return int(self.codewords[0].sum())

    @property
    def ratio(self) -> float:
        """r = N_act / N; r == 1 means the stage is uncoded."""
        return self.num_active / self.num_subnns

    @property
    def is_uncoded(self) -> bool:
        return self.num_active == self.num_subnns

    # --- quality metrics (paper rules B and C) -----------------------------------------------
    @property
    def min_distance(self) -> int:
        """H_min: the smallest Hamming distance between two codewords (N for a single class)."""
        if 'h_min' not in self._metrics:
            if self.num_classes < 2:
                self._metrics['h_min'] = self.num_subnns
            else:
                self._metrics['h_min'] = int(min(self.distance_histogram()))
        return self._metrics['h_min']

    def distance_histogram(self) -> dict:
        """{Hamming distance: number of class pairs at that distance}, smallest distance first.

        Two schemes with the same H_min differ in how many pairs sit at H_min (fewer is better
        for nearest-codeword decoding)."""
        if 'hist' not in self._metrics:
            t = self.codewords.astype(np.int32)
            # d(a, b) = |a| + |b| - 2 a.b, and every row has weight N_act
            dist = 2 * self.num_active - 2 * (t @ t.T)
            pairs = dist[np.triu_indices(self.num_classes, k=1)]
            values, counts = np.unique(pairs, return_counts=True)
            self._metrics['hist'] = {int(v): int(c) for v, c in zip(values, counts)}
        return dict(self._metrics['hist'])

    @property
    def column_sums(self) -> np.ndarray:
        """How many classes each subNN carries."""
        return self.codewords.sum(axis=0).astype(np.int64)

    @property
    def column_sum_range(self) -> tuple:
        s = self.column_sums
        return int(s.min()), int(s.max())

    def active_subnns(self, cls: int) -> tuple:
        """Indices of the subNNs that carry class `cls`."""
        return tuple(int(i) for i in np.flatnonzero(self.codewords[cls]))

    def class_index(self, cls: Union[int, str]) -> int:
        """Row of a class given by index or name, with a clear error for unknown classes."""
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            if not 0 <= int(cls) < self.num_classes:
                raise UnknownClassError(f'class index {cls} out of range: the scheme has {self.num_classes} classes')
            return int(cls)
        if isinstance(cls, str):
            if self.class_names is not None and cls in self.class_names:
                return self.class_names.index(cls)
            if cls.isdigit():
                return self.class_index(int(cls))
            known = ', '.join(self.class_names) if self.class_names else 'none (use an index)'
            raise UnknownClassError(f'unknown class name {cls!r}; known classes: {known}')
        raise SchemeError(f'a class is an index or a name, got {type(cls).__name__}')

    def with_class_names(self, class_names: Iterable[str]) -> 'CodingScheme':
        return CodingScheme(self.codewords, class_names=class_names, name=self.name, source=self.source)

    def as_strings(self) -> list:
        return [''.join('1' if b else '0' for b in row) for row in self.codewords]

    def summary(self) -> str:
        s_min, s_max = self.column_sum_range
        return (f'K={self.num_classes} N={self.num_subnns} N_act={self.num_active} '
                f'H_min={self.min_distance} S_min={s_min} S_max={s_max}')

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {'format': 'timm-coded-scheme/1'}
        if self.name is not None:
            d['name'] = self.name
        if self.source is not None:
            d['source'] = self.source
        if self.class_names is not None:
            d['class_names'] = list(self.class_names)
        d['codewords'] = self.as_strings()  # one '0101..' string per class: compact and diffable
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'CodingScheme':
        if not isinstance(d, dict) or 'codewords' not in d:
            raise SchemeError("a serialised scheme is a JSON object with a 'codewords' list")
        fmt = d.get('format', 'timm-coded-scheme/1')
        if fmt != 'timm-coded-scheme/1':
            raise SchemeError(f"unsupported scheme format {fmt!r}; this version reads 'timm-coded-scheme/1'")
        return cls(d['codewords'], class_names=d.get('class_names'), name=d.get('name'), source=d.get('source'))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> 'CodingScheme':
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SchemeError(f'not a JSON coding scheme: {e}') from None
        return cls.from_dict(d)

    def save(self, path: Union[str, Path]) -> None:
        from .._io import atomic_write_text

        atomic_write_text(Path(path), self.to_json())  # never half a file, never a stray .tmp

    def __eq__(self, other) -> bool:
        return isinstance(other, CodingScheme) and np.array_equal(self.codewords, other.codewords)

    def __hash__(self) -> int:
        return hash(self.codewords.tobytes() + bytes(self.codewords.shape))

    def __repr__(self) -> str:
        return f'CodingScheme({self.name or "unnamed"}: {self.summary()})'


def builtin_name(num_classes: int, num_subnns: int, num_active: int) -> str:
    return f'k{num_classes}_n{num_subnns}_a{num_active}'


@lru_cache(maxsize=None)
def _builtin_index() -> dict:
    root = resources.files(__package__) / 'tables'
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith('.json'):
            out[entry.name[:-5]] = entry
    return out


def list_builtin_schemes() -> list:
    return sorted(_builtin_index())


@lru_cache(maxsize=None)
def _load_builtin(name: str) -> CodingScheme:
    index = _builtin_index()
    if name not in index:
        raise SchemeError(f'no built-in coding scheme {name!r}; built-in: {", ".join(list_builtin_schemes())}')
    scheme = CodingScheme.from_json(index[name].read_text())
    return CodingScheme(scheme.codewords, class_names=scheme.class_names, name=name, source=scheme.source)


def builtin_scheme(num_classes_or_name: Union[int, str], num_subnns: Optional[int] = None,
                   num_active: Optional[int] = None) -> CodingScheme:
    """A shipped scheme, by name ('k10_n10_a5') or by (K, N, N_act)."""
    if isinstance(num_classes_or_name, str):
        return _load_builtin(num_classes_or_name)
    if num_subnns is None or num_active is None:
        raise SchemeError('builtin_scheme needs a name or all of (num_classes, num_subnns, num_active)')
    return _load_builtin(builtin_name(num_classes_or_name, num_subnns, num_active))


def load_scheme(name_or_path: Union[str, Path]) -> CodingScheme:
    """A built-in scheme by name, or a scheme saved as JSON at a path."""
    if isinstance(name_or_path, str) and name_or_path in _builtin_index():
        return _load_builtin(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise SchemeError(
            f'{str(name_or_path)!r} is neither a built-in scheme ({", ".join(list_builtin_schemes())}) nor a file')
    return CodingScheme.from_json(path.read_text())
