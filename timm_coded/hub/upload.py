"""Publishing exports to the Hub: the remote state, a plan of one commit per artifact (only what the
remote does not already hold), applying it, and recording each landed artifact in the manifest.

Every artifact is one commit on its own branch (`layout.artifact_branch`), so an interrupted publish
never leaves a class half-published. `publish` checks every folder's weights first (`verify_export`)
and uploads a card written for the repo and branch it lands on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from ..errors import TimmCodedError
from .export import (
    _REPO_HOUSEKEEPING, _REPO_ID_RE, CARD_NAME, CardLocation, ExportedArtifact, LocalFile, PathLike, _card_text,
    read_export, verify_export,
)
from .layout import MAIN_BRANCH
from .manifest import Artifact, HubLocation, Manifest, load_manifest, update_manifest

__all__ = [
    'RemoteFile', 'RemoteBranch', 'RemoteState', 'fetch_remote_state', 'ArtifactCommit', 'PublishPlan',
    'plan_publish', 'apply_plan', 'publish', 'unreachable_errors',
]

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- publish

@dataclass(frozen=True)
class RemoteFile:
    """A file as the Hub reports it: `sha256` for LFS files, `blob_id` (git sha1) for all. A file this plan
    will send (`planned`) has its sha256 and no blob_id."""
    path: str
    size: int
    blob_id: Optional[str]
    sha256: Optional[str] = None

    def same_content(self, local: LocalFile) -> bool:
        if self.sha256 is not None:
            return self.sha256 == local.sha256 and self.size == local.size
        # a plain git file: its blob id covers the size, so only a file of that size needs a git sha1
        return self.size == local.size and self.blob_id == local.blob_id

    @classmethod
    def planned(cls, local: LocalFile) -> 'RemoteFile':
        return cls(local.path, local.size, None, local.sha256)


@dataclass(frozen=True)
class RemoteBranch:
    name: str
    commit: str
    files: Mapping[str, RemoteFile]


@dataclass(frozen=True)
class RemoteState:
    """What a Hub repo holds now: its branches, their head commits and files. `exists=False`: no repo.
    `known=False`: the Hub could not be asked (offline); a dry run then plans as if the repo were new."""
    repo_id: str
    exists: bool = False
    branches: Mapping[str, RemoteBranch] = field(default_factory=dict)
    known: bool = True


def unreachable_errors() -> tuple:
    """Exceptions meaning the Hub could not be asked at all (offline mode, no network), whichever
    HTTP client huggingface_hub uses."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, name in (('httpx2', 'TransportError'), ('httpx', 'TransportError'), ('requests', 'ConnectionError'),
                         ('requests', 'Timeout')):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


_UNREACHABLE = unreachable_errors()


def fetch_remote_state(repo_id: str, api: Optional[HfApi] = None, token: Optional[str] = None) -> RemoteState:
    """Read the repo's branches and file hashes (read-only requests)."""
    api = api or HfApi()
    try:
        refs = api.list_repo_refs(repo_id, token=token)
    except (RepositoryNotFoundError, EntryNotFoundError):
        return RemoteState(repo_id, exists=False)
    branches = {}
    for ref in refs.branches:
        files = {}
        for entry in api.list_repo_tree(repo_id, revision=ref.target_commit, recursive=True, token=token):
            if not hasattr(entry, 'blob_id'):
                continue  # a folder
            sha256 = entry.lfs.sha256 if entry.lfs is not None else None
            files[entry.path] = RemoteFile(entry.path, entry.size, entry.blob_id, sha256)
        branches[ref.name] = RemoteBranch(ref.name, ref.target_commit, files)
    return RemoteState(repo_id, exists=True, branches=branches)


@dataclass
class ArtifactCommit:
    """One artifact's commit: what would be sent to its branch, and from which state."""
    export: ExportedArtifact
    branch: str
    create_branch: bool  # the branch does not exist yet: create it from `main`'s head first
    parent_commit: Optional[str]  # head the commit must land on (None: a branch created by this plan)
    operations: List[Union[CommitOperationAdd, CommitOperationDelete]]
    commit_message: str
    commit_description: str

    @property
    def up_to_date(self) -> bool:
        return not self.create_branch and not self.operations

    def describe(self) -> List[str]:
        if self.create_branch:
            head = 'new branch from main'
        elif self.parent_commit is None:
            head = 'made by create_repo'
        else:
            head = f'head {self.parent_commit}'
        lines = [f'{self.export.name} ({self.export.kind}) -> branch {self.branch} ({head})']
        if self.up_to_date:
            lines.append('  up to date: nothing to send')
            return lines
        if self.create_branch:
            lines.append(f'  create_branch(branch={self.branch!r}, revision={MAIN_BRANCH!r})')
        lines.append(
            f'  create_commit(revision={self.branch!r}, parent_commit={self.parent_commit!r}, '
            f'commit_message={self.commit_message!r})')
        for op in self.operations:
            if isinstance(op, CommitOperationAdd):
                source = ('the model card written for this repo and branch' if isinstance(op.path_or_fileobj, bytes)
                          else str(op.path_or_fileobj))
                lines.append(
                    f'    CommitOperationAdd(path_in_repo={op.path_in_repo!r}, size={op.upload_info.size}, '
                    f'sha256={op.upload_info.sha256.hex()}, from={source!r})')
            else:
                lines.append(f'    CommitOperationDelete(path_in_repo={op.path_in_repo!r})')
        return lines


@dataclass
class PublishPlan:
    repo_id: str
    create_repo: bool
    private: bool
    commits: List[ArtifactCommit]
    remote_known: bool = True

    @property
    def up_to_date(self) -> bool:
        return not self.create_repo and all(c.up_to_date for c in self.commits)

    def describe(self) -> str:
        lines = [f'repo {self.repo_id}: ' + (
            f'create_repo(private={self.private})' if self.create_repo else 'exists')]
        if not self.remote_known:
            lines.append('remote state unknown (offline or the Hub unreachable): planned as if the repo did not '
                         'exist yet; a real run reads the repo first and sends only what is missing')
        for i, c in enumerate(self.commits, 1):
            sub = c.describe()
            lines.append(f'[{i}/{len(self.commits)}] {sub[0]}')
            lines += sub[1:]
        return '\n'.join(lines)


def _commit_text(export: ExportedArtifact) -> Tuple[str, str]:
    if export.kind == 'binary':
        b = export.meta['binary']
        message = f"Publish {export.name}: binary classifier for class {b['class_name']} (index {b['class_index']})"
    elif export.kind == 'subset':
        sub = export.meta['subset']
        message = f"Publish {export.name}: class-subset classifier {sub['name']} ({', '.join(sub['class_names'])})"
    else:
        message = f'Publish {export.name}: full model'
    description = '\n'.join(f'{f.path} sha256={f.sha256} size={f.size}' for f in export.files)
    return message, description


def _checked_exports(folders: Iterable[PathLike], repo_id: str, manifest: Optional[Manifest]) -> List[ExportedArtifact]:
    """Read the folders and refuse anything that must not be published, before any request is made:
    a folder exported for another repo, two artifacts for one branch, an unknown parent, and weights
    that do not parse or load strictly into the model config.json describes (`verify_export`).
    Returns the artifacts as they will be uploaded: each with the model card written for `repo_id`."""
    if not _REPO_ID_RE.match(repo_id):
        raise TimmCodedError(f"repo id {repo_id!r} is not 'ORG/NAME'")
    exports = [read_export(f) for f in folders]
    if not exports:
        raise TimmCodedError('nothing to publish: no artifact folders given')
    for e in exports:
        if e.meta['repo_id'] != repo_id:
            raise TimmCodedError(
                f"{e.folder} was exported for {e.meta['repo_id']}, not {repo_id} (its config.json names that "
                'repo); export it again with the right repo_id')
    by_branch: Dict[str, ExportedArtifact] = {}
    for e in exports:
        if e.branch in by_branch:
            raise TimmCodedError(f'{by_branch[e.branch].folder} and {e.folder} would both publish to branch {e.branch}')
        by_branch[e.branch] = e
    batch = {e.name: e for e in exports}
    manifest = load_manifest() if manifest is None else manifest
    known = set(manifest.names)
    for e in exports:
        parent = (e.meta.get('parent') or {}).get('artifact')
        if parent and parent not in batch and parent not in known:
            raise TimmCodedError(
                f'{e.name} names parent {parent!r}, which is neither in the weights manifest nor being published')
    num_params = {}
    for e in exports:  # every file checked before anything is planned
        model = verify_export(e)
        num_params[e.folder] = sum(p.numel() for p in model.parameters())
        del model

    def parent_location(e: ExportedArtifact) -> Optional[CardLocation]:
        parent = (e.meta.get('parent') or {}).get('artifact')
        if not parent:
            return None
        if parent in batch:  # published by this same plan
            return CardLocation(repo_id, batch[parent].branch)
        location = manifest.get(parent).location
        if isinstance(location, HubLocation):
            return CardLocation(location.repo_id, location.revision, location.commit)
        return CardLocation(package=True)

    views = []
    for e in exports:
        card = _card_text(e.architecture, e.meta, num_params[e.folder],
                          published=CardLocation(repo_id, e.branch), parent_location=parent_location(e))
        data = str(card).encode('utf-8')  # exactly what ModelCard.save writes
        files = tuple(LocalFile.from_bytes(CARD_NAME, data) if f.path == CARD_NAME else f for f in e.files)
        views.append(replace(e, files=files))
    views.sort(key=lambda e: (e.branch != MAIN_BRANCH, e.branch))
    return views


def plan_publish(
        folders: Iterable[PathLike],
        repo_id: str,
        remote: Optional[RemoteState] = None,
        *,
        private: bool = False,
        manifest: Optional[Manifest] = None,
) -> PublishPlan:
    """The exact commits that publishing `folders` to `repo_id` would make, given the remote's state.

    No network: `remote` comes from `fetch_remote_state` (None: the repo does not exist yet); `manifest`
    (default: the package's) says which parent artifacts are already published. Every folder is checked
    first (`verify_export`: weights that parse and load strictly into the model config.json describes);
    a bad one is refused before anything is planned. config.json and model.safetensors are sent as they
    are; README.md is the model card written for `repo_id` and the branch (the export's own card says it
    is not published). Files the branch already holds with the same content are not sent; files the
    branch holds that the artifact does not have are deleted, so each branch holds exactly its artifact.
    The full model (on `main`) comes first, since binary branches are created from `main`.
    """
    return _plan(_checked_exports(folders, repo_id, manifest), repo_id, remote, private)


def _plan(exports: List[ExportedArtifact], repo_id: str, remote: Optional[RemoteState], private: bool) -> PublishPlan:
    remote = remote or RemoteState(repo_id, exists=False)
    by_branch = {e.branch: e for e in exports}

    def main_once_landed() -> Dict[str, RemoteFile]:
        """main once this plan's own main commit (if any) has landed: new branches start from it."""
        files = dict(remote.branches[MAIN_BRANCH].files) if MAIN_BRANCH in remote.branches else {}
        if MAIN_BRANCH in by_branch:
            files = {p: f for p, f in files.items() if p in _REPO_HOUSEKEEPING}
            files.update({f.path: RemoteFile.planned(f) for f in by_branch[MAIN_BRANCH].files})
        return files

    # Each file is hashed once, by its own CommitOperationAdd (LocalFile.operation), which the commit sends as
    # planned: every file is hashed while planning (the commit description names each sha256), so the sha256
    # the plan and the manifest record is the one the upload is checked against. main's state for new branches
    # is taken after main's own commit is planned (exports come main first), so a file compared with a plain
    # git file on main has its sha256 from the read that gave its git sha1.
    main_files: Optional[Dict[str, RemoteFile]] = None
    commits = []
    for e in exports:
        existing = remote.branches.get(e.branch)
        if existing is not None:
            base_files = existing.files
        elif e.branch == MAIN_BRANCH:  # main in a new repo starts empty (but for .gitattributes)
            base_files = {}
        else:  # a new branch starts as main
            main_files = main_once_landed() if main_files is None else main_files
            base_files = main_files
        local = {f.path: f for f in e.files}
        operations: List[Union[CommitOperationAdd, CommitOperationDelete]] = [
            f.operation for f in e.files if not (f.path in base_files and base_files[f.path].same_content(f))]
        operations += [
            CommitOperationDelete(path_in_repo=p) for p in sorted(base_files)
            if p not in local and p not in _REPO_HOUSEKEEPING]
        message, description = _commit_text(e)
        commits.append(ArtifactCommit(
            export=e, branch=e.branch, create_branch=existing is None and e.branch != MAIN_BRANCH,
            parent_commit=existing.commit if existing is not None else None,
            operations=operations, commit_message=message, commit_description=description))
    return PublishPlan(repo_id, create_repo=not remote.exists, private=private, commits=commits)


def apply_plan(
        plan: PublishPlan,
        api: Optional[HfApi] = None,
        *,
        manifest_path: Optional[PathLike] = None,
        token: Optional[str] = None,
) -> List[Artifact]:
    """Make the plan's commits (one per artifact) and record each artifact in the manifest as it lands.

    The manifest is saved after every artifact, so an interrupted run leaves it describing exactly what
    is published; running `publish` again resumes (what landed is up to date and is not sent again).
    """
    api = api or HfApi()
    if plan.create_repo:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, token=token)
    recorded = []
    for c in plan.commits:
        if c.up_to_date:
            commit = c.parent_commit
        else:
            if c.create_branch:
                api.create_branch(plan.repo_id, branch=c.branch, revision=MAIN_BRANCH, exist_ok=True, token=token)
            info = api.create_commit(
                plan.repo_id, operations=c.operations, commit_message=c.commit_message,
                commit_description=c.commit_description, revision=c.branch, parent_commit=c.parent_commit,
                token=token)
            commit = info.oid
            _logger.info('published %s to %s@%s (%s)', c.export.name, plan.repo_id, c.branch, commit)
        artifact = c.export.to_artifact(plan.repo_id, commit)
        update_manifest([artifact], manifest_path)
        recorded.append(artifact)
    return recorded


@dataclass
class PublishResult:
    plan: PublishPlan
    artifacts: List[Artifact]  # recorded in the manifest (empty for a dry run)


def publish(
        folders: Iterable[PathLike],
        repo_id: str,
        *,
        api: Optional[HfApi] = None,
        private: bool = False,
        dry_run: bool = False,
        manifest_path: Optional[PathLike] = None,
        token: Optional[str] = None,
) -> PublishResult:
    """Publish exported folders to `repo_id` (full model on main, binaries on binary-<class>).

    Reads the remote state, plans (`plan_publish`), and unless `dry_run` applies the plan and records
    every artifact (repo, branch, commit, sha256 of each file, metrics) in the weights manifest.
    """
    api = api or HfApi()
    folders = list(folders)
    manifest_file = Path(manifest_path) if manifest_path is not None else None
    manifest = load_manifest(manifest_file) if manifest_file is None or manifest_file.exists() else Manifest()
    exports = _checked_exports(folders, repo_id, manifest)  # refuses bad folders before any request
    try:
        remote = fetch_remote_state(repo_id, api, token=token)
    except _UNREACHABLE:
        if not dry_run:
            raise
        remote = RemoteState(repo_id, exists=False, known=False)  # a dry run still shows what would be sent
    plan = _plan(exports, repo_id, remote, private)
    plan.remote_known = remote.known
    if dry_run:
        return PublishResult(plan, [])
    return PublishResult(plan, apply_plan(plan, api, manifest_path=manifest_path, token=token))
