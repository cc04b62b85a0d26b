"""benchmarks/bench_coding_cost.py's bookkeeping (its timings are not tested: they belong to the benchmark)."""
import math
from pathlib import Path

import pytest

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_coding_cost.py'


@pytest.fixture(scope='module')
def bench():
    return load_script(SCRIPT, 'bench_coding_cost_under_test')


def test_ratios_pair_the_two_orders(bench):
    # rounds alternate (uncoded first, then coded first): a per-round order effect of x1.2 in favour
    # of whichever runs second cancels in each pair's geometric mean
    true_ratio, order_effect = 1.1, 1.2
    coded = [true_ratio * (order_effect if r % 2 else 1 / order_effect) for r in range(6)]
    uncoded = [1.0] * 6
    assert bench.paired_ratios(coded, uncoded) == pytest.approx([true_ratio] * 3, rel=1e-12)
    assert len(bench.paired_ratios(coded[:5], uncoded[:5])) == 2  # an unpaired last round is left out


@pytest.mark.parametrize('processes', [['--processes', '7'], ['--processes=7'], ['--proc', '7']])
def test_each_measuring_process_runs_once_whatever_form_processes_took(bench, processes, tmp_path):
    argv = ['--rounds', '3', *processes, '--nets', 'coded_resnext17_10x8d']
    child = bench.build_parser().parse_args(bench.child_argv(argv, tmp_path / 'rows.json'))
    assert child.processes == 1 and child.rounds == 3 and child.json == tmp_path / 'rows.json'
    assert child.nets == ['coded_resnext17_10x8d']
    assert math.isclose(bench.build_parser().parse_args(argv).processes, 7)
