"""Artifact folders: export (config.json in timm's format + our `timm_coded` block, model.safetensors,
README.md model card), reading and verifying an export, hashing, shipping exports in the package.

A card states only what is true where it is read: an export's card says it is not published and
loads with `local-dir:`; cards name local files by file name and sha256, never by path.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from huggingface_hub import CommitOperationAdd, ModelCard, ModelCardData
from huggingface_hub.lfs import UploadInfo
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from .._io import normalise_modes, umask_mode
from ..errors import CheckpointMismatchError, IntegrityError, ManifestError, TimmCodedError
from .layout import MAIN_BRANCH, artifact_branch
from .manifest import (
    Artifact, ArtifactFile, BinaryInfo, HubLocation, Location, PackageLocation, SubsetInfo,
)


__all__ = [
    'CONFIG_NAME', 'WEIGHTS_NAME', 'CARD_NAME', 'ARTIFACT_FILES', 'sha256_file', 'git_blob_sha1',
    'export_artifact', 'read_export', 'verify_export', 'ExportedArtifact', 'ship_in_package',
]


CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'  # timm probes this name first
CARD_NAME = 'README.md'
ARTIFACT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
META_KEY = 'timm_coded'  # our block inside config.json; timm ignores unknown top-level keys
META_FORMAT = 1
# files a Hub repo may hold that no artifact owns (create_repo seeds .gitattributes)
_REPO_HOUSEKEEPING = frozenset({'.gitattributes'})
_TAG_RE = re.compile(r'^[a-z0-9][a-z0-9_]*$')
_REPO_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')

PathLike = Union[str, os.PathLike]



# ---------------------------------------------------------------------------------------------- hashing

def sha256_file(path: PathLike) -> str:
    """sha256 of a file's content (hex), streamed: huggingface_hub's own hashing (what LFS records)."""
    with open(path, 'rb') as f:
        return sha_fileobj(f).hex()


def git_blob_sha1(path: PathLike) -> str:
    """The git object id of a file's content: what the Hub reports as `blob_id` for non-LFS files."""
    return git_hash(Path(path).read_bytes())



# ---------------------------------------------------------------------------------------------- export

_CARD_KEYS = {
    'repo_id': 'Hub repo the artifact is meant for (ORG/NAME); checked by publish; the card names it once published',
    'tag': 'timm pretrained tag, e.g. cifar10 or cifar10_cat',
    'kind': "'full', 'binary' or 'subset' (default: 'binary' when class_index is given, 'subset' with class_indices)",
    'class_index': 'binary: index of the class in the parent model',
    'class_name': 'binary: name of the class',
    'threshold': 'binary/subset: logit threshold (the one maximising F1 on training data)',
    'subset_name': 'subset: what the class subset is called (e.g. vehicles)',
    'class_indices': 'subset: indices of its classes in the parent model',
    'class_names': 'subset: names of its classes',
    'metrics': 'name -> number (top1, precision, recall, f1, ...)',
    'parameter_share': "binary/subset: fraction of the parent's parameters kept (0..1]",
    'parent': "binary/subset: the parent artifact name 'arch.tag', or {'artifact', 'repo_id', 'revision', 'commit'} "
              'when the parent is already published there',
    'dataset': 'training dataset name',
    'split': 'split the metrics were measured on',
    'epochs': 'training epochs',
    'training': 'other JSON-serialisable training metadata',
    'license': 'license id for the card (default apache-2.0)',
    'description': 'free text for the card',
    'tags': 'extra Hub tags',
}


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TimmCodedError(f'{what} must be a finite number, got {value!r}')
    return float(value)


def check_card_names(card: Mapping[str, Any]) -> None:
    """The card's Hub repo id and pretrained tag are well-formed (checked before any work is done)."""
    for key in ('repo_id', 'tag'):
        if not card.get(key):
            raise TimmCodedError(f"card needs '{key}': {_CARD_KEYS[key]}")
    if not _REPO_ID_RE.match(str(card['repo_id'])):
        raise TimmCodedError(f"card repo_id {card['repo_id']!r} is not a Hub repo id 'ORG/NAME'")
    if not _TAG_RE.match(str(card['tag'])):
        raise TimmCodedError(f"card tag {card['tag']!r} must match [a-z0-9][a-z0-9_]*")


def _normalise_card(card: Mapping[str, Any]) -> Dict[str, Any]:
    """Validate the user's card dict and return our `timm_coded` config block."""
    if not isinstance(card, Mapping):
        raise TimmCodedError(f'card must be a dict, got {type(card).__name__}')
    unknown = sorted(set(card) - set(_CARD_KEYS))
    if unknown:
        raise TimmCodedError(f'unknown card key(s) {unknown}; known: {sorted(_CARD_KEYS)}')
    check_card_names(card)
    kind = card.get('kind', 'binary' if 'class_index' in card else 'subset' if 'class_indices' in card else 'full')
    if kind not in ('full', 'binary', 'subset'):
        raise TimmCodedError(f"card kind must be 'full', 'binary' or 'subset', got {kind!r}")

    meta: Dict[str, Any] = {'format': META_FORMAT, 'kind': kind, 'tag': card['tag'], 'repo_id': card['repo_id']}
    if kind == 'binary':
        missing = [k for k in ('class_index', 'class_name', 'threshold', 'parent') if card.get(k) is None]
        if missing:
            raise TimmCodedError(f'a binary classifier card needs {missing}')
        index = card['class_index']
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TimmCodedError(f'class_index must be an int >= 0, got {index!r}')
        meta['binary'] = {
            'class_index': index, 'class_name': str(card['class_name']),
            'threshold': _finite(card['threshold'], 'threshold')}
    elif kind == 'subset':
        missing = [k for k in ('subset_name', 'class_indices', 'class_names', 'threshold', 'parent')
                   if card.get(k) is None]
        if missing:
            raise TimmCodedError(f'a class-subset classifier card needs {missing}')
        subset = {'name': card['subset_name'], 'class_indices': list(card['class_indices']),
                  'class_names': [str(n) for n in card['class_names']],
                  'threshold': _finite(card['threshold'], 'threshold')}
        try:
            SubsetInfo.from_dict(subset, 'card')
        except ManifestError as e:
            raise TimmCodedError(str(e)) from None
        meta['subset'] = subset
    keys_of = {'binary': ('class_index', 'class_name', 'threshold'),
               'subset': ('subset_name', 'class_indices', 'class_names', 'threshold')}
    bad = sorted({k for other, keys in keys_of.items() if other != kind for k in keys if k in card}
                 - set(keys_of.get(kind, ())))
    if bad:
        raise TimmCodedError(f'{bad} do not apply to a {kind!r} card')

    metrics = dict(card.get('metrics') or {})
    for k, v in metrics.items():
        metrics[k] = _finite(v, f'metric {k!r}')
    if card.get('parameter_share') is not None:
        share = _finite(card['parameter_share'], 'parameter_share')
        if not 0 < share <= 1:
            raise TimmCodedError(f'parameter_share is a fraction in (0, 1], got {share}')
        metrics['parameter_share'] = share
    meta['metrics'] = metrics

    training = dict(card.get('training') or {})
    for key in ('dataset', 'split', 'epochs'):
        if card.get(key) is not None:
            training[key] = card[key]
    try:
        json.dumps(training, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TimmCodedError(f'card training metadata is not JSON-serialisable: {e}') from None
    meta['training'] = training

    parent = card.get('parent')
    if parent is not None:
        if isinstance(parent, str):
            parent = {'artifact': parent}
        if not isinstance(parent, Mapping) or not parent.get('artifact'):
            raise TimmCodedError(f"card parent must name the parent artifact ('arch.tag'), got {parent!r}")
        bad = sorted(set(parent) - {'artifact', 'repo_id', 'revision', 'commit'})
        if bad:
            raise TimmCodedError(f'unknown parent key(s) {bad}')
        # where the parent is published only when the caller says so: `publish` looks it up (manifest,
        # or the same publish) rather than assuming this repo's main branch holds it
        meta['parent'] = {
            'artifact': str(parent['artifact']),
            'repo_id': parent.get('repo_id') or None,
            'revision': parent.get('revision') or (MAIN_BRANCH if parent.get('repo_id') else None),
            'commit': parent.get('commit'),
        }
    meta['license'] = card.get('license') or 'apache-2.0'
    meta['description'] = card.get('description') or ''
    meta['tags'] = [str(t) for t in (card.get('tags') or [])]
    return meta


def _check_rebuilds(model, architecture: str, model_args: Mapping[str, Any]) -> None:
    """config.json must rebuild this exact network, as a Hub load would: build it on the meta device
    from the written architecture and model_args, and compare every state_dict entry's shape."""
    import timm
    import torch

    try:
        with torch.device('meta'):
            rebuilt = timm.create_model(architecture, pretrained=False, **dict(model_args))
    except TypeError as e:
        raise CheckpointMismatchError(f'{architecture} does not accept model_args {dict(model_args)}: {e}') from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:
        missing = sorted(set(want) - set(got))[:3]
        unexpected = sorted(set(got) - set(want))[:3]
        shapes = [f'{k}: {want[k]} vs {got[k]}' for k in sorted(set(want) & set(got)) if want[k] != got[k]][:3]
        raise CheckpointMismatchError(
            f'{architecture}(**{dict(model_args)}) does not rebuild this model: missing {missing}, '
            f'unexpected {unexpected}, shape differences {shapes}')


# Absolute local paths ('/tmp/run/train', '~/data', 'C:\data') in free text: a card names only their last part.
_LOCAL_PATH_RE = re.compile(r'(?<![\w.~/:\\-])(?:~|[A-Za-z]:)?[/\\][^\s\'"`,;()|]*')


def _portable(text: str) -> str:
    """`text` with every absolute local path replaced by its last component (a card travels; paths don't)."""
    def last_part(m: 're.Match[str]') -> str:
        parts = [p for p in re.split(r'[/\\]', m.group(0)) if p and p != '~' and not p.endswith(':')]
        return parts[-1] if parts else m.group(0)
    return _LOCAL_PATH_RE.sub(last_part, text)


def _fact_value(value: Any) -> str:
    """A table cell for a metadata value: readable markdown, never a Python repr or a local path."""
    if isinstance(value, Mapping):
        if set(value) <= {'file', 'path', 'sha256'} and value.get('sha256'):
            name = Path(str(value.get('file') or value.get('path') or '')).name
            return (f'`{name}` ' if name else '') + f"(sha256 `{value['sha256']}`)"
        return '; '.join(f'{k}: {_fact_value(v)}' for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ', '.join(_fact_value(v) for v in value)
    if value is None:
        return 'none'
    return _portable(str(value)).replace('|', '\\|').replace('\n', ' ')


@dataclass(frozen=True)
class CardLocation:
    """Where a card says an artifact is: `repo_id`@`revision` (commit) on the Hub, or in the package."""
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None
    package: bool = False

    def describe(self) -> str:
        if self.package:
            return 'shipped inside the timm-coded package'
        text = f'published: `{self.repo_id}` at revision `{self.revision or MAIN_BRANCH}`'
        return text + (f', commit `{self.commit}`' if self.commit else '')


# the model card's text: a Jinja template, rendered by huggingface_hub's ModelCard.from_template
CARD_TEMPLATE = Path(__file__).with_name('model_card.md')


def _card_text(
        architecture: str,
        meta: Mapping[str, Any],
        num_params: int,
        published: Optional[CardLocation] = None,
        parent_location: Optional[CardLocation] = None,
) -> ModelCard:
    """The model card. `published`: the Hub repo and branch the card is uploaded to (None: a local export,
    and the card says it is not published). `parent_location`: where the parent is published, when known
    (the manifest, or the same publish); without it the parent is named by its artifact name only."""
    name = f"{architecture}.{meta['tag']}"
    metrics = meta['metrics']
    training = meta['training']
    dataset = training.get('dataset')
    kind = meta['kind']

    tags = ['image-classification', 'timm', 'timm-coded', 'coded-resnext']
    tags += {'binary': ['binary-classifier'], 'subset': ['class-subset-classifier']}.get(kind, [])
    tags += [t for t in meta['tags'] if t not in tags]
    eval_results = None
    if dataset and metrics:
        from huggingface_hub import EvalResult
        eval_results = [
            EvalResult(
                task_type='image-classification', dataset_type=str(dataset), dataset_name=str(dataset),
                dataset_split=training.get('split'), metric_type=k, metric_value=v)
            for k, v in metrics.items() if k != 'parameter_share']
    data = ModelCardData(
        library_name='timm', license=meta['license'], tags=tags, pipeline_tag='image-classification',
        datasets=[str(dataset)] if dataset else None, metrics=[k for k in metrics if k != 'parameter_share'] or None,
        model_name=name, eval_results=eval_results or None)

    parent_ref = ''
    if kind in ('binary', 'subset'):
        parent = meta['parent']
        if parent_location is None and parent.get('repo_id'):  # a location the exporter gave explicitly
            parent_location = CardLocation(parent['repo_id'], parent.get('revision'), parent.get('commit'))
        parent_ref = f"`{parent['artifact']}`"
        if parent_location is not None:
            parent_ref += f' ({parent_location.describe()})'
    subset = meta.get('subset')
    facts = [('parameters', f'{num_params:,}')]
    if 'parameter_share' in metrics:
        facts.append(('share of the parent\'s parameters', f"{100 * metrics['parameter_share']:.1f} %"))
    facts += [(k, f'{v:.4g}') for k, v in metrics.items() if k != 'parameter_share']
    facts += [(k.replace('_', ' '), _fact_value(v)) for k, v in training.items()]
    full_where = (f' of `{published.repo_id}`' if published is not None and published.repo_id
                  else ' of the repository that holds this model')
    return ModelCard.from_template(
        data, template_path=str(CARD_TEMPLATE), name=name, kind=kind,
        description=_portable(meta['description']) if meta['description'] else '',
        published=published, parent_ref=parent_ref, binary=meta.get('binary'), subset=subset,
        subset_classes=', '.join(f'{n} ({k})' for n, k in zip(subset['class_names'], subset['class_indices']))
        if subset else '', full_where=full_where, facts=facts,
        hub_id=f'{published.repo_id}@{published.revision}' if published is not None and published.repo_id else '')


def export_artifact(
        model,
        out_dir: PathLike,
        *,
        architecture: str,
        model_args: Mapping[str, Any],
        label_names: Sequence[str],
        card: Mapping[str, Any],
        overwrite: bool = False,
) -> Path:
    """Write a Hub-ready folder (config.json, model.safetensors, README.md) for `model`.

    Args:
        model: the network (a full coded model, or a sliced binary classifier).
        out_dir: the folder to create; written in a temp folder beside it and renamed into place.
        architecture: the registered timm architecture that rebuilds it from `model_args` alone.
        model_args: JSON-serialisable constructor arguments (class index, active subNNs ... for binaries).
        label_names: one name per model output.
        card: metadata, see `_CARD_KEYS` (repo_id and tag always; class/threshold/parent for binaries).
        overwrite: replace an existing `out_dir`.
    Returns:
        `out_dir`.
    """
    import timm
    from timm.models import get_pretrained_cfg, save_for_hf

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f'{out_dir} already exists (pass overwrite=True to replace it)')
    meta = _normalise_card(card)
    model_args = dict(model_args)
    try:
        json.dumps(model_args, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TimmCodedError(f'model_args must be JSON-serialisable: {e}') from None
    label_names = [str(n) for n in label_names]
    num_classes = getattr(model, 'num_classes', None)
    if len(label_names) != num_classes:
        raise TimmCodedError(f'{len(label_names)} label names for a model with {num_classes} outputs')
    if meta['kind'] == 'subset' and label_names != meta['subset']['class_names']:
        raise TimmCodedError(f"a class-subset classifier's outputs are its classes {meta['subset']['class_names']}, "
                             f'got label_names {label_names}')
    if meta['kind'] == 'binary' and label_names != [meta['binary']['class_name']]:
        raise TimmCodedError(
            f"a binary classifier has one output named after its class {meta['binary']['class_name']!r}, "
            f'got label_names {label_names}')
    if not timm.is_model(architecture):
        raise TimmCodedError(f'architecture {architecture!r} is not registered with timm; import its module first')
    if getattr(model, 'pretrained_cfg', None) is None:
        # a model assembled outside timm.create_model: take its architecture's default cfg
        model.pretrained_cfg = get_pretrained_cfg(architecture).to_dict()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', suffix='.tmp', dir=out_dir.parent))
    try:
        model_config = {
            'pretrained_cfg': {'architecture': architecture, 'tag': meta['tag'], 'license': meta['license']},
            'label_names': label_names,
            META_KEY: meta,
        }
        if meta['description']:
            model_config['pretrained_cfg']['description'] = meta['description']
        try:
            save_for_hf(model, tmp, model_config=model_config, model_args=model_args, safe_serialization=True)
        except ValueError as e:  # timm: an export argument that disagrees with the model
            raise CheckpointMismatchError(f'{architecture}: {e}') from None
        # timm adds the args the factory recorded (and in_chans/num_classes/global_pool): check those
        written = json.loads((tmp / CONFIG_NAME).read_text(encoding='utf-8'))
        _check_rebuilds(model, written['architecture'], written.get('model_args', {}))
        num_params = sum(p.numel() for p in model.parameters())
        _card_text(architecture, meta, num_params).save(tmp / CARD_NAME)
        names = sorted(p.name for p in tmp.iterdir())
        if names != sorted(ARTIFACT_FILES):
            raise RuntimeError(f'export wrote {names}, expected {sorted(ARTIFACT_FILES)}')
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700; give what a plain mkdir would have
        normalise_modes(tmp)  # safetensors writes 0600 files
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', suffix='.old', dir=out_dir.parent))
            os.replace(out_dir, trash / 'old')
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(trash / 'old', out_dir)  # the previous export back where it was
                trash.rmdir()
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass(frozen=True)
class LocalFile:
    """A file of an artifact as it would be uploaded. `operation` is the one `CommitOperationAdd` that sends it,
    built on first use; `size` and `sha256` are its `upload_info` (huggingface_hub hashes the file on first use,
    in one read), so the plan, the commit and the manifest record carry the same hash, taken once."""
    path: str
    local_path: Optional[Path]  # None: the content is `data` (a model card rendered for the Hub)
    data: Optional[bytes] = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, folder: Path, name: str) -> 'LocalFile':
        return cls(name, folder / name)

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> 'LocalFile':
        return cls(name, None, data)

    @cached_property
    def operation(self) -> CommitOperationAdd:
        source = self.data if self.data is not None else str(self.local_path)
        return CommitOperationAdd(path_in_repo=self.path, path_or_fileobj=source)

    @property
    def size(self) -> int:
        return self.operation.upload_info.size

    @property
    def sha256(self) -> str:
        return self.operation.upload_info.sha256.hex()

    @cached_property
    def blob_id(self) -> str:
        """git sha1 of the content, to compare with a plain (non-LFS) file on the Hub; computed only then. A file
        not hashed yet gets its sha256 from the same read."""
        data = self.read_bytes()
        info = self.operation.upload_info
        if not getattr(info, 'is_hashed', True):  # (older huggingface_hub hashes when the operation is built)
            info.sha256 = UploadInfo.from_bytes(data).sha256
        return git_hash(data)

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else self.local_path.read_bytes()

    def record(self) -> ArtifactFile:
        return ArtifactFile(self.path, self.sha256, self.size)


@dataclass(frozen=True)
class ExportedArtifact:
    """An exported folder, read back: its config, our metadata block, and its files with hashes."""
    folder: Path
    config: Dict[str, Any]
    meta: Dict[str, Any]
    files: Tuple[LocalFile, ...]

    @property
    def architecture(self) -> str:
        return self.config['architecture']

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.meta['tag']}"

    @property
    def kind(self) -> str:
        return self.meta['kind']

    @property
    def branch(self) -> str:
        # decided when publishing, by the one layout function (an export holds no Hub location)
        name = self.meta.get('subset', {}).get('name') if self.kind == 'subset' else \
            self.meta.get('binary', {}).get('class_name')
        return artifact_branch(self.kind, name)

    def to_artifact(self, repo_id: str, commit: Optional[str]) -> Artifact:
        """The manifest record of this artifact once published to `repo_id` at `commit`."""
        return self.to_artifact_at(HubLocation(repo_id, self.branch, commit))

    def to_artifact_at(self, location: Location) -> Artifact:
        """The manifest record of this artifact stored at `location` (Hub or package)."""
        pretrained_cfg = {
            k: v for k, v in self.config.get('pretrained_cfg', {}).items()
            if k not in ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'architecture', 'tag')}
        pretrained_cfg['num_classes'] = self.config['num_classes']
        if self.config.get('label_names'):
            pretrained_cfg['label_names'] = list(self.config['label_names'])
        binary = BinaryInfo(**self.meta['binary']) if self.kind == 'binary' else None
        subset = SubsetInfo.from_dict(self.meta['subset'], 'export') if self.kind == 'subset' else None
        parent = self.meta.get('parent', {}).get('artifact') if self.meta.get('parent') else None
        return Artifact(
            architecture=self.architecture, tag=self.meta['tag'], kind=self.kind,
            location=location,
            files=tuple(f.record() for f in self.files), pretrained_cfg=pretrained_cfg,
            model_args=dict(self.config.get('model_args', {})), binary=binary, subset=subset,
            metrics=dict(self.meta.get('metrics', {})), training=dict(self.meta.get('training', {})), parent=parent)


def _check_export_config(config: Dict[str, Any], meta: Dict[str, Any], where: Path) -> None:
    """What an exported folder's readers use: the architecture, and the block's names and kind."""
    if not isinstance(config.get('architecture'), str):
        raise TimmCodedError(f'{where} names no architecture')
    missing = [k for k in ('repo_id', 'tag', 'kind') if not isinstance(meta.get(k), str)]
    if missing:
        raise TimmCodedError(f'{where}: its timm_coded block lacks {", ".join(missing)}')
    if meta['kind'] not in ('full', 'binary', 'subset'):
        raise TimmCodedError(f"{where}: kind {meta['kind']!r} is not 'full', 'binary' or 'subset'")
    if meta['kind'] != 'full' and not isinstance(meta.get(meta['kind']), dict):
        raise TimmCodedError(f"{where}: a {meta['kind']} artifact needs its '{meta['kind']}' block")


def read_export(folder: PathLike) -> ExportedArtifact:
    """Read and check a folder written by `export_artifact`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder} is not an exported artifact folder')
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))
    if names != sorted(ARTIFACT_FILES):
        raise TimmCodedError(f'{folder} holds {names}; an exported artifact holds exactly {sorted(ARTIFACT_FILES)}')
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise TimmCodedError(f'{folder / CONFIG_NAME}: not valid JSON: {e}') from None
    meta = config.get(META_KEY) if isinstance(config, dict) else None
    if not isinstance(meta, dict) or meta.get('format') != META_FORMAT:
        raise TimmCodedError(f'{folder / CONFIG_NAME} has no timm_coded block; was it written by export_artifact?')
    _check_export_config(config, meta, folder / CONFIG_NAME)
    files = tuple(LocalFile.of(folder, n) for n in ARTIFACT_FILES)
    return ExportedArtifact(folder, config, meta, files)


def verify_export(export: Union[ExportedArtifact, PathLike]):
    """Check that an exported folder holds a working model before it is published or shipped.

    model.safetensors must parse (safetensors header and data), config.json must rebuild a timm model
    (as `timm.create_model('local-dir:FOLDER')` or `hf-hub:` will), and the weights must load into it
    strictly, as floating-point, finite values. Raises IntegrityError (unreadable file) or
    CheckpointMismatchError (weights that do not belong to that model), one line naming the file.
    Returns the rebuilt model with the weights loaded.
    """
    import timm
    from safetensors import SafetensorError, safe_open

    from ..models.binary import check_state_dict, check_weight_values

    if not isinstance(export, ExportedArtifact):
        export = read_export(export)
    weights = export.folder / WEIGHTS_NAME
    if weights.stat().st_size == 0:
        raise IntegrityError(f'{weights} is empty (0 bytes): refusing it')
    try:
        with safe_open(str(weights), framework='pt', device='cpu') as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise IntegrityError(f'{weights} is not a valid safetensors file ({_one_line(e)}): refusing it') from None
    if not state:
        raise IntegrityError(f'{weights} holds no tensors: refusing it')

    architecture = export.config.get('architecture')
    config = export.folder / CONFIG_NAME
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise CheckpointMismatchError(
            f'{config} names architecture {architecture!r}, which is not registered with timm '
            '(import the module that registers it)')
    try:  # exactly what a load of this folder builds (config.json's architecture, model_args, num_classes)
        model = timm.create_model(f'local-dir:{export.folder}', pretrained=False)
    except (TimmCodedError, TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointMismatchError(f'{config}: timm cannot build {architecture} from it: {_one_line(e)}') from None
    check_state_dict(model, state, str(weights), model_name=f'{architecture} (named by config.json)')
    check_weight_values(model, state, str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(f'{weights} does not load into {architecture}: {_one_line(e)}') from None
    return model.eval()


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split()) or type(error).__name__


def ship_in_package(
        folders: Sequence[PathLike],
        subdir: str = 'weights',
        manifest_path: Optional[PathLike] = None,
) -> List[Artifact]:
    """Copy exported folders into the package (`timm_coded/<subdir>/<architecture>.<tag>/`) and
    list them in the manifest as package artifacts: for small weights that travel with the code
    until a Hub publication exists.

    All or nothing: every folder is verified, then copied into a staging folder beside its target;
    only then are the targets swapped in (the previous folders kept aside) and the manifest saved.
    A failure at any step puts the previous folders back and leaves the manifest as it was.
    Shipping a full model again replaces its sliced classifiers: the package's classifiers of the
    previous weights that the new set lacks are removed with their manifest entries (they were
    sliced from weights that are gone); one published on the Hub is refused instead.
    """
    from .manifest import PACKAGE_DIR, Manifest, default_manifest_path, load_manifest, save_manifest

    exports = [read_export(f) for f in folders]
    for export in exports:
        verify_export(export)
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path()
    manifest = load_manifest(path) if path.exists() else Manifest()
    names = {export.name for export in exports}
    replaced = {export.name for export in exports if export.kind == 'full'}
    stale = [a for a in manifest if a.parent in replaced and a.name not in names]
    published = [a.name for a in stale if not isinstance(a.location, PackageLocation)]
    if published:
        raise TimmCodedError(f'shipping {", ".join(sorted(replaced))} again would orphan {", ".join(published)} '
                             '(published from the previous weights): ship a new classifier for each, or drop '
                             'them from the manifest first')
    root = PACKAGE_DIR / subdir
    root.mkdir(parents=True, exist_ok=True)
    staging: Dict[str, Path] = {}        # artifact name -> our staging folder (new copy, then the old one)
    swapped: List[Tuple[Path, Path]] = []  # (package folder, where its previous content waits)
    try:
        for name in [e.name for e in exports] + [a.name for a in stale]:
            staging[name] = Path(tempfile.mkdtemp(prefix=f'.{name}.', suffix='.tmp', dir=root))
        artifacts = []
        for export in exports:
            shutil.copytree(export.folder, staging[export.name] / 'new')
            artifacts.append(read_export(staging[export.name] / 'new').to_artifact_at(
                PackageLocation(f'{subdir}/{export.name}')))
        targets = [(e.name, root / e.name) for e in exports] + [(a.name, a.location.resolve()) for a in stale]
        for name, target in targets:
            if target.exists():
                os.replace(target, staging[name] / 'old')
                swapped.append((target, staging[name] / 'old'))
            else:
                swapped.append((target, None))
            if name in names:
                os.replace(staging[name] / 'new', target)
        for artifact in stale:
            manifest = manifest.without(artifact.name)
        for artifact in artifacts:
            manifest = manifest.with_artifact(artifact)
        save_manifest(manifest, path)
    except BaseException:
        for target, previous in reversed(swapped):  # put every package folder back as it was
            if target.exists():
                shutil.rmtree(target)  # the copy this call moved in
            if previous is not None:
                os.replace(previous, target)
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    for folder in staging.values():  # the previous folders, now replaced
        shutil.rmtree(folder)
    return artifacts


