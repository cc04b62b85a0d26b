"""weights_manifest.json: the single record of every published artifact (where, which revision, sha256).

The model modules read it at import to build their timm pretrained cfgs, so this module must stay
light: standard library only (no torch, no timm, no model modules).

Schema (version 1)::

    {
      "schema_version": 1,
      "artifacts": [
        {
          "architecture": "coded_resnext29_10x11d",    # a registered timm architecture
          "tag": "cifar10",                            # timm pretrained tag: name is 'architecture.tag'
          "kind": "full",                              # 'full', 'binary' or 'subset'
          "location": {"type": "hub", "repo_id": "org/name", "revision": "main", "commit": "<40 hex>"},
                  # or {"type": "package", "path": "pretrained/<folder>"}  (inside the installed package)
          "files": [{"path": "model.safetensors", "sha256": "<64 hex>", "size": 1234}, ...],
          "pretrained_cfg": {"num_classes": 10, "input_size": [3, 32, 32], ...},   # timm PretrainedCfg keys
          "model_args": {"num_classes": 10, ...},      # config.json's constructor arguments (binaries: class, subNNs)
          "binary": {"class_index": 3, "class_name": "cat", "threshold": 0.5},      # kind 'binary' only
          "subset": {"name": "vehicles", "class_indices": [0, 1, 8, 9],             # kind 'subset' only
                     "class_names": ["airplane", "automobile", "ship", "truck"], "threshold": 0.5},
          "metrics": {"top1": 94.4},
          "training": {"dataset": "cifar10", "split": "train", "epochs": 300},
          "parent": "coded_resnext29_10x11d.cifar10"   # name of the artifact this one was sliced from
        }
      ]
    }
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .._io import atomic_write_text
from ..errors import ManifestError

__all__ = [
    'MANIFEST_SCHEMA_VERSION', 'MANIFEST_ENV', 'ARTIFACT_KINDS', 'ArtifactFile', 'HubLocation',
    'PackageLocation', 'BinaryInfo', 'SubsetInfo', 'Artifact', 'Manifest', 'default_manifest_path', 'load_manifest',
    'save_manifest', 'update_manifest', 'pretrained_cfg_overrides', 'PACKAGE_DIR',
]

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILENAME = 'weights_manifest.json'
MANIFEST_ENV = 'TIMM_CODED_MANIFEST'  # points every reader and writer at another manifest file
ARTIFACT_KINDS = ('full', 'binary', 'subset')
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # timm_coded/

# keys that say where weights come from: the manifest's location decides those, never pretrained_cfg
_SOURCE_KEYS = frozenset({'url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'architecture', 'tag'})
_NAME_RE = re.compile(r'^[a-z0-9][a-z0-9_]*$')
_REPO_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')
_REVISION_RE = re.compile(r'^(?!.*\.\.)(?!/)(?!.*//)[A-Za-z0-9._/-]+(?<![./])$')
_COMMIT_RE = re.compile(r'^[0-9a-f]{40}$')
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')


def _kind_block(d: Dict[str, Any], where: str, kind: str, block_kind: str, info_cls: Any, fields: str) -> Any:
    """The `block_kind` block of an artifact entry (binary, subset): required for that kind, parsed
    by `info_cls.from_dict`; absent for every other kind."""
    block = d.get(block_kind)
    if kind == block_kind:
        if block is None:
            raise _fail(where, f"kind '{block_kind}' needs a '{block_kind}' block ({fields})")
        return info_cls.from_dict(block, f'{where}.{block_kind}')
    if block is not None:
        raise _fail(f'{where}.{block_kind}', f"only kind '{block_kind}' artifacts have a '{block_kind}' block")
    return None


# the block's field -> the model argument that builds the same thing
_BLOCK_MODEL_ARGS = {'class_index': 'class_index', 'class_name': 'class_name', 'threshold': 'threshold',
                     'name': 'subset_name', 'class_indices': 'class_indices', 'class_names': 'class_names'}


def _check_block_matches_model_args(block: Any, model_args: Dict[str, Any], where: str) -> None:
    """A binary/subset block and the model arguments say the same: the model is built from the
    arguments while loaders pick artifacts by the block (a disagreement would load one class's
    weights under another's name)."""
    if block is None:
        return
    for field_name, arg in _BLOCK_MODEL_ARGS.items():
        if not hasattr(block, field_name) or arg not in model_args:
            continue
        value, given = getattr(block, field_name), model_args[arg]
        if (list(value) if isinstance(value, tuple) else value) != given:
            raise _fail(f'{where}.model_args.{arg}', f'{given!r} disagrees with the {_block_name(block)} block ({value!r})')


def _block_name(block: Any) -> str:
    return 'binary' if isinstance(block, BinaryInfo) else 'subset'


def _fail(where: str, problem: str) -> ManifestError:
    return ManifestError(f'{where}: {problem}')


def _check_keys(obj: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    if not isinstance(obj, dict):
        raise _fail(where, f'expected an object, got {type(obj).__name__}')
    required = tuple(required)
    missing = [k for k in required if k not in obj]
    if missing:
        raise _fail(where, f'missing key(s) {missing}')
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise _fail(where, f'unknown key(s) {unknown} (allowed: {sorted(set(required) | set(optional))})')
    return obj


def _check_str(value: Any, where: str, pattern: Optional[re.Pattern] = None, what: str = '') -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f'expected a non-empty string, got {value!r}')
    if pattern is not None and not pattern.match(value):
        raise _fail(where, f'{value!r} is not {what or "valid"}')
    return value


def _check_relpath(value: Any, where: str) -> str:
    path = _check_str(value, where)
    parts = PurePosixPath(path).parts
    if '\\' in path or path.startswith('/') or not parts or any(p in ('..', '.') for p in parts):
        raise _fail(where, f'{path!r} must be a relative POSIX path without "." or ".." parts')
    return path


def _check_json_value(value: Any, where: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _fail(where, f'not JSON-serialisable: {e}') from None
    return value


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact, relative to its location (repo root or package folder)."""
    path: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, d: Any, where: str) -> 'ArtifactFile':
        _check_keys(d, where, ('path', 'sha256', 'size'))
        path = _check_relpath(d['path'], f'{where}.path')
        sha256 = _check_str(d['sha256'], f'{where}.sha256', _SHA256_RE, '64 lowercase hex digits')
        size = d['size']
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(f'{where}.size', f'expected a byte count (int >= 0), got {size!r}')
        return cls(path, sha256, size)

    def to_dict(self) -> dict:
        return {'path': self.path, 'sha256': self.sha256, 'size': self.size}


@dataclass(frozen=True)
class HubLocation:
    """A Hugging Face Hub repo at a branch; `commit` pins the exact revision that was published."""
    repo_id: str
    revision: str = 'main'
    commit: Optional[str] = None

    @property
    def pinned_revision(self) -> str:
        """The commit when known (immutable), else the branch."""
        return self.commit or self.revision

    @property
    def hf_hub_id(self) -> str:
        """timm's 'org/name@revision' form."""
        return f'{self.repo_id}@{self.pinned_revision}'

    @classmethod
    def from_dict(cls, d: Any, where: str) -> 'HubLocation':
        _check_keys(d, where, ('type', 'repo_id', 'revision'), ('commit',))
        repo_id = _check_str(d['repo_id'], f'{where}.repo_id', _REPO_ID_RE, "a Hub repo id 'org/name'")
        revision = _check_str(d['revision'], f'{where}.revision', _REVISION_RE, 'a git branch name')
        commit = d.get('commit')
        if commit is not None:
            _check_str(commit, f'{where}.commit', _COMMIT_RE, 'a 40-digit lowercase hex commit sha')
        return cls(repo_id, revision, commit)

    def to_dict(self) -> dict:
        return {'type': 'hub', 'repo_id': self.repo_id, 'revision': self.revision, 'commit': self.commit}


@dataclass(frozen=True)
class PackageLocation:
    """A folder shipped inside the installed package (small artifacts), relative to the package dir."""
    path: str

    def resolve(self) -> Path:
        return PACKAGE_DIR.joinpath(*PurePosixPath(self.path).parts)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> 'PackageLocation':
        _check_keys(d, where, ('type', 'path'))
        return cls(_check_relpath(d['path'], f'{where}.path'))

    def to_dict(self) -> dict:
        return {'type': 'package', 'path': self.path}


Location = Union[HubLocation, PackageLocation]


def _location_from_dict(d: Any, where: str) -> Location:
    if not isinstance(d, dict) or d.get('type') not in ('hub', 'package'):
        raise _fail(where, f"expected an object with type 'hub' or 'package', got {d!r}")
    return HubLocation.from_dict(d, where) if d['type'] == 'hub' else PackageLocation.from_dict(d, where)


@dataclass(frozen=True)
class BinaryInfo:
    """What a binary classifier decides: its class, and the logit threshold that maximised F1."""
    class_index: int
    class_name: str
    threshold: float

    @classmethod
    def from_dict(cls, d: Any, where: str) -> 'BinaryInfo':
        _check_keys(d, where, ('class_index', 'class_name', 'threshold'))
        index = d['class_index']
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise _fail(f'{where}.class_index', f'expected an int >= 0, got {index!r}')
        name = _check_str(d['class_name'], f'{where}.class_name')
        threshold = d['threshold']
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise _fail(f'{where}.threshold', f'expected a finite number, got {threshold!r}')
        return cls(index, name, float(threshold))

    def to_dict(self) -> dict:
        return {'class_index': self.class_index, 'class_name': self.class_name, 'threshold': self.threshold}


@dataclass(frozen=True)
class SubsetInfo:
    """What a class-subset classifier decides: which classes, and the threshold on its largest logit."""
    name: str
    class_indices: Tuple[int, ...]
    class_names: Tuple[str, ...]
    threshold: float

    @classmethod
    def from_dict(cls, d: Any, where: str) -> 'SubsetInfo':
        _check_keys(d, where, ('name', 'class_indices', 'class_names', 'threshold'))
        name = _check_str(d['name'], f'{where}.name', _NAME_RE, 'a subset name ([a-z0-9_])')
        indices, names = d['class_indices'], d['class_names']
        if (not isinstance(indices, list)
                or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in indices)
                or len(indices) < 2 or len(set(indices)) != len(indices)):
            raise _fail(f'{where}.class_indices', f'expected two or more distinct ints >= 0, got {indices!r}')
        if not isinstance(names, list) or len(names) != len(indices):
            raise _fail(f'{where}.class_names', f'expected one name per class index ({len(indices)}), got {names!r}')
        names = [_check_str(n, f'{where}.class_names[{i}]') for i, n in enumerate(names)]
        threshold = d['threshold']
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise _fail(f'{where}.threshold', f'expected a finite number, got {threshold!r}')
        return cls(name, tuple(indices), tuple(names), float(threshold))

    def to_dict(self) -> dict:
        return {'name': self.name, 'class_indices': list(self.class_indices), 'class_names': list(self.class_names),
                'threshold': self.threshold}


@dataclass(frozen=True)
class Artifact:
    """One published model: a full coded network, one class's binary classifier or a class-subset classifier."""
    architecture: str
    tag: str
    kind: str
    location: Location
    files: Tuple[ArtifactFile, ...]
    pretrained_cfg: Dict[str, Any] = field(default_factory=dict)
    model_args: Dict[str, Any] = field(default_factory=dict)
    binary: Optional[BinaryInfo] = None
    subset: Optional[SubsetInfo] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)
    parent: Optional[str] = None

    def __post_init__(self):
        # validate objects built in code exactly like those read from JSON
        Artifact.from_dict(self.to_dict(), f'artifact {self.architecture}.{self.tag}')

    @property
    def name(self) -> str:
        """timm's model name with pretrained tag, 'architecture.tag'."""
        return f'{self.architecture}.{self.tag}'

    @property
    def weights_file(self) -> ArtifactFile:
        return next(f for f in self.files if f.path.endswith('.safetensors'))

    def file(self, path: str) -> Optional[ArtifactFile]:
        return next((f for f in self.files if f.path == path), None)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> 'Artifact':
        _check_keys(
            d, where, ('architecture', 'tag', 'kind', 'location', 'files'),
            ('pretrained_cfg', 'model_args', 'binary', 'subset', 'metrics', 'training', 'parent'))
        architecture = _check_str(d['architecture'], f'{where}.architecture', _NAME_RE, 'a timm architecture name')
        tag = _check_str(d['tag'], f'{where}.tag', _NAME_RE, 'a pretrained tag ([a-z0-9_])')
        kind = d['kind']
        if kind not in ARTIFACT_KINDS:
            raise _fail(f'{where}.kind', f'expected one of {ARTIFACT_KINDS}, got {kind!r}')
        location = _location_from_dict(d['location'], f'{where}.location')

        if not isinstance(d['files'], list) or not d['files']:
            raise _fail(f'{where}.files', 'expected a non-empty list of files')
        files = tuple(ArtifactFile.from_dict(f, f'{where}.files[{i}]') for i, f in enumerate(d['files']))
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise _fail(f'{where}.files', f'duplicate paths in {paths}')
        weights = [p for p in paths if p.endswith('.safetensors')]
        if len(weights) != 1:
            raise _fail(f'{where}.files', f'expected exactly one .safetensors weights file, got {weights}')

        pretrained_cfg = d.get('pretrained_cfg') or {}
        if not isinstance(pretrained_cfg, dict):
            raise _fail(f'{where}.pretrained_cfg', 'expected an object')
        source_keys = sorted(_SOURCE_KEYS & set(pretrained_cfg))
        if source_keys:
            raise _fail(f'{where}.pretrained_cfg', f'{source_keys} are decided by "location", remove them')
        _check_json_value(pretrained_cfg, f'{where}.pretrained_cfg')

        model_args = d.get('model_args') or {}
        if not isinstance(model_args, dict):
            raise _fail(f'{where}.model_args', 'expected an object of constructor arguments')
        _check_json_value(model_args, f'{where}.model_args')

        binary = _kind_block(d, where, kind, 'binary', BinaryInfo, 'class_index, class_name, threshold')
        subset = _kind_block(d, where, kind, 'subset', SubsetInfo, 'name, class_indices, class_names, threshold')
        _check_block_matches_model_args(binary or subset, model_args, where)

        metrics = d.get('metrics') or {}
        if not isinstance(metrics, dict):
            raise _fail(f'{where}.metrics', 'expected an object of name -> number')
        for k, v in metrics.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise _fail(f'{where}.metrics.{k}', f'expected a finite number, got {v!r}')
        training = d.get('training') or {}
        if not isinstance(training, dict):
            raise _fail(f'{where}.training', 'expected an object')
        _check_json_value(training, f'{where}.training')
        parent = d.get('parent')
        if parent is not None:
            _check_str(parent, f'{where}.parent')

        self = object.__new__(cls)  # skip __post_init__: this *is* the validation
        for name, value in (
                ('architecture', architecture), ('tag', tag), ('kind', kind), ('location', location),
                ('files', files), ('pretrained_cfg', dict(pretrained_cfg)), ('model_args', dict(model_args)),
                ('binary', binary), ('subset', subset),
                ('metrics', dict(metrics)), ('training', dict(training)), ('parent', parent)):
            object.__setattr__(self, name, value)
        return self

    def to_dict(self) -> dict:
        out = {
            'architecture': self.architecture,
            'tag': self.tag,
            'kind': self.kind,
            'location': self.location.to_dict(),
            'files': [f.to_dict() for f in self.files],
            'pretrained_cfg': dict(self.pretrained_cfg),
            'model_args': dict(self.model_args),
        }
        if self.binary is not None:
            out['binary'] = self.binary.to_dict()
        if self.subset is not None:
            out['subset'] = self.subset.to_dict()
        out['metrics'] = dict(self.metrics)
        out['training'] = dict(self.training)
        out['parent'] = self.parent
        return out


@dataclass(frozen=True)
class Manifest:
    """All artifacts, in file order; names ('architecture.tag') are unique."""
    artifacts: Tuple[Artifact, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, 'artifacts', tuple(self.artifacts))
        _check_artifact_set(self.artifacts, 'weights_manifest')

    def __iter__(self):
        return iter(self.artifacts)

    def __len__(self) -> int:
        return len(self.artifacts)

    @property
    def names(self) -> List[str]:
        return [a.name for a in self.artifacts]

    def get(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise ManifestError(f'no artifact {name!r} in the weights manifest; known: {self.names or "none"}')

    def find(self, *, architecture: Optional[str] = None, kind: Optional[str] = None,
             parent: Optional[str] = None) -> List[Artifact]:
        return [
            a for a in self.artifacts
            if (architecture is None or a.architecture == architecture)
            and (kind is None or a.kind == kind)
            and (parent is None or a.parent == parent)
        ]

    def with_artifact(self, artifact: Artifact) -> 'Manifest':
        """A new manifest in which `artifact` replaces the one of the same name (or is appended)."""
        artifacts = list(self.artifacts)
        for i, a in enumerate(artifacts):
            if a.name == artifact.name:
                artifacts[i] = artifact
                break
        else:
            artifacts.append(artifact)
        return Manifest(tuple(artifacts))

    def without(self, name: str) -> 'Manifest':
        """A new manifest without the artifact `name` (which must be there)."""
        self.get(name)
        return Manifest(tuple(a for a in self.artifacts if a.name != name))

    @classmethod
    def from_dict(cls, d: Any, where: str = 'weights_manifest') -> 'Manifest':
        _check_keys(d, where, ('schema_version', 'artifacts'))
        version = d['schema_version']
        if not isinstance(version, int) or isinstance(version, bool):
            raise _fail(f'{where}.schema_version', f'expected an int, got {version!r}')
        if version > MANIFEST_SCHEMA_VERSION:
            raise _fail(f'{where}.schema_version', (
                f'version {version} is newer than this timm-coded understands ({MANIFEST_SCHEMA_VERSION}); '
                'upgrade timm-coded'))
        if version < 1:
            raise _fail(f'{where}.schema_version', f'unknown version {version}')
        if not isinstance(d['artifacts'], list):
            raise _fail(f'{where}.artifacts', 'expected a list')
        artifacts = tuple(Artifact.from_dict(a, f'{where}.artifacts[{i}]') for i, a in enumerate(d['artifacts']))
        _check_artifact_set(artifacts, where)
        self = object.__new__(cls)
        object.__setattr__(self, 'artifacts', artifacts)
        return self

    def to_dict(self) -> dict:
        return {'schema_version': MANIFEST_SCHEMA_VERSION, 'artifacts': [a.to_dict() for a in self.artifacts]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + '\n'


def _check_artifact_set(artifacts: Tuple[Artifact, ...], where: str) -> None:
    names = [a.name for a in artifacts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(f'{where}.artifacts', f'duplicate artifact names {duplicates}')
    for a in artifacts:
        if a.parent is not None and a.parent not in names:
            raise _fail(f'{where}.artifacts[{a.name}].parent', f'{a.parent!r} is not an artifact in this manifest')


def default_manifest_path() -> Path:
    """$TIMM_CODED_MANIFEST if set, else the manifest shipped inside the package.

    In a source checkout the package's file is a symlink to the repo's top-level
    weights_manifest.json, so readers and `publish` see (and update) the same file.
    """
    env = os.environ.get(MANIFEST_ENV)
    return Path(env) if env else PACKAGE_DIR / MANIFEST_FILENAME


_CACHE: Dict[Path, Tuple[Tuple[int, int], Manifest]] = {}


def load_manifest(path: Optional[Union[str, Path]] = None) -> Manifest:
    """Read and validate a manifest (default: `default_manifest_path()`); re-read only when the file changes."""
    path = Path(path) if path is not None else default_manifest_path()
    try:
        real = path.resolve(strict=True)
        stat = real.stat()
    except FileNotFoundError:
        raise ManifestError(
            f'weights manifest {path} does not exist (a broken install, or a wrong ${MANIFEST_ENV})') from None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHE.get(real)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        data = json.loads(real.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise ManifestError(f'{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}') from None
    except UnicodeDecodeError as e:
        raise ManifestError(f'{path}: not UTF-8 text: {e}') from None
    manifest = Manifest.from_dict(data, where=str(path))
    _CACHE[real] = (key, manifest)
    return manifest


def save_manifest(manifest: Manifest, path: Optional[Union[str, Path]] = None) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename); a symlink's target is replaced."""
    path = Path(path) if path is not None else default_manifest_path()
    target = path.resolve() if path.is_symlink() or path.exists() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, manifest.to_json())
    _CACHE.pop(target.resolve(), None)
    return target


def update_manifest(artifacts: Iterable[Artifact], path: Optional[Union[str, Path]] = None) -> Manifest:
    """Add or replace `artifacts` in the manifest at `path` (created if missing) and save it."""
    path = Path(path) if path is not None else default_manifest_path()
    manifest = load_manifest(path) if path.exists() else Manifest()
    for artifact in artifacts:
        manifest = manifest.with_artifact(artifact)
    save_manifest(manifest, path)
    return manifest


def _tuples(value: Any) -> Any:
    # JSON has no tuples; timm's cfgs use tuples for sizes, mean/std and label names
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def pretrained_cfg_overrides(architecture: str, manifest: Optional[Manifest] = None) -> Dict[str, Dict[str, Any]]:
    """{tag: pretrained cfg fields} for every artifact of `architecture`, for timm's `generate_default_cfgs`.

    Hub artifacts get `hf_hub_id='org/name@<commit or branch>'` (plus `hf_hub_filename` when the weights
    file is not model.safetensors); package artifacts get `file=<absolute path of the weights>`.
    The model module merges these into its own cfg (input size, mean/std ...), e.g.
    `generate_default_cfgs({f'{arch}.{tag}': _cfg(**kw) for tag, kw in pretrained_cfg_overrides(arch).items()})`.
    """
    manifest = load_manifest() if manifest is None else manifest
    out: Dict[str, Dict[str, Any]] = {}
    for artifact in manifest.find(architecture=architecture):
        cfg = {k: _tuples(v) for k, v in artifact.pretrained_cfg.items()}
        weights = artifact.weights_file.path
        if isinstance(artifact.location, HubLocation):
            cfg['hf_hub_id'] = artifact.location.hf_hub_id
            if weights != 'model.safetensors':
                cfg['hf_hub_filename'] = weights
        else:
            cfg['file'] = str(artifact.location.resolve().joinpath(*PurePosixPath(weights).parts))
        out[artifact.tag] = cfg
    return out
