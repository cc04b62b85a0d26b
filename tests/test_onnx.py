"""ONNX export: the file runs in onnxruntime with any batch size and gives the PyTorch outputs on real images."""
import onnxruntime
import pytest
import timm
import torch

from timm_coded.models.binary import slice_binary
from timm_coded.cli import main
from timm_coded.data import make_loader, sample_data_dir
from timm_coded.onnx_export import export_onnx
from conftest import assert_close_at_scale, randomised


@pytest.fixture(scope='module')
def images():
    loader = make_loader(sample_data_dir(), model_or_data_config='coded_resnext17_10x2d', train=False,
                         batch_size=37, split='val')
    return next(iter(loader))[0]  # 37 real CIFAR-10 images: an odd batch, not the export's


def _run(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {'input': x.numpy()})[0])


def test_full_and_binary_models_export_with_a_dynamic_batch(tmp_path, images):
    parent = randomised('coded_resnext17_10x2d')
    cat = slice_binary(parent, 'cat').eval()
    for name, model in (('full', parent), ('cat', cat)):
        path = export_onnx(model, tmp_path / f'{name}.onnx')
        with torch.no_grad():
            expected = model(images)
        got = _run(path, images)
        assert got.shape == expected.shape == (37, 10 if name == 'full' else 1)
        assert_close_at_scale(got, expected)  # float32 kernels differ by rounding only
        assert_close_at_scale(_run(path, images[:1]), expected[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cat.onnx', 'full.onnx']  # no temp files left


def test_cli_exports_a_local_folder_and_refuses_to_overwrite(tmp_path, images, capsys):
    cat = slice_binary(randomised('coded_resnext17_10x2d'), 'cat', threshold=0.5).eval()
    timm.models.save_for_hf(cat, tmp_path / 'cat', model_args=dict(cat._model_args), safe_serialization=True)
    out = tmp_path / 'cat.onnx'
    assert main(['export-onnx', f'local-dir:{tmp_path / "cat"}', '--out', str(out)]) == 0
    with torch.no_grad():
        assert_close_at_scale(_run(out, images), cat(images))
    assert 'dynamic batch' in capsys.readouterr().out
    assert main(['export-onnx', f'local-dir:{tmp_path / "cat"}', '--out', str(out)]) == 2
    assert 'already exists; pass --overwrite' in capsys.readouterr().err
    assert main(['export-onnx', 'no_such_model', '--out', str(tmp_path / 'x.onnx')]) == 2
    assert "cannot build 'no_such_model'" in capsys.readouterr().err and not (tmp_path / 'x.onnx').exists()
