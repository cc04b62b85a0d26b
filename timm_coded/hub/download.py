"""Downloading artifacts listed in weights_manifest.json: files verified against the manifest's
sha256 before anything loads them; loading full models and binary classifiers by name."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from ..errors import IntegrityError, ManifestError, UnknownClassError
from .export import CONFIG_NAME, PathLike, sha256_file
from .manifest import Artifact, HubLocation, Manifest, PackageLocation, load_manifest


__all__ = ['download_artifact', 'verify_files', 'load_artifact', 'load_binary_classifier']


# ---------------------------------------------------------------------------------------------- download

def _remove_cached(path: Path) -> None:
    """Drop a file from the HF cache: the snapshot symlink and the blob it points to."""
    if path.is_symlink():
        target = path.resolve()
        path.unlink(missing_ok=True)
        if target.exists():
            target.unlink()
    elif path.exists():
        path.unlink()


def verify_files(folder: Path, artifact: Artifact, *, remove_bad: bool) -> None:
    """Check every file of `artifact` in `folder` against the manifest's size and sha256."""
    for f in artifact.files:
        p = folder / f.path
        if not p.is_file():
            raise IntegrityError(f'{artifact.name}: {f.path} is missing from {folder}')
        size = p.stat().st_size
        digest = sha256_file(p) if size == f.size else None
        if digest != f.sha256:
            got = f'sha256 {digest}' if digest else f'{size} bytes'
            want = f'sha256 {f.sha256}' if digest else f'{f.size} bytes'
            note = ''
            if remove_bad:
                _remove_cached(p)
                note = '; the file was removed from the cache'
            raise IntegrityError(
                f'{artifact.name}: {f.path} has {got}, the weights manifest says {want}: refusing it{note}')


def _resolve_artifact(artifact: Union[Artifact, str], manifest: Optional[Manifest]) -> Artifact:
    if isinstance(artifact, Artifact):
        return artifact
    return (manifest if manifest is not None else load_manifest()).get(artifact)


def download_artifact(
        artifact: Union[Artifact, str],
        *,
        manifest: Optional[Manifest] = None,
        cache_dir: Optional[PathLike] = None,
        token: Optional[str] = None,
) -> Path:
    """Fetch an artifact's files at its pinned revision and verify each against the manifest.

    Hub artifacts go through `snapshot_download` (the HF cache; works offline with HF_HUB_OFFLINE=1
    once downloaded); package artifacts are verified in place. Returns the folder holding the files.
    A file whose sha256 differs raises IntegrityError and is removed from the HF cache.
    """
    from huggingface_hub import snapshot_download

    artifact = _resolve_artifact(artifact, manifest)
    location = artifact.location
    if isinstance(location, PackageLocation):
        folder = location.resolve()
        verify_files(folder, artifact, remove_bad=False)
        return folder
    folder = Path(snapshot_download(
        location.repo_id, revision=location.pinned_revision, allow_patterns=[f.path for f in artifact.files],
        cache_dir=cache_dir, token=token))
    verify_files(folder, artifact, remove_bad=True)
    return folder


def load_artifact(
        artifact: Union[Artifact, str],
        *,
        manifest: Optional[Manifest] = None,
        cache_dir: Optional[PathLike] = None,
        **kwargs,
):
    """Download, verify, and build a model from the verified files (never from an unverified re-download)."""
    import timm

    artifact = _resolve_artifact(artifact, manifest)
    folder_load = artifact.file(CONFIG_NAME) is not None
    if folder_load and artifact.weights_file.path != 'model.safetensors':
        # timm's local-dir: reads model.safetensors (or another name) by itself, not the file verified here
        raise ManifestError(f'{artifact.name}: a folder artifact (with {CONFIG_NAME}) keeps its weights in '
                            f'model.safetensors, not {artifact.weights_file.path}')
    folder = download_artifact(artifact, cache_dir=cache_dir)
    if folder_load:
        model = timm.create_model(f'local-dir:{folder}', pretrained=True, **kwargs)
    else:
        weights = folder / artifact.weights_file.path
        model = timm.create_model(
            artifact.architecture, pretrained=True, pretrained_cfg=artifact.tag,
            pretrained_cfg_overlay={'file': str(weights)}, **kwargs)
    if isinstance(artifact.location, HubLocation):
        model.pretrained_cfg = dict(model.pretrained_cfg, hf_hub_id=artifact.location.hf_hub_id, tag=artifact.tag)
    if artifact.binary is not None:
        for key, value in artifact.binary.to_dict().items():
            if not hasattr(model, key):
                setattr(model, key, value)
    return model


def _binary_candidates(model_name: str, manifest: Manifest) -> List[Artifact]:
    binaries = manifest.find(kind='binary')
    if '.' in model_name:
        return [a for a in binaries if a.parent == model_name]
    matches = [a for a in binaries if a.parent is not None and a.parent.split('.', 1)[0] == model_name]
    parents = sorted({a.parent for a in matches})
    if len(parents) > 1:
        raise ManifestError(f'{model_name} has binary classifiers from several checkpoints {parents}; name one')
    return matches


def load_binary_classifier(
        model_name: str,
        class_name_or_index: Union[str, int],
        manifest: Optional[Manifest] = None,
        *,
        cache_dir: Optional[PathLike] = None,
        **kwargs,
):
    """The published binary classifier of one class of `model_name` ('arch' or 'arch.tag').

    Downloads and verifies it, builds it with timm, and attaches `threshold`, `class_index` and
    `class_name` (unless the model defines them itself). Unknown class -> UnknownClassError listing
    the classes that have one.
    """
    manifest = load_manifest() if manifest is None else manifest
    candidates = _binary_candidates(model_name, manifest)
    if not candidates:
        parents = sorted({a.parent for a in manifest.find(kind='binary') if a.parent})
        raise ManifestError(
            f'no binary classifiers are published for {model_name!r}; models that have some: {parents or "none"}')
    key = class_name_or_index
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    if isinstance(key, int) and not isinstance(key, bool):
        found = [a for a in candidates if a.binary.class_index == key]
    else:
        found = [a for a in candidates if a.binary.class_name == key]
    if not found:
        available = ', '.join(
            f'{a.binary.class_index} {a.binary.class_name}' for a in sorted(candidates, key=lambda a: a.binary.class_index))
        raise UnknownClassError(f'{model_name} has no binary classifier for class {class_name_or_index!r}; available: {available}')
    return load_artifact(found[0], cache_dir=cache_dir, **kwargs)
