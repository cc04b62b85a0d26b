"""`timm-coded export-onnx MODEL --out FILE`: a coded model, a binary classifier or any timm model
as ONNX (dynamic batch), checked in onnxruntime before it is written."""
import argparse
import importlib.util
from pathlib import Path

from ..errors import TimmCodedError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        'export-onnx', help='export a model (full, binary classifier, local folder) to ONNX, checked in onnxruntime',
        description='Export to ONNX with a dynamic batch dimension (input "input", output "logits"). MODEL is a '
                    'timm name with pretrained weights (coded_resnext17_10x8d, '
                    'coded_resnext17_10x8d_binary.cifar10_cat), local-dir:FOLDER (an extracted classifier) or '
                    'hf-hub:ORG/NAME[@REVISION].')
    p.add_argument('model', metavar='MODEL')
    p.add_argument('--out', type=Path, required=True, help='the .onnx file to write')
    p.add_argument('--opset', type=opset_version, default=17, help=f'ONNX opset, {MIN_OPSET}-{MAX_OPSET}')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out file')
    p.set_defaults(func=run)


# what torch's TorchScript-based exporter writes
MIN_OPSET, MAX_OPSET = 9, 20


def opset_version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f'the exporter writes opsets {MIN_OPSET}-{MAX_OPSET}, not {value}')
    return value


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise TimmCodedError(f'--out {args.out} already exists; pass --overwrite to replace it')
    missing = [name for name in ('onnx', 'onnxruntime') if importlib.util.find_spec(name) is None]
    if missing:  # before a model is built or downloaded
        raise TimmCodedError(f'export-onnx needs {" and ".join(missing)}: pip install {" ".join(missing)}')
    import timm
    from huggingface_hub.errors import HfHubHTTPError

    from ..onnx_export import export_onnx

    try:
        model = timm.create_model(args.model, pretrained=True)
    except (RuntimeError, HfHubHTTPError, FileNotFoundError) as e:  # timm: unknown model, no weights, no repo
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TimmCodedError(f'cannot build {args.model!r} with weights: {detail}') from None
    export_onnx(model, args.out, opset=args.opset)
    print(f'wrote {args.out} ({args.out.stat().st_size:,} bytes): {args.model}, opset {args.opset}, dynamic batch; '
          'onnxruntime output checked against PyTorch')
    return 0
