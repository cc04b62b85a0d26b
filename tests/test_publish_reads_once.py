"""Planning a publish reads each artifact file for hashing once: huggingface_hub's `CommitOperationAdd` (built
once per file) hashes it, the plan, the manifest and the commit all use that hash, and a git blob sha1 is
computed only to compare with a plain (non-LFS) file the Hub already holds, from that same read.

Reads are counted at `open`: every binary open of a file in an export folder is watched, and an open that
reads the file to its end is one full read. Planning reads nothing else in full (config.json is parsed in
text mode, the weights are checked through safetensors' own reader), so full reads are the hashing reads.
"""
from __future__ import annotations

import builtins
import collections
import hashlib
import io
import os
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd

from hub_server import local_hub, hub_client  # noqa: F401 (fixtures)
from test_hub import _planned_folders, _reexport_for, exports  # noqa: F401 (exports: a module fixture)
from timm_coded.hub import ARTIFACT_FILES, fetch_remote_state, plan_publish, publish
from timm_coded.hub.manifest import Manifest

EXPORTED = {'config.json': 1, 'model.safetensors': 1}  # README.md: the card written for the repo is sent instead


class _Watched:
    """A binary file opened for reading, counting the bytes its reads return."""

    def __init__(self, file, path: Path, reads: collections.Counter):
        self._file, self._path, self._reads = file, path, reads
        self._size, self._read, self._counted = os.fstat(file.fileno()).st_size, 0, False

    def _note(self, n: int) -> None:
        self._read += n
        if not self._counted and (self._read >= self._size or n == 0):
            self._counted = True
            self._reads[self._path] += 1

    def read(self, *args):
        data = self._file.read(*args)
        self._note(len(data))
        return data

    def readinto(self, buffer):
        n = self._file.readinto(buffer)
        self._note(n or 0)
        return n

    def __enter__(self):
        self._file.__enter__()
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.fixture
def full_reads(monkeypatch):
    """path -> how many times the file was read to its end, for files under the folders in `watch`."""
    reads: collections.Counter = collections.Counter()
    watch: list = []
    real_open = io.open

    def watched_open(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and 'b' in mode and 'r' in mode:
            path = Path(file).resolve()
            if any(folder in path.parents for folder in watch):
                return _Watched(f, path, reads)
        return f

    monkeypatch.setattr(builtins, 'open', watched_open)
    monkeypatch.setattr(io, 'open', watched_open)
    reads.watch = watch
    return reads


def _by_file(reads, folders) -> list:
    """Per folder: file name -> full reads, for the files read at all."""
    counts = [{name: reads[(Path(folder) / name).resolve()] for name in ARTIFACT_FILES} for folder in folders]
    return [{name: n for name, n in c.items() if n} for c in counts]


def test_the_counter_sees_hashing_reads(full_reads, exports):
    """The watch itself: what the hashing helpers read is counted (read_bytes, sha_fileobj), a peek is not."""
    from huggingface_hub.lfs import UploadInfo
    from timm_coded.hub import git_blob_sha1, sha256_file

    folder = exports.full
    full_reads.watch.append(folder.resolve())
    sha256_file(folder / 'config.json')
    git_blob_sha1(folder / 'config.json')
    UploadInfo.from_path(str(folder / 'model.safetensors'))  # reads a 512-byte sample only
    assert _by_file(full_reads, [folder]) == [{'config.json': 2}]


def test_planning_a_new_repo_reads_each_file_once(full_reads, exports):
    folders = exports.all_folders()
    full_reads.watch.extend(f.resolve() for f in folders)
    plan = plan_publish(folders, exports.repo_id, remote=None)
    assert _by_file(full_reads, folders) == [EXPORTED] * 3
    full_reads.watch.clear()  # the checks below read the files themselves

    # the plan, the commit description and the manifest record carry that one hash; the operation
    # the commit sends is the file's own (not built, and hashed, a second time)
    for commit, folder in zip(plan.commits, folders):
        files = {f.path: f for f in commit.export.files}
        for op in commit.operations:
            assert op is files[op.path_in_repo].operation
            assert getattr(op.upload_info, 'is_hashed', True)  # huggingface_hub will not hash it again on upload
            content = (op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                       else Path(op.path_or_fileobj).read_bytes())
            assert op.upload_info.sha256.hex() == hashlib.sha256(content).hexdigest()
            assert f'{op.path_in_repo} sha256={op.upload_info.sha256.hex()} size={len(content)}' in (
                commit.commit_description)
        assert commit.export.to_artifact(exports.repo_id, 'a' * 40).files == tuple(
            f.record() for f in commit.export.files)


def test_a_file_changed_after_planning_is_sent_with_the_planned_hash(exports, tmp_path):
    """The operation carries the sha256 and size hashed when planning (what the manifest records): an upload of
    other bytes is checked against them (the Hub refuses an LFS object whose content does not match)."""
    import shutil

    folder = tmp_path / 'full'
    shutil.copytree(exports.full, folder)
    plan = plan_publish([folder], exports.repo_id, remote=None, manifest=Manifest())
    (op,) = [op for op in plan.commits[0].operations if op.path_in_repo == 'model.safetensors']
    planned = (op.upload_info.sha256, op.upload_info.size)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:-8])
    assert (op.upload_info.sha256, op.upload_info.size) == planned
    assert plan.commits[0].export.files[ARTIFACT_FILES.index('model.safetensors')].record().sha256 == planned[0].hex()


def test_planning_against_a_published_repo_reads_each_file_once(hub_client, exports, full_reads, tmp_path):
    """The repo holds every artifact: config.json and README.md as plain git files (compared by git blob sha1),
    the weights in LFS (compared by sha256). Each file is still read once, and nothing is to be sent."""
    repo = exports.repo_id.replace('coded-toy', 'coded-toy-once')
    folders = _reexport_for(exports, repo, tmp_path)
    sent = _planned_folders(plan_publish(folders, repo, remote=None), tmp_path / 'sent')
    for branch, folder in sent.items():
        hub_client.commit_files(repo, folder, branch)
    remote = fetch_remote_state(repo)
    assert remote.branches['main'].files['config.json'].sha256 is None  # a plain git file: blob id only

    full_reads.watch.extend(f.resolve() for f in folders)
    assert plan_publish(folders, repo, remote).up_to_date
    assert _by_file(full_reads, folders) == [EXPORTED] * 3

    full_reads.clear()  # publish (reads the remote, plans, sends nothing) likewise
    result = publish(folders, repo, manifest_path=tmp_path / 'manifest.json')
    assert result.plan.up_to_date and len(result.artifacts) == 3
    assert _by_file(full_reads, folders) == [EXPORTED] * 3
    assert [a.files for a in result.artifacts] == [
        tuple(f.record() for f in c.export.files) for c in result.plan.commits]


def test_a_changed_plain_file_is_sent_and_read_once(hub_client, exports, full_reads, tmp_path):
    """A plain git file on the Hub of the same size but other content: its git blob sha1 differs, so it is
    sent; that one read gave both the blob sha1 and the sha256 the operation carries."""
    import json

    repo = exports.repo_id.replace('coded-toy', 'coded-toy-once-changed')
    folders = _reexport_for(exports, repo, tmp_path)
    sent = _planned_folders(plan_publish(folders[:1], repo, remote=None), tmp_path / 'sent')['main']
    config = sent / 'config.json'
    text = config.read_text()
    assert '91.25' in text
    config.write_text(text.replace('91.25', '91.26'))  # same size, other bytes
    hub_client.commit_files(repo, sent, 'main')

    full_reads.watch.append(folders[0].resolve())
    plan = plan_publish(folders[:1], repo, fetch_remote_state(repo))
    assert _by_file(full_reads, folders[:1]) == [EXPORTED]
    (op,) = plan.commits[0].operations
    assert isinstance(op, CommitOperationAdd) and op.path_in_repo == 'config.json'
    content = (folders[0] / 'config.json').read_bytes()
    assert json.loads(content)['timm_coded']['metrics'] == {'top1': 91.25}
    assert (op.upload_info.sha256.hex(), op.upload_info.size) == (hashlib.sha256(content).hexdigest(), len(content))
