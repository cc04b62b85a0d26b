"""`timm-coded publish`: export a checkpoint (and its binary classifiers) and publish them to the Hub.

    timm-coded publish FOLDER [FOLDER ...] --repo ORG/NAME [--private] [--dry-run]
    timm-coded publish CHECKPOINT --model NAME --tag TAG --repo ORG/NAME [--classes cat dog ...] [--dry-run]

The core publishes folders written by `export_artifact` (or `timm-coded extract`). A checkpoint is first
exported (full model, then one folder per requested class via `timm_coded.binary`) into --export-dir.
Every artifact is one commit on its branch (main / binary-<class>); what the repo already holds is not
sent again; each artifact that lands is recorded in the weights manifest right away.
"""
from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path
from typing import List, Optional

from ..errors import TimmCodedError

_HELP = 'publish exported folders or a checkpoint to the Hugging Face Hub and record them in the manifest'


def register(subparsers) -> None:
    p = subparsers.add_parser('publish', help=_HELP, description=_HELP)
    p.add_argument('sources', nargs='+', metavar='SOURCE',
                   help='exported artifact folders, or one checkpoint file (then --model and --tag)')
    p.add_argument('--repo', required=True, metavar='ORG/NAME', help='Hub repository')
    p.add_argument('--model', metavar='NAME', help='timm model name of the checkpoint')
    p.add_argument('--tag', help='pretrained tag of the checkpoint, e.g. cifar10 (binaries get TAG_<class>)')
    p.add_argument('--classes', nargs='+', metavar='CLASS',
                   help='also slice and publish these classes\' binary classifiers (names or indices)')
    p.add_argument('--dataset', help='training dataset name, for the model cards')
    p.add_argument('--export-dir', type=Path, metavar='DIR',
                   help='where a checkpoint is exported (default: a temp folder)')
    p.add_argument('--manifest', type=Path, metavar='PATH',
                   help='weights manifest to update (default: the package\'s, or $TIMM_CODED_MANIFEST)')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--dry-run', action='store_true',
                   help='print the exact commits and file operations, send nothing, change no manifest')
    p.add_argument('--token', help='Hub token (default: the logged-in one)')
    p.set_defaults(func=run)


def _export_checkpoint(args, export_dir: Path) -> List[Path]:
    """Build the model, load the checkpoint (weights only), export it and its requested binaries."""
    import timm
    from timm.models import load_checkpoint

    from ..hub import export_artifact

    if not args.model or not args.tag:
        raise TimmCodedError('publishing a checkpoint needs --model NAME and --tag TAG')
    model = timm.create_model(args.model)
    load_checkpoint(model, str(args.sources[0]), strict=True, weights_only=True)
    model.eval()
    label_names = _label_names(model)
    card = {'repo_id': args.repo, 'tag': args.tag}
    if args.dataset:
        card['dataset'] = args.dataset
    architecture = model.pretrained_cfg.get('architecture') or args.model.split('.', 1)[0]
    folders = [export_artifact(
        model, export_dir / 'full', architecture=architecture, model_args=getattr(model, '_model_args', {}),
        label_names=label_names, card=card, overwrite=True)]
    if args.classes:
        folders += _export_binaries(model, args, export_dir, label_names)
    return folders


def _label_names(model) -> List[str]:
    names = model.pretrained_cfg.get('label_names')
    scheme = getattr(model, 'scheme', None)
    if not names and scheme is not None and getattr(scheme, 'class_names', None):
        names = scheme.class_names
    if not names or len(names) != model.num_classes:
        names = [str(i) for i in range(model.num_classes)]
    return list(names)


def _export_binaries(model, args, export_dir: Path, label_names: List[str]) -> List[Path]:
    """Slice one binary classifier per class with `timm_coded.binary` and export each folder.

    Thin on purpose: the slicing, thresholds and metrics are `timm_coded.binary`'s job; it is expected
    to provide `export_binary_classifiers(model, classes, out_dir, *, repo_id, tag, parent, dataset)`
    returning the exported folders.
    """
    try:
        binary = importlib.import_module('timm_coded.binary')
    except ModuleNotFoundError as e:
        if e.name != 'timm_coded.binary':
            raise
        raise TimmCodedError(
            'slicing binary classifiers needs timm_coded.binary, which this build does not have; export the '
            'folders with `timm-coded extract` and pass them to `timm-coded publish`') from None
    export = getattr(binary, 'export_binary_classifiers', None)
    if export is None:
        raise TimmCodedError('timm_coded.binary has no export_binary_classifiers(); pass exported folders instead')
    architecture = model.pretrained_cfg.get('architecture') or args.model.split('.', 1)[0]
    return list(export(
        model, args.classes, export_dir, repo_id=args.repo, tag=args.tag, parent=f'{architecture}.{args.tag}',
        dataset=args.dataset))


def run(args) -> int:
    from ..hub import publish

    sources = [Path(s) for s in args.sources]
    for s in sources:
        if not s.exists():
            raise FileNotFoundError(f'{s} does not exist')
    if all(s.is_dir() for s in sources):
        if args.model or args.classes:
            raise TimmCodedError('--model/--classes apply to a checkpoint; folders are published as they are')
        folders = sources
        tmp: Optional[tempfile.TemporaryDirectory] = None
    elif len(sources) == 1 and sources[0].is_file():
        tmp = None if args.export_dir else tempfile.TemporaryDirectory(prefix='timm-coded-publish-')
        export_dir = args.export_dir or Path(tmp.name)
        folders = _export_checkpoint(args, export_dir)
    else:
        raise TimmCodedError('give either exported artifact folders or exactly one checkpoint file')
    try:
        result = publish(
            folders, args.repo, private=args.private, dry_run=args.dry_run, manifest_path=args.manifest,
            token=args.token)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(result.plan.describe())
    if args.dry_run:
        print('dry run: nothing was sent and the manifest is unchanged')
    else:
        for a in result.artifacts:
            print(f'recorded {a.name}: {a.location.repo_id}@{a.location.revision} commit {a.location.commit}')
    return 0
