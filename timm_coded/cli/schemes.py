"""`timm-coded schemes {generate,show,list}`: make, inspect and list coding schemes."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..codes import CodingScheme, builtin_scheme, generate_scheme, list_builtin_schemes, load_scheme
from ..errors import SchemeError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'schemes', help='generate, show and list coding schemes (the K x N codeword tables)',
        description='Coding schemes: one codeword of N subNNs per class, N_act of them active.')
    actions = parser.add_subparsers(dest='schemes_action', metavar='ACTION')
    actions.required = True

    generate = actions.add_parser(
        'generate', help='search for a scheme with a large H_min and even column sums',
        description='Generate a coding scheme (deterministic for given arguments and seed). Prints H_min, '
                    'S_min, S_max and the time taken; writes the table as JSON to --out (atomically) or, '
                    'without --out, to stdout with the metrics on stderr.')
    generate.add_argument('--classes', type=int, required=True, metavar='K', help='number of classes (rows)')
    generate.add_argument('--subnns', type=int, required=True, metavar='N', help='subNNs per block (columns)')
    generate.add_argument('--active', type=int, required=True, metavar='N_ACT', help='active subNNs per class')
    generate.add_argument('--min-distance', type=int, default=None, metavar='H',
                          help='required minimum Hamming distance (default: the largest found)')
    generate.add_argument('--seed', type=int, default=0, help='seed of the search (default: 0)')
    generate.add_argument('--time-budget', type=float, default=60.0, metavar='SEC',
                          help='give up after this many seconds (default: 60)')
    generate.add_argument('--class-names', type=Path, default=None, metavar='FILE',
                          help='text file with one class name per line, in row order')
    generate.add_argument('--name', default=None, help='name stored in the table')
    generate.add_argument('--out', type=Path, default=None, metavar='FILE', help='write the JSON table here')
    generate.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    generate.set_defaults(func=_generate)

    show = actions.add_parser('show', help='print a built-in or saved scheme with its metrics',
                              description='Print a scheme: metrics, column sums and every class codeword.')
    show.add_argument('scheme', metavar='NAME|FILE', help='built-in name (see `schemes list`) or a JSON file')
    show.set_defaults(func=_show)

    listing = actions.add_parser('list', help='list the built-in schemes with their metrics')
    listing.set_defaults(func=_list)


def _read_class_names(path: Path) -> list:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise SchemeError(f'{path} holds no class names (one per line expected)')
    return names


def _metrics(scheme: CodingScheme) -> str:
    s_min, s_max = scheme.column_sum_range
    return f'H_min={scheme.min_distance} S_min={s_min} S_max={s_max}'


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that cannot or should not be written, before the search runs."""
    if out.is_dir():
        raise SchemeError(f'--out {out} is a folder; give the path of the JSON file to write')
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise SchemeError(f'--out {out} already exists; pass --overwrite to replace it')
    parent = out.absolute().parent
    if not parent.is_dir():
        what = 'is not a folder' if parent.exists() else 'does not exist'
        raise SchemeError(f'cannot write --out {out}: No such file or directory ({parent} {what})')


def _generate(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_out(args.out, args.overwrite)
    class_names = _read_class_names(args.class_names) if args.class_names is not None else None
    started = time.perf_counter()
    scheme = generate_scheme(args.classes, args.subnns, args.active, min_distance=args.min_distance,
                             seed=args.seed, time_budget=args.time_budget, class_names=class_names)
    elapsed = time.perf_counter() - started
    if args.name is not None:
        scheme = CodingScheme(scheme.codewords, class_names=scheme.class_names, name=args.name,
                              source=scheme.source)
    report = (f'{_metrics(scheme)} (K={scheme.num_classes} N={scheme.num_subnns} N_act={scheme.num_active}) '
              f'in {elapsed:.2f}s')
    if args.out is None:
        print(report, file=sys.stderr)
        print(scheme.to_json())
    else:
        scheme.save(args.out)
        print(report)
        print(f'wrote {args.out}')
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        scheme = load_scheme(args.scheme)
    except UnicodeDecodeError:  # an image, a checkpoint, random bytes, ...
        raise SchemeError(f'{args.scheme} is not a coding scheme JSON file (it is not text)') from None
    title = scheme.name or args.scheme
    print(f'{title}: K={scheme.num_classes} N={scheme.num_subnns} N_act={scheme.num_active} {_metrics(scheme)}')
    if scheme.source:
        print(f'source: {scheme.source}')
    pairs = ' '.join(f'{d}:{count}' for d, count in scheme.distance_histogram().items())
    print(f'class pairs by distance: {pairs}')
    print('column sums: ' + ' '.join(str(int(s)) for s in scheme.column_sums))
    names = scheme.class_names or [''] * scheme.num_classes
    name_width = max([len('name')] + [len(n) for n in names])
    print(f'{"class":>5}  {"name":<{name_width}}  {"codeword":<{scheme.num_subnns}}  active subNNs')
    for k, (name, codeword) in enumerate(zip(names, scheme.as_strings())):
        active = ' '.join(str(i) for i in scheme.active_subnns(k))
        print(f'{k:>5}  {name:<{name_width}}  {codeword}  {active}')
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = [('name', 'K', 'N', 'N_act', 'H_min', 'S_min', 'S_max', 'source')]
    for name in list_builtin_schemes():
        scheme = builtin_scheme(name)
        s_min, s_max = scheme.column_sum_range
        source = (scheme.source or '').split('; pool:')[0]
        rows.append((name, scheme.num_classes, scheme.num_subnns, scheme.num_active, scheme.min_distance,
                     s_min, s_max, source))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print('  '.join(f'{str(cell):<{w}}' for cell, w in zip(row, widths)) + '  ' + str(row[-1]))
    return 0
