"""ONNX export of coded models, their binary classifiers and any timm model: timm's exporter
(`timm.utils.onnx.onnx_export`, TorchScript-based, dynamic batch), written atomically and checked
by running the file in onnxruntime against the PyTorch model."""
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from ._io import umask_mode
from .errors import TimmCodedError

__all__ = ['export_onnx', 'DEFAULT_OPSET']

DEFAULT_OPSET = 17


def export_onnx(model: torch.nn.Module, path: os.PathLike, *, input_size: Optional[Tuple[int, int, int]] = None,
                opset: int = DEFAULT_OPSET, batch_size: int = 2) -> Path:
    """Write `model` (eval mode) to `path` as ONNX with a dynamic batch dimension.

    Input `input`, output `logits`; the input size defaults to the model's pretrained cfg. The
    file is written beside `path` and renamed into place only after onnxruntime ran it and its
    outputs matched PyTorch's (3 decimals, timm's check), so a failure leaves nothing behind.
    """
    from timm.utils.onnx import onnx_export

    path = Path(path)
    if path.is_dir():
        raise TimmCodedError(f'{path} is a folder; give the .onnx file to write')
    model = model.eval()
    if input_size is None:
        input_size = tuple((getattr(model, 'pretrained_cfg', None) or {}).get('input_size') or (3, 224, 224))
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.absolute().parent)
    os.close(fd)
    try:
        with torch.no_grad():
            onnx_export(model, tmp, batch_size=batch_size, input_size=input_size, opset=opset, check=True,
                        check_forward=True, use_dynamo=False, input_names=['input'], output_names=['logits'])
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
