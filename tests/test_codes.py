"""Coding schemes: validation, serialisation, the shipped tables, and the generator."""
import itertools
import json
import math
import timm_coded.codes.generate as generate_module

import numpy as np
import pytest

from timm_coded.codes import (
    CIFAR10_CLASSES, CodingScheme, builtin_scheme, generate_scheme, list_builtin_schemes, load_scheme,
    max_codewords_bound,
)
from timm_coded.codes.generate import (
    _algebraic_pools, _all_weight_words, _chunks, _Deadline, _greedy_pack, _shift_repair, _table_to_words,
    _words_to_table,
)
from timm_coded.errors import SchemeError, UnknownClassError

# Paper Table 3 (CIFAR-10), class order airplane .. truck
PAPER_R5 = ['1010100011', '0101010101', '1101100010', '0011001101', '1010010101', '1001001110',
            '1011101000', '0100011110', '0110111000', '0100110011']
PAPER_R3 = ['1001001000', '0110001000', '1010000001', '0000001110', '0001010100', '0010100100',
            '0000110010', '0100010001', '0001100001', '1100000010']

# (K, N, N_act) -> (H_min at least, largest allowed S_max - S_min): the bar, which is the
# paper's Appendix A (and better: the paper has H_min=10 and 499..501 for (1000, 32, 16)).
BAR = {
    (10, 10, 5): (4, 0),
    (10, 10, 3): (4, 0),
    (100, 20, 8): (8, 0),
    (100, 20, 4): (4, 0),
    (1000, 32, 16): (10, 2),
    (1000, 32, 8): (6, 2),
}


def brute_min_distance(strings):
    return min(sum(a != b for a, b in zip(x, y)) for x, y in itertools.combinations(strings, 2))


def assert_meets(scheme, k, n, a, h_min, spread):
    assert (scheme.num_classes, scheme.num_subnns, scheme.num_active) == (k, n, a)
    assert (scheme.codewords.sum(axis=1) == a).all()
    assert len(set(scheme.as_strings())) == k
    assert scheme.min_distance >= h_min
    s_min, s_max = scheme.column_sum_range
    assert s_max - s_min <= spread
    if (k * a) % n == 0:
        assert s_min == s_max == k * a // n  # equal sums are possible here, so we demand them
    else:
        assert s_max - s_min <= 1


# --- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize('codewords, message', [
    (['1100', '1100', '0011'], 'classes 0 and 1 have the same codeword'),
    (['1100', '1110'], 'row 0 has 2, row 1 has 3'),
    (['10', '01', '11'], 'row 0 has 1, row 2 has 2'),
    (['1100', '0110', '0011', '1001', '1010', '0101', '1100'], 'only C(4,2) = 6 exist'),
    (['1020', '0110'], 'strings of 0 and 1'),
    ([[1, 2, 0], [0, 1, 1]], 'binary'),
    ([], 'at least one codeword'),
    (np.zeros((0, 4), bool), 'non-empty'),
    (['0000', '0000'], 'no active subNN'),
    (['110', '0110'], 'different lengths'),
])
def test_invalid_tables_are_refused_with_the_reason(codewords, message):
    with pytest.raises(SchemeError, match=message.replace('(', r'\(').replace(')', r'\)')):
        CodingScheme(codewords)


def test_class_names_must_match_rows_and_be_unique():
    with pytest.raises(SchemeError, match='2 class names for 3 codewords'):
        CodingScheme(['110', '101', '011'], class_names=['a', 'b'])
    with pytest.raises(SchemeError, match='unique'):
        CodingScheme(['110', '101', '011'], class_names=['a', 'b', 'a'])


def test_metrics_of_a_hand_checked_table():
    scheme = CodingScheme(['1100', '0011', '1010'])
    assert scheme.min_distance == 2  # 1100 vs 1010
    assert scheme.distance_histogram() == {2: 2, 4: 1}
    assert scheme.column_sums.tolist() == [2, 1, 2, 1]
    assert scheme.column_sum_range == (1, 2)
    assert scheme.active_subnns(2) == (0, 2)
    assert scheme.ratio == 0.5


def test_class_lookup_by_index_and_name():
    scheme = builtin_scheme('k10_n10_a5')
    assert scheme.class_index('cat') == 3
    assert scheme.class_index(9) == 9
    assert scheme.class_index('7') == 7
    with pytest.raises(UnknownClassError, match='unknown class name'):
        scheme.class_index('zebra')
    with pytest.raises(UnknownClassError, match='out of range'):
        scheme.class_index(10)


# --- serialisation ------------------------------------------------------------------------------

def test_json_round_trip_keeps_everything(tmp_path):
    scheme = CodingScheme(PAPER_R3, class_names=CIFAR10_CLASSES, name='mine', source='hand-made')
    text = scheme.to_json()
    data = json.loads(text)
    assert data['format'] == 'timm-coded-scheme/1'
    assert data['codewords'] == PAPER_R3  # compact: one 0/1 string per class
    back = CodingScheme.from_json(text)
    assert back == scheme
    assert (back.class_names, back.name, back.source) == (tuple(CIFAR10_CLASSES), 'mine', 'hand-made')
    path = tmp_path / 'scheme.json'
    scheme.save(path)
    assert not (tmp_path / 'scheme.json.tmp').exists()
    loaded = load_scheme(path)
    assert loaded == scheme and loaded.class_names == scheme.class_names
    assert load_scheme(str(path)).source == 'hand-made'


def test_bad_serialised_schemes_are_refused(tmp_path):
    with pytest.raises(SchemeError, match='not a JSON coding scheme'):
        CodingScheme.from_json('{"codewords": [')
    with pytest.raises(SchemeError, match="'codewords' list"):
        CodingScheme.from_dict({'rows': []})
    with pytest.raises(SchemeError, match='unsupported scheme format'):
        CodingScheme.from_dict({'format': 'other/2', 'codewords': ['10', '01']})
    with pytest.raises(SchemeError, match='neither a built-in scheme'):
        load_scheme(tmp_path / 'missing.json')


# --- the shipped tables ---------------------------------------------------------------------------

def test_cifar10_tables_are_the_papers_table_3():
    r5, r3 = builtin_scheme(10, 10, 5), builtin_scheme('k10_n10_a3')
    assert r5.as_strings() == PAPER_R5 and r3.as_strings() == PAPER_R3
    assert r5.class_names == r3.class_names == CIFAR10_CLASSES
    assert brute_min_distance(PAPER_R5) == r5.min_distance == 4
    assert brute_min_distance(PAPER_R3) == r3.min_distance == 4


def test_every_bar_setting_is_shipped():
    assert set(list_builtin_schemes()) >= {f'k{k}_n{n}_a{a}' for k, n, a in BAR}


@pytest.mark.parametrize('setting', sorted(BAR))
def test_shipped_table_meets_the_bar(setting):
    k, n, a = setting
    scheme = builtin_scheme(k, n, a)
    assert_meets(scheme, k, n, a, *BAR[setting])
    assert scheme.name == f'k{k}_n{n}_a{a}'
    if k > 10:  # generated: the JSON records the exact call that reproduces it
        assert scheme.source.startswith(f'timm_coded.codes.generate_scheme({k}, {n}, {a}, ')


def test_shipped_tables_beat_the_paper_where_the_generator_can():
    # paper Appendix A: (1000,32,16) H_min=10 with S 499..501, (1000,32,8) H_min=6 with S 249..251
    big, small = builtin_scheme(1000, 32, 16), builtin_scheme(1000, 32, 8)
    assert big.min_distance == 12 and big.column_sum_range == (500, 500)
    assert small.min_distance == 6 and small.column_sum_range == (250, 250)


def test_builtin_errors():
    with pytest.raises(SchemeError, match='no built-in coding scheme'):
        builtin_scheme('k7_n7_a3')
    with pytest.raises(SchemeError, match='needs a name or all of'):
        builtin_scheme(10, 10)


# --- bounds and building blocks -----------------------------------------------------------------

def test_johnson_bound_on_known_values():
    assert max_codewords_bound(10, 6, 5) == 6      # A(10,6,5) = 6
    assert max_codewords_bound(10, 6, 3) == 3      # three disjoint triples
    assert max_codewords_bound(32, 16, 16) == 62   # A(32,16,16) = 62 (Hadamard)
    assert max_codewords_bound(24, 8, 8) == 759    # Steiner system S(5,8,24): tight
    assert max_codewords_bound(20, 6, 4) < 100     # so (100,20,4) cannot have H_min 6
    assert max_codewords_bound(20, 10, 8) < 100    # so (100,20,8) cannot have H_min 10
    assert max_codewords_bound(32, 14, 16) < 1000  # so (1000,32,16) cannot have H_min 14
    assert max_codewords_bound(10, 2, 5) == math.comb(10, 5)


def naive_algorithm_1(n, a, h):
    """The paper's greedy, written plainly: all words as integers, ascending, keep if far enough."""
    kept = []
    for ones in sorted(sum(1 << (n - 1 - i) for i in c) for c in itertools.combinations(range(n), a)):
        if all(bin(ones ^ other).count('1') >= h for other in kept):
            kept.append(ones)
    return kept


@pytest.mark.parametrize('n, a, h', [(10, 5, 4), (10, 3, 4), (12, 4, 6), (20, 4, 4)])
def test_batched_greedy_is_exactly_algorithm_1(n, a, h):
    words = _all_weight_words(n, a)
    assert len(words) == math.comb(n, a) and (np.diff(words.astype(np.int64)) > 0).all()
    batched = _greedy_pack(_chunks(words, 64), h, 10 ** 9, None, _Deadline(60))
    assert batched.tolist() == naive_algorithm_1(n, a, h)


def test_enumeration_with_nearly_all_ones_stays_small():
    words = _all_weight_words(38, 36)  # used to build every middle weight (C(37,18) words) first
    assert len(words) == math.comb(38, 36) == 703
    assert {format(int(w), '038b').count('1') for w in words} == {36}


def test_shift_repair_evens_columns_and_keeps_distances():
    table = CodingScheme(['110000', '101000', '100100']).codewords
    repaired = _words_to_table(_shift_repair(_table_to_words(table), 6, 2), 6)
    assert repaired.sum(axis=0).tolist() == [1] * 6
    assert CodingScheme(repaired).min_distance >= 2


def test_algebraic_pools_are_the_codes_they_claim():
    pools = {label: (words, d) for label, words, d in _algebraic_pools(20, 8, 100)}
    words, distance = pools['weight-8 words of the extended quadratic-residue QR(23) shortened by 4 (zeros) code']
    assert len(words) == 130 and distance == 8  # octads avoiding 4 points of the Golay code
    strings = [format(int(w), '020b') for w in words]
    assert brute_min_distance(strings) == 8 and {s.count('1') for s in strings} == {8}
    bch = [w for label, w, d in _algebraic_pools(32, 16, 1000) if d >= 12]
    assert max(len(w) for w in bch) == 1054  # weight-16 words of the extended BCH [32,11,12] code


# --- the generator ------------------------------------------------------------------------------

@pytest.mark.parametrize('setting', [(10, 10, 5), (10, 10, 3), (100, 20, 4)])
def test_generator_meets_the_bar_live(setting):
    h_min, spread = BAR[setting]
    scheme = generate_scheme(*setting, min_distance=h_min)  # timings: benchmarks/bench_schemes.py
    assert_meets(scheme, *setting, h_min, spread)
    assert f'generate_scheme({setting[0]}, {setting[1]}, {setting[2]}, min_distance={h_min}, seed=0)' in scheme.source


def test_generator_reaches_the_paper_100_20_8_live():
    # the paper's own generator failed this one with its default enumeration order
    scheme = generate_scheme(100, 20, 8, min_distance=8, time_budget=60)
    assert_meets(scheme, 100, 20, 8, 8, 0)


def test_generator_finds_the_largest_distance_when_none_is_asked():
    scheme = generate_scheme(10, 10, 5)
    assert scheme.min_distance == 4  # and 6 is impossible: max_codewords_bound(10, 6, 5) == 6 < 10
    assert scheme.column_sum_range == (5, 5)
    # beyond the paper: fewer class pairs at H_min than Table 3 (20 of 45)
    assert scheme.distance_histogram()[4] < 20


def test_generator_is_deterministic_and_seeded():
    first = generate_scheme(100, 20, 4, min_distance=4, seed=3)
    again = generate_scheme(100, 20, 4, min_distance=4, seed=3)
    other = generate_scheme(100, 20, 4, min_distance=4, seed=4)
    assert first == again
    assert first != other
    assert_meets(other, 100, 20, 4, 4, 0)


def test_generator_over_a_space_too_large_to_enumerate():
    # C(36, 15) = 5.6e9 words: randomized greedy pool, then balancing with random extra words
    scheme = generate_scheme(30, 36, 15, min_distance=12)
    assert_meets(scheme, 30, 36, 15, 12, 1)
    assert generate_scheme(30, 36, 15, min_distance=12) == scheme


def test_generator_rounds_odd_distances_up_and_keeps_class_names():
    scheme = generate_scheme(10, 10, 3, min_distance=3, class_names=CIFAR10_CLASSES)
    assert scheme.min_distance == 4  # distances between words of equal weight are even
    assert scheme.class_names == CIFAR10_CLASSES


def test_generator_uneven_total_gets_sums_one_apart():
    scheme = generate_scheme(7, 10, 3, min_distance=4)  # 21 ones over 10 columns
    assert scheme.column_sum_range == (2, 3)
    assert scheme.min_distance >= 4


def test_single_class_is_trivial():
    scheme = generate_scheme(1, 8, 3)
    assert scheme.num_classes == 1 and scheme.num_active == 3


def test_provably_impossible_distance_fails_fast_saying_what_is_possible(monkeypatch):
    # "fast" means: refused from the bounds alone, before any search or pool is built
    def no_search(*args, **kwargs):
        raise AssertionError('the generator searched although the bounds already rule the request out')
    monkeypatch.setattr(generate_module, '_Search', no_search)
    monkeypatch.setattr(generate_module, '_algebraic_pools', no_search)
    with pytest.raises(SchemeError, match=r'at most 6 words .* \(Johnson bound\); the bound allows H_min <= 4'):
        generate_scheme(10, 10, 5, min_distance=6)
    with pytest.raises(SchemeError, match='differ in more than 6 places'):
        generate_scheme(10, 10, 3, min_distance=8)
    with pytest.raises(SchemeError, match=r'only C\(10,5\) = 252 words'):
        generate_scheme(300, 10, 5)


def test_distance_not_found_reports_the_best_found():
    with pytest.raises(SchemeError) as info:
        generate_scheme(1000, 32, 8, min_distance=8, time_budget=30)
    message = str(info.value)
    assert 'no scheme with H_min >= 8 found for 1000 classes' in message
    assert 'the best pool has 620 words' in message  # the extended BCH [32,16,8] code's weight-8 words
    assert 'constructions reach H_min = 6' in message


def test_exhausted_time_budget_is_reported():
    with pytest.raises(SchemeError, match='time budget of 0.0001s ran out'):
        generate_scheme(20, 24, 12, min_distance=10, time_budget=1e-4)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_classes=0, num_subnns=10, num_active=3), 'num_classes must be an integer >= 1'),
    (dict(num_classes=5, num_subnns=10, num_active=11), 'num_active=11 exceeds num_subnns=10'),
    (dict(num_classes=5, num_subnns=70, num_active=3), 'at most 64 subNNs'),
    (dict(num_classes=5, num_subnns=10, num_active=3, seed=-1), 'seed must be'),
    (dict(num_classes=5, num_subnns=10, num_active=3, min_distance=0), 'min_distance must be'),
    (dict(num_classes=5, num_subnns=10, num_active=3, time_budget=0), 'time_budget must be'),
    (dict(num_classes=5.0, num_subnns=10, num_active=3), 'num_classes must be an integer'),
])
def test_generator_argument_errors(kwargs, message):
    with pytest.raises(SchemeError, match=message):
        generate_scheme(**kwargs)


def test_a_million_classes_fail_fast_and_say_what_to_do(monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError('the generator started a search it cannot finish')
    monkeypatch.setattr(generate_module, '_Search', no_search)
    with pytest.raises(SchemeError, match=r'balances at most 50,000 codewords .* 1,000,000 classes need a scheme '
                                          r'built another way .* passed as a CodingScheme'):
        generate_scheme(10 ** 6, 32, 16)
