"""Time `generate_scheme` on the six settings of the paper, each run in a fresh Python process.

    python benchmarks/bench_schemes.py [--repeat 3] [--seed 0]

Prints a markdown table: for every (K, N, N_act), once with the paper's H_min asked for and once
with min_distance=None (the largest H_min the generator finds), the H_min and column sums reached,
the number of class pairs at H_min, the generator's wall-clock time (median over --repeat fresh
processes) and the whole process's wall-clock time (interpreter start and imports included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (K, N, N_act, H_min asked for, the paper's Appendix A / Table 3 result)
SETTINGS = [
    (10, 10, 5, 4, 'H_min 4, S 5..5 (Table 3)'),
    (10, 10, 3, 4, 'H_min 4, S 3..3 (Table 3)'),
    (100, 20, 8, 8, 'H_min 8, S_min = S_max'),
    (100, 20, 4, 4, 'H_min 4, S_min = S_max'),
    (1000, 32, 16, 10, 'H_min 10, S 499..501'),
    (1000, 32, 8, 6, 'H_min 6, S 249..251'),
]

CHILD = """
import json, sys, time
from timm_coded.codes import generate_scheme
k, n, a, h, seed = json.loads(sys.argv[1])
started = time.perf_counter()
scheme = generate_scheme(k, n, a, min_distance=h, seed=seed)
seconds = time.perf_counter() - started
s_min, s_max = scheme.column_sum_range
print(json.dumps(dict(h_min=scheme.min_distance, s_min=s_min, s_max=s_max, seconds=seconds,
                      pairs_at_h_min=scheme.distance_histogram()[scheme.min_distance],
                      codewords=scheme.as_strings())))
"""


def run_fresh(k: int, n: int, a: int, h, seed: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, '-c', CHILD, json.dumps([k, n, a, h, seed])],
                          capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result['process_seconds'] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=1, help='fresh processes per row (median time)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    print(f'machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; '
          f'seed {args.seed}; median of {args.repeat} fresh process(es)\n')
    print('| K, N, N_act | H asked | H_min | S_min..S_max | pairs at H_min | generator s | process s | '
          'paper (Appendix A) |')
    print('|---|---|---|---|---|---|---|---|')
    for k, n, a, h_paper, paper in SETTINGS:
        for h in (h_paper, None):
            runs = [run_fresh(k, n, a, h, args.seed) for _ in range(args.repeat)]
            if any(r['codewords'] != runs[0]['codewords'] for r in runs):
                raise SystemExit(f'({k},{n},{a},{h}): different tables from the same arguments')
            first = runs[0]
            print(f"| {k}, {n}, {a} | {h if h is not None else 'largest'} | {first['h_min']} | "
                  f"{first['s_min']}..{first['s_max']} | {first['pairs_at_h_min']} | "
                  f"{statistics.median(r['seconds'] for r in runs):.2f} | "
                  f"{statistics.median(r['process_seconds'] for r in runs):.2f} | {paper} |", flush=True)


if __name__ == '__main__':
    main()
