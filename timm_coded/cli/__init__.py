"""`timm-coded` command line: one sub-command group per concern, each in `timm_coded/cli/`.

Each module in this package exposes `register(subparsers)`; it adds its parser(s) and sets
`func=` to a callable taking the parsed args and returning an exit code. Modules are
imported only when the command line is parsed, so `timm-coded --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from .._io import sigterm_as_keyboard_interrupt
from ..errors import TimmCodedError

# (module in timm_coded.cli) — order is the order shown in --help
_COMMAND_MODULES = ('demo', 'schemes', 'extract', 'evaluate', 'publish', 'export_onnx')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-coded',
        description='Coded ResNeXt for timm: coding schemes, binary classifiers, early decoding, Hub export.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f'timm_coded.cli.{name}')
        except ModuleNotFoundError as e:
            if e.name == f'timm_coded.cli.{name}':
                continue  # command group not shipped in this build
            raise
        module.register(sub)
    return parser


def _stdout_reader_gone() -> bool:
    """True when our stdout is a pipe (or socket) whose reading end is closed."""
    try:
        import select
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll (Windows), or stdout has no descriptor: assume so
        return True


def _stdout_closed() -> None:
    """The reader of our stdout went away (`timm-coded ... | head -1`): that is not an error.

    Point stdout at /dev/null so that Python's final flush at exit does not fail a second time
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured, closed)
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_keyboard_interrupt():  # `kill` / a job scheduler: clean up as on Ctrl-C
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe broke: a bug, keep its traceback
        _stdout_closed()
        return 0
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # user mistakes get one clear line; bugs keep their traceback
        if isinstance(e, (TimmCodedError, FileNotFoundError, NotADirectoryError, PermissionError)):
            print(f'timm-coded {args.command}: error: {e}', file=sys.stderr)
            return 2
        raise


