"""Checks shared by the sub-commands: argparse `type=` validators and the --device check.

Imports nothing heavy: torch is imported inside `resolve_device`, when a command runs.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, List, Optional

from ..errors import TimmCodedError

__all__ = ['int_at_least', 'non_negative_int', 'positive_int', 'positive_float', 'resolve_device']


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse `type=`: an integer >= `minimum` (else usage + one error line, exit code 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {value}')
        return value

    parse.__name__ = f'int_at_least_{minimum}'
    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """argparse `type=`: a finite number > 0 (no nan, inf, 0 or negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a finite number > 0, got {text!r}') from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'must be a finite number > 0, got {text}')
    return value


def _available_devices(torch) -> List[str]:
    devices = ['cpu']
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices += (['cuda'] + [f'cuda:{i}' for i in range(count)]) if count > 1 else ['cuda']
    mps = getattr(torch.backends, 'mps', None)
    if mps is not None and mps.is_available():
        devices.append('mps')
    return devices


def resolve_device(spec: Optional[str], option: str = '--device') -> str:
    """The torch device a command should run on: `spec` checked against this machine, or (None)
    cuda when available, else cpu. Raises TimmCodedError naming the device and what is available,
    before any model is built."""
    import torch

    if spec is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    available = ', '.join(_available_devices(torch))
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise TimmCodedError(f'{option} {spec!r} is not a torch device; available here: {available}') from None
    if device.type == 'cpu':
        return spec
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            why = '' if torch.version.cuda else f' (this torch {torch.__version__} is built without CUDA)'
            raise TimmCodedError(f'{option} {spec}: CUDA is not available on this machine{why}; '
                                 f'available here: {available}')
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise TimmCodedError(f'{option} {spec}: this machine has {count} CUDA device(s) '
                                 f'(cuda:0..cuda:{count - 1}); available here: {available}')
        return spec
    if device.type == 'mps':
        mps = getattr(torch.backends, 'mps', None)
        if mps is not None and mps.is_available():
            return spec
    else:  # xpu, ...: a torch.<type> module that says whether it is available
        backend = getattr(torch, device.type, None)
        is_available = getattr(backend, 'is_available', None)
        if callable(is_available) and is_available():
            return spec
    raise TimmCodedError(f'{option} {spec}: no {device.type} device on this machine; available here: {available}')
