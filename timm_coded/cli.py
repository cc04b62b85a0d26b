"""`timm-coded` command line: one sub-command group per concern, each in `timm_coded/_cli/`.

Each module in `_cli` exposes `register(subparsers)`; it adds its parser(s) and sets
`func=` to a callable taking the parsed args and returning an exit code. Modules are
imported only when the command line is parsed, so `timm-coded --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .errors import TimmCodedError

# (module in timm_coded._cli) — order is the order shown in --help
_COMMAND_MODULES = ('demo', 'schemes', 'extract', 'evaluate', 'publish')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-coded',
        description='Coded ResNeXt for timm: coding schemes, binary classifiers, early decoding, Hub export.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f'timm_coded._cli.{name}')
        except ModuleNotFoundError as e:
            if e.name == f'timm_coded._cli.{name}':
                continue  # command group not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes get one clear line; bugs keep their traceback
        if isinstance(e, (TimmCodedError, FileNotFoundError, NotADirectoryError, PermissionError)):
            print(f'timm-coded {args.command}: error: {e}', file=sys.stderr)
            return 2
        raise


if __name__ == '__main__':
    sys.exit(main())
