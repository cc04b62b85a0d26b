"""Generating coding schemes: the paper's Algorithm 1, made to reach the Appendix A tables and beyond."""
from __future__ import annotations

import itertools
import time
import math
from functools import lru_cache
from typing import Iterable, Optional

import numpy as np

from ..errors import SchemeError
from .scheme import CodingScheme

__all__ = ['generate_scheme', 'max_codewords_bound']


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
