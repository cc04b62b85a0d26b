"""`timm-coded publish`: export a checkpoint (and its binary classifiers) and publish them to the Hub.

    timm-coded publish FOLDER [FOLDER ...] --repo ORG/NAME [--private] [--dry-run]
    timm-coded publish CHECKPOINT --model NAME --tag TAG --repo ORG/NAME [--classes all|none|cat dog ...]
                       [--data-dir DIR] [--dry-run]

The core publishes folders written by `export_artifact` (or `timm-coded extract`). A checkpoint is first
exported (full model, then one calibrated binary classifier per requested class) into --export-dir.
Every artifact is one commit on its branch (main / binary-<class>); what the repo already holds is not
sent again; each artifact that lands is recorded in the weights manifest right away.
"""
from __future__ import annotations

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
    p.add_argument('--classes', nargs='+', metavar='CLASS', default=['all'],
                   help="binary classifiers to slice and publish with a checkpoint: 'all' (default), names or "
                        "indices, or 'none'")
    p.add_argument('--data-dir', type=Path, metavar='DIR',
                   help='images to calibrate the binary thresholds on (train/ split; default: the shipped '
                        'CIFAR-10 sample for CIFAR-10 models)')
    p.add_argument('--dataset', help='training dataset name, for the model cards')
    p.add_argument('--export-dir', type=Path, metavar='DIR',
                   help='where a checkpoint is exported: a new or empty folder (default: a temp folder)')
    p.add_argument('--manifest', type=Path, metavar='PATH',
                   help='weights manifest to update (default: the package\'s, or $TIMM_CODED_MANIFEST)')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--dry-run', action='store_true',
                   help='print the exact commits and file operations, send nothing, change no manifest')
    p.add_argument('--token', help='Hub token (default: the logged-in one)')
    p.set_defaults(func=run)


def _export_checkpoint(args, export_dir: Path) -> List[Path]:
    """Load the checkpoint (safetensors or weights-only torch) and export it and its binaries
    (thresholds calibrated on --data-dir's train split, as `timm-coded extract` does)."""
    from ..models.binary import load_checkpoint
    from ..models.coded_resnext import canonical_architecture
    from ..pipeline import calibration_data, check_export_dir, export_model, exports_binaries

    if not args.model or not args.tag:
        raise TimmCodedError('publishing a checkpoint needs --model NAME and --tag TAG')
    check_export_dir(export_dir)  # before any work
    model = load_checkpoint(args.model, args.sources[0]).eval()
    classes = 'none' if args.classes == ['none'] else 'all' if not args.classes or args.classes == ['all'] \
        else args.classes
    data = calibration_data(model, args.data_dir, model_name=args.model) \
        if exports_binaries(model, classes) else None  # before any work
    card = {'repo_id': args.repo, 'tag': args.tag, **({'dataset': args.dataset} if args.dataset else {})}
    # the canonical name: the binaries' cards name their parent by it (an alias would not match)
    architecture = canonical_architecture(args.model.split('.', 1)[0])
    return export_model(model, export_dir, architecture=architecture, card=card, classes=classes,
                        data=data, checkpoint=Path(args.sources[0]), progress=True)


_OFFLINE = ('offline mode is on (HF_HUB_OFFLINE), but publishing needs network access to the Hugging Face Hub; '
            '--dry-run plans offline')


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise TimmCodedError(f'--repo {repo_id!r} is not a valid Hub repo id: {" ".join(str(e).split())}') from None
    if repo_id.count('/') != 1:
        raise TimmCodedError(f'--repo {repo_id!r} is not a valid Hub repo id: expected ORG/NAME')


def _publish(args, folders: List[Path]):
    """hub.upload.publish, with offline mode, an unreachable Hub and refusals by the Hub as one-line errors."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    from ..hub.upload import publish, unreachable_errors

    try:
        return publish(folders, args.repo, private=args.private, dry_run=args.dry_run, manifest_path=args.manifest,
                       token=args.token)
    except BrokenPipeError:
        raise  # our stdout, not the network (cli.main handles it)
    except OfflineModeIsEnabled:
        raise TimmCodedError(_OFFLINE) from None
    except HFValidationError as e:
        raise TimmCodedError(f'invalid Hub argument: {" ".join(str(e).split())}') from None
    except HfHubHTTPError as e:  # 401 (token), 403 (no write access), 5xx, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TimmCodedError(f'the Hugging Face Hub refused the request for {args.repo}: {first}') from None
    except unreachable_errors() as e:
        detail = ' '.join(str(e).split()) or 'no response'
        raise TimmCodedError(f'cannot reach the Hugging Face Hub ({type(e).__name__}: {detail}): publishing needs '
                             'network access; --dry-run plans offline') from None


def run(args) -> int:
    from huggingface_hub import constants

    _check_repo_id(args.repo)
    offline = getattr(constants, 'is_offline_mode', lambda: constants.HF_HUB_OFFLINE)()
    if offline and not args.dry_run:  # say so before a checkpoint is exported
        raise TimmCodedError(_OFFLINE)
    sources = [Path(s) for s in args.sources]
    for s in sources:
        if not s.exists():
            raise FileNotFoundError(f'{s} does not exist')
    if all(s.is_dir() for s in sources):
        if args.model or args.classes != ['all'] or args.data_dir:
            raise TimmCodedError('--model/--classes/--data-dir apply to a checkpoint; folders are published as they are')
        folders = sources
        tmp: Optional[tempfile.TemporaryDirectory] = None
    elif len(sources) == 1 and sources[0].is_file():
        tmp = None if args.export_dir else tempfile.TemporaryDirectory(prefix='timm-coded-publish-')
        export_dir = args.export_dir or Path(tmp.name)
        folders = _export_checkpoint(args, export_dir)
    else:
        raise TimmCodedError('give either exported artifact folders or exactly one checkpoint file')
    try:
        result = _publish(args, folders)
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
