"""Coding schemes: the K x N binary table that assigns every class a path through a coded stage.

Row k is the codeword of class k: which of the N subNNs of a coded block carry that class.
Every row has exactly N_act ones (paper rule A); good schemes have a large minimum pairwise
Hamming distance H_min (rule B) and balanced column sums (rule C).
"""
from __future__ import annotations

import itertools
import json
import time
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .constants import CIFAR10_CLASSES
from .errors import SchemeError, UnknownClassError

__all__ = [
    'CodingScheme', 'SchemeError', 'builtin_scheme', 'list_builtin_schemes', 'builtin_name',
    'load_scheme', 'CIFAR10_CLASSES', 'generate_scheme', 'max_codewords_bound',
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
        from ._io import atomic_write_text

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
    root = resources.files('timm_coded') / 'schemes'
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


# ---------------------------------------------------------------------------------------------
# Generation: the paper's Algorithm 1, made to reach the Appendix A tables and beyond.
#
# A codeword of length N is held as a uint64 whose bit N-1-j is subNN j, so ascending integers
# are the paper's "sort them as integers" order and Hamming distance is popcount(a ^ b).
# Search = (1) a pool of weight-N_act words pairwise >= H apart, from algebraic codes (weight
# classes of shortened/extended BCH and quadratic-residue codes: the extended Golay code gives
# the 130 words behind (100,20,8,8), the extended BCH [32,11,12] code gives 1054 words for
# (1000,32,16,12)), from Algorithm 1's greedy in integer order, and from randomized greedy;
# (2) K of them chosen to balance the column sums, by tabu search over swaps that may also bring
# in any other word that keeps every distance >= H. All randomness comes from `seed`, and every
# stage has a fixed amount of work, so the same arguments give the same table on any machine
# unless the time budget cuts a search short.
# ---------------------------------------------------------------------------------------------

_ENUMERATE_LIMIT = 400_000      # C(N, N_act) up to this: enumerate every word (exact Algorithm 1)
_MAX_CODE_DIM = 21              # enumerate linear codes with at most 2**21 codewords
_MAX_FIELD_DEGREE = 24          # cyclic codes need GF(2**m) with m = ord_n(2) <= this
_MAX_SHORTENING = 8             # use codes at most this many positions longer than N
_BATCH = 1024                   # greedy candidates examined per numpy batch
_MAX_GENERATED_CLASSES = 50_000  # beyond this, balancing K codewords cannot finish in a useful time
_FREE_SAMPLE = 64               # unconstrained words scored per balancing step
_EXTRA_WORDS = 20_000           # random words the balancer may swap in when N_act of N is too many
_BALANCE_STEPS = 4000           # + K: swaps allowed to reach the most even column sums
_POLISH_STEPS = 20_000          # then swaps allowed to reduce the pairs at H_min ...
_POLISH_WORK = 150_000_000      # ... at most this many word updates (steps x universe size) ...
_POLISH_PATIENCE = 1500         # ... stopping earlier after this many steps without progress


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


if not hasattr(np, 'bitwise_count'):  # numpy < 2.0
    _BYTE_POPCOUNT = np.array([bin(i).count('1') for i in range(256)], dtype=np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:  # noqa: F811
        x = np.ascontiguousarray(x, dtype=np.uint64)
        return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _words_to_table(words: np.ndarray, num_subnns: int) -> np.ndarray:
    shifts = np.arange(num_subnns - 1, -1, -1, dtype=np.uint64)
    return ((words[:, None] >> shifts[None, :]) & np.uint64(1)).astype(bool)


def _table_to_words(table: np.ndarray) -> np.ndarray:
    num_subnns = table.shape[1]
    weights = np.uint64(1) << np.arange(num_subnns - 1, -1, -1, dtype=np.uint64)
    return (table.astype(np.uint64) * weights[None, :]).sum(axis=1, dtype=np.uint64)


def _all_weight_words(num_subnns: int, num_active: int) -> np.ndarray:
    """Every length-N word with N_act ones, ascending (Algorithm 1's enumeration order)."""
    # by_weight[w] = ascending words of length n with w ones; words with bit n set come after.
    # Only weights that can still reach num_active are kept, so no list outgrows the result.
    empty = np.zeros(0, np.uint64)
    by_weight = {0: np.zeros(1, np.uint64)}
    for n in range(num_subnns):
        top = np.uint64(1 << n)
        lowest = max(0, num_active - (num_subnns - n - 1))
        by_weight = {w: np.concatenate([by_weight.get(w, empty), by_weight.get(w - 1, empty) | top])
                     for w in range(lowest, min(num_active, n + 1) + 1)}
    return by_weight[num_active]


def _random_weight_words(rng: np.random.Generator, count: int, num_subnns: int, num_active: int) -> np.ndarray:
    keys = rng.random((count, num_subnns))
    positions = np.argpartition(keys, num_active - 1, axis=1)[:, :num_active].astype(np.uint64)
    return np.bitwise_or.reduce(np.uint64(1) << positions, axis=1)


def max_codewords_bound(num_subnns: int, min_distance: int, num_active: int) -> int:
    """Upper bound on how many length-N words with N_act ones can be pairwise >= H apart.

    The Johnson bounds for constant-weight codes (A(n, 2d, w) <= floor(n/w A(n-1, 2d, w-1)), its
    complement form, and A(n, 2d, w) <= floor(d n / (w^2 - w n + d n)) when positive), capped by
    C(N, N_act). A request for more classes than this is provably impossible.
    """
    delta = (max(int(min_distance), 1) + 1) // 2  # distances between equal-weight words are even

    @lru_cache(maxsize=None)
    def bound(n: int, w: int) -> int:
        w = min(w, n - w)
        if w < delta:  # two distinct words are at most 2w < 2*delta apart
            return 1
        best = math.comb(n, w)
        denominator = w * w - w * n + delta * n
        if denominator > 0:
            best = min(best, delta * n // denominator)
        best = min(best, n * bound(n - 1, w - 1) // w, n * bound(n - 1, w) // (n - w))
        return best

    return bound(int(num_subnns), int(num_active))


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() - self.start > self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# --- algebraic pools: weight classes of cyclic codes ------------------------------------------

def _gf_mul(a: int, b: int, modulus: int, degree: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a >> degree & 1:
            a ^= modulus
    return product


def _gf_pow(base: int, exponent: int, modulus: int, degree: int) -> int:
    result = 1
    while exponent:
        if exponent & 1:
            result = _gf_mul(result, base, modulus, degree)
        base = _gf_mul(base, base, modulus, degree)
        exponent >>= 1
    return result


def _prime_factors(value: int) -> list:
    factors, p = [], 2
    while p * p <= value:
        if value % p == 0:
            factors.append(p)
            while value % p == 0:
                value //= p
        p += 1
    return factors + ([value] if value > 1 else [])


@lru_cache(maxsize=None)
def _primitive_polynomial(degree: int) -> int:
    """Smallest primitive polynomial of GF(2)[x] of this degree (bit i = coefficient of x^i)."""
    order = (1 << degree) - 1
    factors = _prime_factors(order)
    for modulus in range((1 << degree) | 1, 1 << (degree + 1), 2):
        if _gf_pow(2, order, modulus, degree) == 1 and all(
                _gf_pow(2, order // q, modulus, degree) != 1 for q in factors):
            return modulus
    raise AssertionError(f'no primitive polynomial of degree {degree}')  # cannot happen


def _cyclotomic_cosets(length: int) -> list:
    seen, cosets = set(), []
    for start in range(length):
        if start not in seen:
            coset, i = [], start
            while i not in coset:
                coset.append(i)
                i = i * 2 % length
            seen.update(coset)
            cosets.append(coset)
    return cosets


def _cyclic_generator(length: int, zeros: frozenset) -> int:
    """Generator polynomial prod_{z in zeros} (x - beta^z), beta a primitive length-th root of 1."""
    degree = 1
    while pow(2, degree, length) != 1:
        degree += 1
    modulus = _primitive_polynomial(degree)
    beta = _gf_pow(2, ((1 << degree) - 1) // length, modulus, degree)
    coefficients = [1]  # in GF(2^m); they end up in GF(2) because zeros is a union of cosets
    for z in sorted(zeros):
        root = _gf_pow(beta, z, modulus, degree)
        shifted = [0] + coefficients
        for i, c in enumerate(coefficients):
            shifted[i] ^= _gf_mul(c, root, modulus, degree)
        coefficients = shifted
    return sum(c << i for i, c in enumerate(coefficients))


def _linear_code(rows: list) -> np.ndarray:
    words = np.zeros(1, np.uint64)
    for row in rows:
        words = np.concatenate([words, words ^ np.uint64(row)])
    return words


def _cyclic_code_families(length: int) -> list:
    """(label, zeros) of the narrow-sense BCH codes and, for primes = +-1 mod 8, the QR code."""
    cosets = _cyclotomic_cosets(length)
    families, seen = [], set()
    if length > 2 and length % 8 in (1, 7) and _prime_factors(length) == [length]:
        residues = frozenset(i * i % length for i in range(1, length))
        seen.add(residues)
        families.append((f'quadratic-residue QR({length})', residues))
    for designed in range(2, length + 1):
        zeros = frozenset(z for c in cosets if any(1 <= x < designed for x in c) for z in c)
        if zeros and zeros not in seen and len(zeros) < length:
            seen.add(zeros)
            bch_bound = min(set(range(1, length + 1)) - zeros)  # zeros hold 1 .. bch_bound-1
            families.append((f'BCH({length}, designed distance {bch_bound})', zeros))
    return families


@lru_cache(maxsize=16)  # up to 2**21 words each
def _cyclic_code_words(length: int, zeros: frozenset, extended: bool) -> tuple:
    """All codewords (bit i = position i) and the minimum distance of a cyclic code."""
    generator = _cyclic_generator(length, zeros)
    rows = [generator << shift for shift in range(length - len(zeros))]
    if extended:  # overall parity bit at position `length`
        rows = [r | (bin(r).count('1') & 1) << length for r in rows]
    words = _linear_code(rows)
    return words, int(_popcount(words[1:]).min())


def _algebraic_pools(num_subnns: int, num_active: int, num_classes: int) -> list:
    """(label, words, distance) for weight-N_act words of shortened BCH/QR codes of length >= N.

    Shortening keeps the codewords that are constant (all 0, or all 1) on the dropped positions,
    so the words kept are still at least the code's distance apart.
    """
    pools = []
    if num_subnns > 64:
        return pools
    for length in range(num_subnns - 1 + (num_subnns % 2), num_subnns + _MAX_SHORTENING + 1, 2):
        degree = 1
        while pow(2, degree, length) != 1:
            degree += 1
        if length < 3 or degree > _MAX_FIELD_DEGREE:
            continue
        for label, zeros in _cyclic_code_families(length):
            dim = length - len(zeros)
            if dim > _MAX_CODE_DIM or (1 << dim) < num_classes:
                continue
            for extended in (True, False):
                total = length + extended
                dropped = total - num_subnns
                if not 0 <= dropped <= _MAX_SHORTENING or total > 64:
                    continue
                # skip codes that cannot be expected to hold K words of weight N_act: a random
                # code would have 2^(dim - dropped) C(N, N_act) / 2^N; structured ones hold up to
                # ~8x more (even or doubly-even weights), so that is the slack allowed
                expected = math.comb(num_subnns, num_active) * 2.0 ** (dim - dropped - num_subnns)
                if 8 * expected < num_classes:
                    continue
                words, distance = _cyclic_code_words(length, zeros, extended)
                for pattern in sorted({0, (1 << dropped) - 1}):
                    keep = _popcount(words) == num_active + dropped * (pattern > 0)
                    if dropped:
                        keep &= (words >> np.uint64(num_subnns)) == np.uint64(pattern)
                    kept = words[keep] & np.uint64((1 << num_subnns) - 1)
                    if len(kept) >= 2:
                        name = ('extended ' if extended else '') + label
                        if dropped:
                            name += f' shortened by {dropped} ({"ones" if pattern else "zeros"})'
                        # words of equal weight are an even distance apart: d = 7 means 8 here
                        pools.append((f'weight-{num_active} words of the {name} code', kept,
                                      distance + distance % 2))
    return pools


# --- greedy packing (Algorithm 1) ---------------------------------------------------------------

def _greedy_pack(batches: Iterable[np.ndarray], min_distance: int, cap: int,
                 stall_batches: Optional[int], deadline: _Deadline) -> np.ndarray:
    """Keep each candidate, in the order given, that is >= min_distance from all kept so far.

    Batched for numpy: a batch is filtered against the kept words at once, then its survivors
    are decided in order among themselves, which is exactly the sequential greedy.
    """
    kept = np.zeros(0, np.uint64)
    idle = 0
    for batch in batches:
        for start in range(0, len(kept), 256):
            if not len(batch):
                break
            chunk = kept[start:start + 256]
            batch = batch[(_popcount(batch[:, None] ^ chunk[None, :]) >= min_distance).all(axis=1)]
        added = 0
        if len(batch):
            close = _popcount(batch[:, None] ^ batch[None, :]) < min_distance
            blocked = np.zeros(len(batch), bool)
            take = []
            for i in range(len(batch)):
                if not blocked[i]:
                    take.append(i)
                    blocked |= close[i]
                    if len(kept) + len(take) >= cap:
                        break
            kept = np.concatenate([kept, batch[take]])
            added = len(take)
        idle = 0 if added else idle + 1
        if len(kept) >= cap or (stall_batches and idle >= stall_batches) or deadline.expired():
            break
    return kept


def _chunks(words: np.ndarray, size: int = _BATCH):
    for start in range(0, len(words), size):
        yield words[start:start + size]


def _random_batches(rng: np.random.Generator, num_subnns: int, num_active: int, max_batches: int):
    for _ in range(max_batches):
        yield _random_weight_words(rng, _BATCH, num_subnns, num_active)


# --- column balancing ---------------------------------------------------------------------------

def _balanced_start(pool_bits: np.ndarray, num_classes: int) -> np.ndarray:
    """Pick K pool rows one by one, each time the row whose ones hit the least-loaded columns."""
    load_hit = np.zeros(len(pool_bits), np.int64)  # = pool_bits @ column_sums, kept up to date
    free = np.ones(len(pool_bits), bool)
    chosen = []
    for _ in range(num_classes):
        i = int(np.argmin(np.where(free, load_hit, np.iinfo(np.int64).max)))
        chosen.append(i)
        free[i] = False
        load_hit += pool_bits[:, pool_bits[i]].sum(axis=1)
    return np.array(chosen)


def _balance(universe: np.ndarray, start: np.ndarray, num_subnns: int, min_distance: int,
             rng: np.random.Generator, deadline: _Deadline) -> np.ndarray:
    """Tabu search for K universe words, pairwise >= min_distance, with balanced column sums.

    Minimises F = sum_j S_j^2 (with sum_j S_j = K N_act fixed, its minimum is exactly the
    most even split) and, among equally balanced tables, P = the number of pairs exactly
    min_distance apart (fewer pairs at H_min = fewer classes a nearest-codeword decoder easily
    confuses). Replacing member u by word v changes F by 2 S.(v - u) + d(u, v). A word v may
    enter if no member is closer than min_distance (then it may replace any member) or exactly
    one is (then it must replace that one). Recently removed words may not come back for a few
    steps, so the search walks out of local minima instead of cycling. Work is counted in
    steps, never in seconds, so the result does not depend on the machine.
    """
    num_words, num_classes = len(universe), len(start)
    bits = _words_to_table(universe, num_subnns)
    columns = np.ascontiguousarray(bits.T.astype(np.int32))   # N x M, for fast row sums
    members = np.array(start, dtype=np.int64)
    is_member = np.zeros(num_words, bool)
    is_member[members] = True
    conflicts = np.zeros(num_words, np.int32)       # members closer than min_distance
    conflict_sum = np.zeros(num_words, np.int64)    # sum of their indices (the one, if one)
    at_minimum = np.zeros(num_words, np.int32)      # members exactly min_distance away

    def account(word: int, sign: int) -> None:
        distance = _popcount(universe ^ universe[word])
        near = distance < min_distance
        conflicts[near] += sign
        conflict_sum[near] += sign * word
        at_minimum[distance == min_distance] += sign

    for u in members:
        account(int(u), 1)
    column_sums = bits[members].sum(axis=0).astype(np.int64)
    load_hit = (column_sums[:, None] * columns).sum(axis=0, dtype=np.int64)  # S . v for every v
    q, r = divmod(int(column_sums.sum()), num_subnns)
    # objective = weight * F + P: balance first, then fewer pairs at the minimum distance
    weight = num_classes * num_classes
    floor = weight * (r * (q + 1) ** 2 + (num_subnns - r) * q * q)
    f = weight * int((column_sums ** 2).sum()) + int(at_minimum[members].sum()) // 2
    best, best_members, best_step = f, members.copy(), 0
    tabu_until = np.zeros(num_words, np.int64)
    slot_of = np.full(num_words, -1, np.int64)
    slot_of[members] = np.arange(num_classes)
    balanced_at = 0 if f - floor < weight else None
    # polishing work is counted in word updates, so a huge universe gets fewer (dearer) steps
    polish_steps = min(_POLISH_STEPS, _POLISH_WORK // num_words)
    for step in itertools.count():
        if best == floor or deadline.expired():  # perfectly balanced, no pair at the minimum
            break
        if balanced_at is None and step >= _BALANCE_STEPS + num_classes:
            break
        if balanced_at is not None and (step - best_step > _POLISH_PATIENCE
                                        or step - balanced_at > polish_steps):
            break
        allowed = ~is_member & (tabu_until <= step)
        moves_u, moves_v, moves_delta = [], [], []
        single = np.flatnonzero(allowed & (conflicts == 1))
        if len(single):
            out = conflict_sum[single]
            distance = _popcount(universe[single] ^ universe[out]).astype(np.int64)
            delta = (weight * (2 * (load_hit[single] - load_hit[out]) + distance)
                     + at_minimum[single] - at_minimum[out] - (distance == min_distance))
            moves_u.append(out), moves_v.append(single), moves_delta.append(delta)
        free = np.flatnonzero(allowed & (conflicts == 0))
        if len(free):  # any member may leave: score a sample of free words against all members
            if len(free) > _FREE_SAMPLE:
                free = np.sort(rng.choice(free, _FREE_SAMPLE, replace=False))
            distance = _popcount(universe[free][:, None] ^ universe[members][None, :]).astype(np.int64)
            delta = (weight * (2 * (load_hit[free][:, None] - load_hit[members][None, :]) + distance)
                     + at_minimum[free][:, None] - at_minimum[members][None, :] - (distance == min_distance))
            pick = np.argmin(delta, axis=1)
            moves_u.append(members[pick]), moves_v.append(free)
            moves_delta.append(delta[np.arange(len(free)), pick])
        if not moves_delta:
            break  # every other word conflicts with two or more members: nothing can move
        all_u, all_v, all_delta = (np.concatenate(x) for x in (moves_u, moves_v, moves_delta))
        k = int(np.argmin(all_delta + rng.random(len(all_delta)) * 0.5))  # random tie-break
        u, v = int(all_u[k]), int(all_v[k])
        account(u, -1)
        account(v, 1)
        load_hit += columns[bits[v] & ~bits[u]].sum(axis=0) - columns[bits[u] & ~bits[v]].sum(axis=0)
        column_sums += bits[v].astype(np.int64) - bits[u]
        f += int(all_delta[k])
        is_member[u], is_member[v] = False, True
        members[slot_of[u]], slot_of[v], slot_of[u] = v, slot_of[u], -1
        tabu_until[u] = step + 6 + int(rng.integers(0, 10))
        if f < best:
            best, best_members, best_step = f, members.copy(), step
            if balanced_at is None and f - floor < weight:
                balanced_at = step
    return np.sort(best_members)


def _shift_repair(words: np.ndarray, num_subnns: int, min_distance: int) -> np.ndarray:
    """Even out the last column-sum differences by moving single ones between columns.

    The tabu search swaps whole words of a finite universe; over a huge word space (random
    words) that universe rarely holds a word one move away from a member, so a unit or two
    of imbalance can remain. Moving one 1 of a member from column i to column j changes F by
    2 (S_j - S_i) + 2 < 0 whenever S_i >= S_j + 2, and is allowed when the moved word stays
    min_distance from every other member. F falls at every move, so this ends.
    """
    words = words.copy()
    column_bit = np.uint64(1) << np.arange(num_subnns - 1, -1, -1, dtype=np.uint64)
    while True:
        bits = _words_to_table(words, num_subnns)
        sums = bits.sum(axis=0)
        moved = False
        for i in np.argsort(-sums, kind='stable'):
            for j in np.argsort(sums, kind='stable'):
                if sums[i] - sums[j] < 2:
                    break
                rows = np.flatnonzero(bits[:, i] & ~bits[:, j])
                if not len(rows):
                    continue
                shifted = words[rows] ^ (column_bit[i] | column_bit[j])
                distance = _popcount(shifted[:, None] ^ words[None, :])
                distance[np.arange(len(rows)), rows] = num_subnns  # the word it replaces
                fits = np.flatnonzero((distance >= min_distance).all(axis=1))
                if len(fits):
                    words[rows[fits[0]]] = shifted[fits[0]]
                    moved = True
                    break
            if moved:
                break
        if not moved:
            return words


# --- the generator ------------------------------------------------------------------------------

class _Search:
    """Everything one generate_scheme call needs, so pools are built once and reused across H."""

    def __init__(self, num_classes: int, num_subnns: int, num_active: int, seed: int, deadline: _Deadline):
        self.num_classes, self.num_subnns, self.num_active = num_classes, num_subnns, num_active
        self.seed, self.deadline = seed, deadline
        size = math.comb(num_subnns, num_active)
        self.all_words = _all_weight_words(num_subnns, num_active) if size <= _ENUMERATE_LIMIT else None
        self.algebraic = _algebraic_pools(num_subnns, num_active, num_classes)

    def rng(self, *stage: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stage])

    def pools(self, min_distance: int, randomized: bool) -> list:
        """(label, words, distance) pools of words pairwise >= distance >= min_distance apart.

        Algebraic codes and Algorithm 1 are tried first (cheap and often the best); randomized
        greedy only when they fall short of K words and `randomized` is set.
        """
        k, h = self.num_classes, min_distance
        found = [pool for pool in self.algebraic if pool[2] >= h]
        if self.all_words is not None:
            found.append(('Algorithm 1 (greedy over all words in integer order)',
                          _greedy_pack(_chunks(self.all_words), h, 2 * k + 16, None, self.deadline), h))
        if randomized and _largest(found) < k:
            for restart in range(8 if self.all_words is not None else 3):
                if self.deadline.expired():
                    break
                rng = self.rng(h, 1, restart)
                if self.all_words is not None:
                    batches = _chunks(self.all_words[rng.permutation(len(self.all_words))])
                    words = _greedy_pack(batches, h, k, None, self.deadline)
                else:
                    batches = _random_batches(rng, self.num_subnns, self.num_active, 400)
                    words = _greedy_pack(batches, h, k + k // 4, 3, self.deadline)
                found.append((f'randomized greedy (restart {restart})', words, h))
                if len(words) >= k:
                    break
        return found

    def balance(self, pools: list, min_distance: int) -> tuple:
        """(K words, label): the most even column sums, at the largest distance that allows them.

        A pool may be further apart than asked (an algebraic code); the swaps then keep that
        larger distance, unless only the smaller one asked for allows better balance.
        """
        if self.all_words is not None:
            universe = self.all_words
        else:
            rng = self.rng(min_distance, 2)
            extra = _random_weight_words(rng, _EXTRA_WORDS, self.num_subnns, self.num_active)
            universe = np.unique(np.concatenate([words for _, words, _ in pools] + [extra]))
        usable = [pool for pool in pools if len(pool[1]) >= self.num_classes]
        targets = sorted({max(d for _, _, d in usable), min_distance}, reverse=True)
        best_spread = int(self.num_classes * self.num_active % self.num_subnns != 0)
        results = []
        for target in targets:
            label, pool, _ = max((p for p in usable if p[2] >= target), key=lambda p: len(p[1]))
            start_rows = np.searchsorted(universe, pool)
            start = start_rows[_balanced_start(_words_to_table(pool, self.num_subnns), self.num_classes)]
            rows = _balance(universe, start, self.num_subnns, target, self.rng(target, 3), self.deadline)
            words = np.sort(_shift_repair(universe[rows], self.num_subnns, target))
            results.append((words, label))
            column_sums = _words_to_table(words, self.num_subnns).sum(axis=0)
            if column_sums.max() - column_sums.min() <= best_spread:
                break  # as even as possible: keep the larger distance
        return min(results, key=lambda res: np.ptp(_words_to_table(res[0], self.num_subnns).sum(axis=0)))


def _largest(pools: list) -> int:
    return max((len(words) for _, words, _ in pools), default=0)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SchemeError(f'{name} must be an integer >= {low}, got {value!r}')
    return int(value)


def generate_scheme(num_classes: int, num_subnns: int, num_active: int, min_distance: Optional[int] = None,
                    seed: int = 0, time_budget: float = 60.0,
                    class_names: Optional[Iterable[str]] = None) -> CodingScheme:
    """A K x N coding scheme: N_act ones per row, H_min >= min_distance, column sums balanced.

    The paper's Algorithm 1 (greedy over the words in integer order, then a K-subset with even
    column sums), extended with algebraic pools, randomized greedy and a tabu-search balancer
    (see the comment above `_ENUMERATE_LIMIT`). Column sums end up as even as the pool allows:
    all equal when K N_act / N is an integer, otherwise differing by at most one, in every case
    the repository ships.

    Args:
        num_classes: K, the number of codewords.
        num_subnns: N, the codeword length (at most 64).
        num_active: N_act, the ones per codeword (1 <= N_act <= N).
        min_distance: the smallest Hamming distance required between two codewords. None asks
            for the largest one the search finds within the time budget.
        seed: the seed of every random choice; the same arguments give the same table.
        time_budget: seconds the search may take. A distance not found by then is refused;
            balancing cut short returns the most even table found so far.
        class_names: optional names of the K classes.

    Raises:
        SchemeError: bad arguments, or no scheme found with that distance (the message says
            what is possible: the bound C(N, N_act), the Johnson bound, the best distance found).
    """
    k = _check_int('num_classes', num_classes, 1)
    n = _check_int('num_subnns', num_subnns, 1)
    a = _check_int('num_active', num_active, 1)
    seed = _check_int('seed', seed, 0)
    if n > 64:
        raise SchemeError(f'the generator handles codewords of at most 64 subNNs, got N={n}')
    if a > n:
        raise SchemeError(f'num_active={a} exceeds num_subnns={n}')
    if not (isinstance(time_budget, (int, float)) and time_budget > 0):
        raise SchemeError(f'time_budget must be a positive number of seconds, got {time_budget!r}')
    if k > math.comb(n, a):
        raise SchemeError(f'{k} classes need {k} distinct codewords, but only C({n},{a}) = {math.comb(n, a)} '
                          f'words of length {n} have {a} ones')
    h_max = 2 * min(a, n - a)  # two words of weight a can differ in at most this many places
    if min_distance is not None:
        min_distance = _check_int('min_distance', min_distance, 1)
    call = f'timm_coded.codes.generate_scheme({k}, {n}, {a}, min_distance={min_distance}, seed={seed})'
    if k == 1:
        return CodingScheme([[True] * a + [False] * (n - a)], class_names=class_names, source=call)
    if k > _MAX_GENERATED_CLASSES:
        # picking and balancing K rows costs at least K x pool size (>= K^2) steps: refuse now
        # rather than after the time budget, with what to do instead
        raise SchemeError(
            f'the generator balances at most {_MAX_GENERATED_CLASSES:,} codewords (its cost grows with K^2); '
            f'{k:,} classes need a scheme built another way (any {k:,} distinct rows of weight {a} out of {n}, '
            f'e.g. from a constant-weight code) passed as a CodingScheme')
    deadline = _Deadline(time_budget)
    h_bound = max(h for h in range(2, h_max + 1, 2) if max_codewords_bound(n, h, a) >= k)
    if min_distance is not None:
        h = max(2, min_distance + min_distance % 2)  # distances between equal-weight words are even
        if h > h_max:
            raise SchemeError(f'no two words with {a} ones out of {n} differ in more than {h_max} places, '
                              f'so min_distance={min_distance} is impossible')
        if h > h_bound:
            raise SchemeError(
                f'min_distance={min_distance} is impossible for {k} classes: at most '
                f'{max_codewords_bound(n, h, a)} words of length {n} with {a} ones can be {h} apart '
                f'(Johnson bound); the bound allows H_min <= {h_bound} for {k} classes')
    search = _Search(k, n, a, seed, deadline)

    if min_distance is not None:
        pools = search.pools(h, randomized=True)
        found = _largest(pools)
        if found < k:
            reason = (f'the time budget of {time_budget:g}s ran out; ' if deadline.expired() else '')
            reachable = next((g for g in range(h - 2, 1, -2) if _largest(search.pools(g, randomized=False)) >= k),
                             None)
            hint = f'; constructions reach H_min = {reachable}' if reachable else ''
            raise SchemeError(
                f'no scheme with H_min >= {h} found for {k} classes (N={n}, N_act={a}): {reason}the best '
                f'pool has {found} words that far apart; the Johnson bound allows up to '
                f'{max_codewords_bound(n, h, a)} and H_min <= {h_bound}{hint}')
    else:
        # start from the best distance the cheap constructions reach, then climb with search
        h, pools = 2, None
        for g in range(h_bound, 1, -2):
            candidate = search.pools(g, randomized=False)
            if _largest(candidate) >= k:
                h, pools = g, candidate
                break
        if pools is None:
            pools = search.pools(2, randomized=True)
            if _largest(pools) < k:
                raise SchemeError(f'found only {_largest(pools)} distinct words for {k} classes within '
                                  f'time_budget={time_budget:g}s (N={n}, N_act={a}); a larger time_budget may find more')
        for g in range(h + 2, h_bound + 1, 2):
            if deadline.expired():
                break
            candidate = search.pools(g, randomized=True)
            if _largest(candidate) < k:
                break
            h, pools = g, candidate
    words, label = search.balance(pools, h)
    return CodingScheme(_words_to_table(words, n), class_names=class_names,
                        source=f'{call}; pool: {label}')
