"""A real Hub-compatible server for the tests: olah in its offline local-git mirror mode, on 127.0.0.1.

olah (installed by scripts/install_olah.sh into .venv-olah) serves `hf_hub_download`,
`snapshot_download`, `list_repo_refs`, `list_repo_tree` and `timm.create_model('hf-hub:...')` to the
real huggingface_hub client, from ordinary git repos at MIRRORS/models/ORG/NAME, at any branch or
commit. It cannot accept uploads, so tests commit exported folders into those git repos themselves.
Files named *.safetensors are stored as git-LFS pointers with the object under .git/lfs/objects (as
the Hub stores weights), so the client sees `lfs.sha256` and X-Linked-Etag exactly as on the Hub.

Use in a test module:  `from hub_server import local_hub, hub_client  # noqa: F401 (fixtures)`.
Without .venv-olah the Hub tests skip, except under CI=true, where they fail.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
OLAH_CLI = Path(os.environ.get('TIMM_CODED_OLAH_CLI', REPO_ROOT / '.venv-olah' / 'bin' / 'olah-cli'))
_PROBE_REPO = 'probe/ready'
_GIT_ENV = {
    'GIT_AUTHOR_NAME': 'timm-coded tests', 'GIT_AUTHOR_EMAIL': 'tests@localhost',
    'GIT_COMMITTER_NAME': 'timm-coded tests', 'GIT_COMMITTER_EMAIL': 'tests@localhost',
    'GIT_CONFIG_GLOBAL': os.devnull, 'GIT_CONFIG_NOSYSTEM': '1',
}
_GITATTRIBUTES = '*.safetensors filter=lfs diff=lfs merge=lfs -text\n'


def _in_ci() -> bool:
    return os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')


def require_olah() -> Path:
    """olah-cli's path; skip (fail under CI=true) with the fix when it is not installed."""
    if OLAH_CLI.is_file() and os.access(OLAH_CLI, os.X_OK) and shutil.which('git'):
        return OLAH_CLI
    reason = (f'local Hub server not available ({OLAH_CLI} or git missing): '
              'run scripts/install_olah.sh to install olah==0.5.4 into .venv-olah')
    if _in_ci():
        pytest.fail(reason + ' [CI=true: the Hub tests must run]')
    pytest.skip(reason)


def _git(repo: Path, *args: str) -> str:
    env = dict(os.environ, **_GIT_ENV)
    done = subprocess.run(['git', '-C', str(repo), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'git {" ".join(args)} failed in {repo}: {done.stderr.strip()}')
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class LocalHub:
    """A running olah server and the git repos it serves."""

    def __init__(self, root: Path, port: int, process: subprocess.Popen, log_path: Path):
        self.root = root
        self.port = port
        self.process = process
        self.log_path = log_path
        self.mirrors = root / 'mirrors'

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def log_tail(self, n: int = 30) -> str:
        try:
            return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-n:])
        except OSError:
            return '(no log)'

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / 'models' / repo_id

    def create_repo(self, repo_id: str) -> Path:
        """A new repo whose main holds .gitattributes, as `HfApi.create_repo` leaves it."""
        path = self.repo_path(repo_id)
        if path.exists():
            raise FileExistsError(f'{repo_id} already exists on the local hub')
        path.mkdir(parents=True)
        _git(path, 'init', '-q', '-b', 'main')
        (path / '.gitattributes').write_text(_GITATTRIBUTES)
        _git(path, 'add', '.gitattributes')
        _git(path, 'commit', '-q', '-m', 'initial commit')
        return path

    def branch_head(self, repo_id: str, branch: str) -> str:
        return _git(self.repo_path(repo_id), 'rev-parse', f'refs/heads/{branch}')

    def commit_files(
            self,
            repo_id: str,
            folder: Path,
            branch: str,
            *,
            message: str = 'publish',
            lfs_suffixes: Iterable[str] = ('.safetensors',),
            replace_all: bool = True,
    ) -> str:
        """Commit the files of `folder` to `branch` (created from main if new); return the commit sha.

        With `replace_all`, files already on the branch but not in `folder` are removed (like the plan's
        CommitOperationDelete); .gitattributes is kept.
        """
        repo = self.repo_path(repo_id)
        if not repo.exists():
            self.create_repo(repo_id)
        branches = _git(repo, 'for-each-ref', '--format=%(refname:short)', 'refs/heads').split()
        if branch in branches:
            _git(repo, 'checkout', '-q', branch)
        else:
            _git(repo, 'checkout', '-q', '-b', branch, 'main')
        if replace_all:
            tracked = [p for p in _git(repo, 'ls-files').splitlines() if p != '.gitattributes']
            if tracked:
                _git(repo, 'rm', '-q', '--', *tracked)
        lfs_suffixes = tuple(lfs_suffixes)
        for src in sorted(p for p in folder.rglob('*') if p.is_file()):
            rel = src.relative_to(folder)
            dst = repo / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name.endswith(lfs_suffixes):
                self._store_lfs(repo, src, dst)
            else:
                shutil.copyfile(src, dst)
            _git(repo, 'add', '--', str(rel))
        _git(repo, 'commit', '-q', '--allow-empty', '-m', message)
        return _git(repo, 'rev-parse', 'HEAD')

    @staticmethod
    def _store_lfs(repo: Path, src: Path, pointer: Path) -> None:
        data = src.read_bytes()
        oid = hashlib.sha256(data).hexdigest()
        obj = repo / '.git' / 'lfs' / 'objects' / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        pointer.write_text(f'version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n')

    def lfs_object(self, repo_id: str, sha256: str) -> Path:
        """Where the server keeps an LFS file's bytes (tests tamper with it)."""
        return self.repo_path(repo_id) / '.git' / 'lfs' / 'objects' / sha256[:2] / sha256[2:4] / sha256

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _write_config(root: Path, port: int) -> Path:
    netloc = f'127.0.0.1:{port}'
    dead = '127.0.0.1:9'  # nothing listens there: offline mode must never need the real Hub
    config = root / 'olah.toml'
    config.write_text(
        '[basic]\n'
        f'host = "127.0.0.1"\nport = {port}\n'
        f'mirror-netloc = "{netloc}"\nmirror-lfs-netloc = "{netloc}"\n'
        f'hf-scheme = "http"\nhf-netloc = "{dead}"\nhf-lfs-netloc = "{dead}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\nrepos-path = "{root / "cache"}"\n'
        '[accessibility]\noffline = true\n')
    return config


def start_local_hub(root: Path, timeout: float = 60.0, attempts: int = 3) -> LocalHub:
    """Start olah on a free 127.0.0.1 port serving `root/mirrors`; wait until it answers."""
    olah_cli = require_olah()
    root.mkdir(parents=True, exist_ok=True)
    last_error = ''
    for _ in range(attempts):  # a free port can be taken between choosing and binding it
        port = _free_port()
        config = _write_config(root, port)
        log_path = root / f'olah-{port}.log'
        with open(log_path, 'wb') as log:
            process = subprocess.Popen(
                [str(olah_cli), '-c', str(config)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        hub = LocalHub(root, port, process, log_path)
        if not hub.repo_path(_PROBE_REPO).exists():
            hub.create_repo(_PROBE_REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f'{hub.url}/api/models/{_PROBE_REPO}/refs', timeout=2) as r:
                    if r.status == 200:
                        return hub
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        hub.stop()
        last_error = hub.log_tail()
    raise RuntimeError(f'olah did not become ready on 127.0.0.1; last log:\n{last_error}')


@pytest.fixture(scope='session')
def local_hub(tmp_path_factory) -> LocalHub:
    """One olah server for the whole session (it starts in ~2-3 s); repos are added as tests need them."""
    require_olah()
    hub = start_local_hub(tmp_path_factory.mktemp('olah'))
    yield hub
    hub.stop()


def point_client_at(monkeypatch, url: str, cache_dir: Path, offline: bool = False) -> None:
    """Aim the already-imported huggingface_hub at `url` with its own cache (and env for subprocesses)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'ENDPOINT', url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
    if hasattr(constants, 'HF_URL_HOSTS'):  # hosts whose redirects and auth the client trusts (hub >= 1.x)
        monkeypatch.setattr(constants, 'HF_URL_HOSTS', constants.HF_URL_HOSTS | {'127.0.0.1'})
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache_dir))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', offline)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_IMPLICIT_TOKEN', True)  # never send a user's token here
    monkeypatch.setenv('HF_ENDPOINT', url)
    monkeypatch.setenv('HF_HUB_CACHE', str(cache_dir))
    monkeypatch.setenv('HF_HUB_DISABLE_IMPLICIT_TOKEN', '1')
    if offline:
        monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    else:
        monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)


@pytest.fixture
def hub_client(local_hub, monkeypatch, tmp_path) -> LocalHub:
    """huggingface_hub (and so timm) talking to the local hub, with a fresh cache under tmp_path."""
    point_client_at(monkeypatch, local_hub.url, tmp_path / 'hf-cache')
    return local_hub
