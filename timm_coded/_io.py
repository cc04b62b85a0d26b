"""Writing output folders without losing anything: stage beside the target, then move into place.

The rule every command follows: a failed or interrupted run leaves nothing half-written, and a
run never deletes what timm-coded did not create. Each output folder records the files it wrote
(`.timm-coded-outputs.json`); a later run into the same folder replaces and removes only those.
"""
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Set

from .errors import TimmCodedError

__all__ = ['OUTPUTS_RECORD', 'StagedOutput', 'written_files', 'umask_mode', 'atomic_write_text', 'normalise_modes',
           'sigterm_as_keyboard_interrupt']

OUTPUTS_RECORD = '.timm-coded-outputs.json'


def umask_mode(base: int = 0o666) -> int:
    """`base` masked by the process umask: the mode a plainly created file would get."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a file so that it is either the old one or the complete new one: a temporary file in
    the same folder, flushed and fsynced, then renamed over `path` (a symlink's target is replaced).
    Any failure (a folder at `path`, a full disk, Ctrl-C) removes the temporary file."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    fd, tmp = tempfile.mkstemp(prefix=f'.{target.name}.', suffix='.tmp', dir=target.parent)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600; give what a plain open() would have
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def normalise_modes(folder: Path) -> None:
    """Give every file and folder below `folder` the mode a plain open()/mkdir() would: some writers
    create 0600 files (safetensors' save_file, mkstemp) or 0700 folders (mkdtemp)."""
    file_mode, dir_mode = umask_mode(0o666), umask_mode(0o777)
    for path in Path(folder).rglob('*'):
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else file_mode)


def written_files(folder: Path) -> Set[str]:
    """Relative paths (posix) that an earlier timm-coded run recorded as written into `folder`."""
    record = Path(folder) / OUTPUTS_RECORD
    if not record.is_file():
        return set()
    try:
        files = json.loads(record.read_text(encoding='utf-8'))['files']
    except (ValueError, KeyError, TypeError, OSError):
        return set()
    return {f for f in files if isinstance(f, str) and not f.startswith('/') and '..' not in Path(f).parts}


def _files_under(folder: Path) -> List[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file() or p.is_symlink())


class StagedOutput:
    """Stage an output folder's content in a hidden temporary folder beside it; `commit()` moves it in.

    `out` may already exist. Files an earlier timm-coded run wrote there (its record) are replaced,
    or removed when this run does not write them again, if `replace_own` (the demo: re-running it
    refreshes its folder) or `overwrite` (the --overwrite flag) is set; otherwise they are refused.
    A file that timm-coded did not write is never replaced or removed, whatever the flags: the run
    is refused, naming it. `check()` says so before any work is done; `discard()` (also on any
    exception inside a `with` block) removes the staging folder and the parent folders it created.
    """

    def __init__(self, out: Path, overwrite: bool = False, replace_own: bool = False) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        self.replace_own = replace_own or overwrite
        if self.out.exists() and not self.out.is_dir():
            raise TimmCodedError(f'--out {self.out} exists and is not a folder')
        self._created: List[Path] = []
        parent = self.out.absolute().parent
        while not parent.exists():
            self._created.append(parent)
            parent = parent.parent
        self.out.absolute().parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f'.{self.out.name}.', suffix='.tmp', dir=self.out.absolute().parent))
        os.chmod(self.tmp, umask_mode(0o777))

    def check(self, names: Optional[List[str]] = None) -> None:
        """Refuse now if writing `names` (files or folders; default: what is staged) would replace
        a file timm-coded did not write, or an earlier run's file without `overwrite`."""
        if not self.out.exists():
            return
        names = _files_under(self.tmp) if names is None else names
        ours = written_files(self.out)
        foreign, own = [], []
        for name in names:
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                inside = [f'{name.rstrip("/")}/{f}' for f in _files_under(target)]
                foreign += [f for f in inside if f not in ours]
                own += [f for f in inside if f in ours]
            elif target.exists() or target.is_symlink():
                (own if name in ours else foreign).append(name)
        if foreign:
            raise TimmCodedError(f'{self.out} already holds {_some(foreign)}, not written by timm-coded, which never '
                                 'replaces such files: choose another --out or move them away')
        if own and not self.replace_own:
            raise TimmCodedError(f'{self.out} already holds {_some(own)} from an earlier run; '
                                 'pass --overwrite to replace them or choose another --out')

    def commit(self) -> Dict[str, List[str]]:
        """Move the staged files into `out`; returns {'written': [...], 'removed': [...]}."""
        new = _files_under(self.tmp)
        self.check(new)
        ours = written_files(self.out)
        self.out.mkdir(exist_ok=True)
        removed = []
        for name in sorted(ours - set(new)):  # our own stale outputs from the previous run
            target = self.out / name
            if target.is_file() or target.is_symlink():
                target.unlink()
                removed.append(name)
                _remove_empty_parents(target.parent, self.out)
        normalise_modes(self.tmp)
        for name in new:
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                raise TimmCodedError(f'{target} is a folder; this run writes a file there')
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp / name, target)
        record = self.out / OUTPUTS_RECORD
        staged_record = self.tmp / OUTPUTS_RECORD
        staged_record.write_text(json.dumps({'files': new}, indent=1) + '\n', encoding='utf-8')
        os.chmod(staged_record, umask_mode())
        os.replace(staged_record, record)
        self.discard()
        return {'written': new, 'removed': removed}

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self._created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> 'StagedOutput':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def _some(names: List[str], shown: int = 3) -> str:
    return ', '.join(names[:shown]) + (f' and {len(names) - shown} more' if len(names) > shown else '')


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


class sigterm_as_keyboard_interrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt, so the cleanup that Ctrl-C runs
    (discarding staged folders, temp dirs) also runs when a job scheduler or `kill` stops us."""

    def __enter__(self) -> 'sigterm_as_keyboard_interrupt':
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    @staticmethod
    def _raise(signum, frame) -> None:
        raise KeyboardInterrupt(f'signal {signum}')

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
