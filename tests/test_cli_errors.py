"""Bad input to `timm-coded` gets ONE line on stderr (`timm-coded <command>: error: ...`, exit code 2),
never a traceback: argument values, devices, unreadable checkpoints and images, scheme files,
--out paths, Hub repo ids and offline mode, a closed stdout pipe, and SIGTERM (handled like Ctrl-C)."""
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_coded.cli import build_parser, main
from timm_coded.errors import DataError, IntegrityError, TimmCodedError

REPO = Path(__file__).resolve().parents[1]
SMALL = 'coded_resnext17_10x2d'
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
           TIMM_CODED_AUTOLOAD='0')


def one_line_error(capsys, code, command, *fragments):
    """The command failed with exit code 2 and exactly one line on stderr naming the problem."""
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert 'Traceback' not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f'timm-coded {command}: error: '), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def usage_error(capsys, argv, message):
    """argparse refuses the value: usage, then `timm-coded <command>: error: <message>`, exit code 2.
    (Only the parser runs, so a value that is wrongly accepted fails the test at once.)"""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1] == f'timm-coded {argv[0]}: error: {message}'


# --- 1. argument values ---------------------------------------------------------------------------------
MODEL_ARGS = {'extract': ['ckpt.pth', '--model', SMALL, '--out', 'o'],
              'evaluate': ['ckpt.pth', '--model', SMALL, '--data-dir', 'd'],
              'demo': []}


@pytest.mark.parametrize('command', ['extract', 'evaluate', 'demo'])
def test_negative_workers_is_a_usage_error(capsys, command):
    usage_error(capsys, [command, *MODEL_ARGS[command], '--workers', '-1'],
                'argument --workers: must be an integer >= 0, got -1')


@pytest.mark.parametrize('command', ['extract', 'evaluate'])
def test_zero_batch_size_is_a_usage_error(capsys, command):
    usage_error(capsys, [command, *MODEL_ARGS[command], '--batch-size', '0'],
                'argument --batch-size: must be an integer >= 1, got 0')


@pytest.mark.parametrize('option, value, message', [
    ('--epochs', '0', 'must be an integer >= 1, got 0'),
    ('--batch-size', '0', 'must be an integer >= 2, got 0'),
    ('--batch-size', 'two', "must be an integer >= 2, got 'two'"),
    ('--lr', 'nan', 'must be a finite number > 0, got nan'),
    ('--lr', '-1', 'must be a finite number > 0, got -1'),
    ('--lr', 'inf', 'must be a finite number > 0, got inf'),
    ('--lr', '0', 'must be a finite number > 0, got 0'),
])
def test_demo_rejects_bad_numbers_when_parsing(capsys, option, value, message):
    usage_error(capsys, ['demo', option, value], f'argument {option}: {message}')


def test_good_numbers_still_parse():
    args = build_parser().parse_args(['demo', '--workers', '0', '--epochs', '1', '--batch-size', '2', '--lr', '1e-3'])
    assert (args.workers, args.epochs, args.batch_size, args.lr) == (0, 1, 2, 1e-3)


# --- 2. --device ----------------------------------------------------------------------------------------
@pytest.fixture
def no_cuda(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)


def _device_argv(command, tmp_path, device):
    checkpoint = tmp_path / 'ckpt.pth'
    checkpoint.write_bytes(b'')  # would be refused too, but the device is checked first
    return {'extract': ['extract', checkpoint, '--model', SMALL, '--out', tmp_path / 'out'],
            'evaluate': ['evaluate', checkpoint, '--model', SMALL, '--data-dir', tmp_path, '--out', tmp_path / 'out'],
            'demo': ['demo', '--out', tmp_path / 'out', '--epochs', '1', '--limit-per-class', '2',
                     '--no-progress']}[command] + ['--device', device]


@pytest.mark.parametrize('command', ['extract', 'evaluate', 'demo'])
def test_unknown_device_is_one_line(capsys, tmp_path, no_cuda, command):
    code = main([str(a) for a in _device_argv(command, tmp_path, 'nonsense')])
    one_line_error(capsys, code, command, "--device 'nonsense' is not a torch device; available here: cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pth']  # nothing written, no staging folder


@pytest.mark.parametrize('command', ['extract', 'evaluate', 'demo'])
def test_cuda_without_cuda_is_one_line(capsys, tmp_path, no_cuda, command):
    code = main([str(a) for a in _device_argv(command, tmp_path, 'cuda')])
    one_line_error(capsys, code, command, '--device cuda: CUDA is not available on this machine', 'available here: cpu')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pth']


def test_resolve_device():
    import torch
    from timm_coded.cli.common import resolve_device

    assert resolve_device('cpu') == 'cpu'
    assert resolve_device(None) == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(TimmCodedError, match=r"^--device 'cuda:x' is not a torch device; available here: cpu"):
        resolve_device('cuda:x')


# --- 3. unreadable checkpoints --------------------------------------------------------------------------
@pytest.mark.parametrize('content, problem', [
    (b'', 'empty file'),
    (b'hello, I am a text file\n', 'not a safetensors or torch checkpoint'),
])
@pytest.mark.parametrize('command', ['extract', 'evaluate'])
def test_unreadable_checkpoint_is_one_line(capsys, tmp_path, command, content, problem):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(content)
    argv = [command, str(checkpoint), '--model', SMALL, '--device', 'cpu']
    argv += ['--out', str(tmp_path / 'out')] if command == 'extract' else ['--data-dir', str(tmp_path)]
    line = one_line_error(capsys, main(argv), command, f'cannot read checkpoint {checkpoint}: {problem}')
    assert 'EOFError' not in line and 'KeyError' not in line


def _torch_file(path, obj):
    import torch
    torch.save(obj, path)
    return path.read_bytes()


@pytest.mark.parametrize('make, problem', [
    (lambda p: b'', 'empty file'),
    (lambda p: b'{"state_dict": 1}', 'not a safetensors or torch checkpoint'),
    (lambda p: bytes(range(256)) * 4, 'not a safetensors or torch checkpoint'),
    (lambda p: _torch_file(p, {'w': __import__('torch').zeros(3)})[:200], 'truncated or corrupt torch checkpoint'),
])
def test_read_state_dict_says_what_is_wrong(tmp_path, make, problem):
    from timm_coded.models.binary import read_state_dict

    path = tmp_path / 'x.pth'
    path.write_bytes(make(path))
    with pytest.raises(IntegrityError, match=f'^cannot read checkpoint {re.escape(str(path))}: {problem}') as info:
        read_state_dict(path)
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('content, problem', [
    (b'', 'empty file$'),
    (b'\x08\x00\x00\x00\x00\x00\x00\x00{bad}', r'corrupt or truncated safetensors file \(.*header'),
])
def test_read_state_dict_bad_safetensors(tmp_path, content, problem):
    from timm_coded.models.binary import read_state_dict

    path = tmp_path / 'x.safetensors'
    path.write_bytes(content)
    with pytest.raises(IntegrityError, match=f'^cannot read checkpoint {re.escape(str(path))}: {problem}'):
        read_state_dict(path)


# --- 4. decompression bombs -----------------------------------------------------------------------------
@pytest.mark.parametrize('side', [40, 64])  # 1600 pixels: PIL warns (1x..2x the limit); 4096: PIL raises
def test_decompression_bomb_image_is_a_data_error(tmp_path, monkeypatch, side):
    from timm_coded.data import ImageFolderDataset, ImageSamples

    image = tmp_path / 'cat' / 'huge.png'
    image.parent.mkdir()
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(image)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    dataset = ImageFolderDataset(ImageSamples(tmp_path, ('cat',), ((str(image), 0),)))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # what a caller does with warnings must not matter
        with pytest.raises(DataError, match=f'^cannot read image {re.escape(str(image))}: '
                                            rf'Image size \({side * side} pixels\) exceeds limit'):
            dataset[0]
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 10_000)
    assert dataset[0][0].size == (side, side)


# --- 5. schemes show ------------------------------------------------------------------------------------
@pytest.mark.parametrize('content', [b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe', bytes(range(256))])
def test_show_binary_file_is_one_line(capsys, tmp_path, content):
    path = tmp_path / 'picture.png'
    path.write_bytes(content)
    one_line_error(capsys, main(['schemes', 'show', str(path)]), 'schemes',
                   f'{path} is not a coding scheme JSON file')


@pytest.mark.parametrize('reader', ['head -1', 'head -c 0', 'true'])
def test_closed_stdout_pipe_is_not_an_error(tmp_path, reader):
    done = subprocess.run(f'"{sys.executable}" -m timm_coded.cli schemes show k1000_n32_a16 | {reader}',
                          shell=True, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert 'Traceback' not in done.stderr and 'BrokenPipeError' not in done.stderr, done.stderr
    assert done.stderr == ''
    if reader == 'head -1':
        assert done.stdout.startswith('k1000_n32_a16: K=1000 N=32 N_act=16 H_min=12')


def test_closed_stdout_pipe_exit_code(tmp_path):
    """The command's own exit code is kept (0: nothing went wrong but the reader leaving)."""
    script = f'"{sys.executable}" -m timm_coded.cli schemes show k1000_n32_a16 | true; echo "${{PIPESTATUS[0]}}"'
    done = subprocess.run(['bash', '-c', script], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          timeout=120)
    assert done.stdout.strip() == '0' and done.stderr == '', done.stderr


# --- 6. schemes generate --out --------------------------------------------------------------------------
GENERATE = ['schemes', 'generate', '--classes', '10', '--subnns', '10', '--active', '3']


def test_generate_out_existing_folder_is_refused(capsys, tmp_path):
    folder = tmp_path / 'schemes'
    folder.mkdir()
    one_line_error(capsys, main(GENERATE + ['--out', str(folder)]), 'schemes',
                   f'--out {folder} is a folder; give the path of the JSON file to write')
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ['schemes']


def test_generate_out_existing_file_needs_overwrite(capsys, tmp_path):
    out = tmp_path / 'mine.json'
    out.write_text('precious')
    one_line_error(capsys, main(GENERATE + ['--out', str(out)]), 'schemes',
                   f'--out {out} already exists; pass --overwrite to replace it')
    assert out.read_text() == 'precious'
    assert main(GENERATE + ['--out', str(out), '--overwrite']) == 0
    assert f'wrote {out}' in capsys.readouterr().out
    from timm_coded.codes import load_scheme
    assert load_scheme(out).num_classes == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.json']


def test_save_leaves_no_tmp_file_when_it_fails(tmp_path):
    from timm_coded.codes import builtin_scheme

    folder = tmp_path / 'taken'
    folder.mkdir()
    with pytest.raises(OSError):
        builtin_scheme('k10_n10_a5').save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['taken']


# --- 7. publish -----------------------------------------------------------------------------------------
@pytest.mark.parametrize('repo, problem', [
    ('not a/valid//id', "--repo 'not a/valid//id' is not a valid Hub repo id"),
    ('org/bad..name', "--repo 'org/bad..name' is not a valid Hub repo id"),
    ('justaname', "--repo 'justaname' is not a valid Hub repo id: expected ORG/NAME"),
])
def test_publish_invalid_repo_id_is_one_line(capsys, tmp_path, repo, problem):
    one_line_error(capsys, main(['publish', str(tmp_path), '--repo', repo, '--dry-run']), 'publish', problem)


OFFLINE_MESSAGE = ('offline mode is on (HF_HUB_OFFLINE), but publishing needs network access to the Hugging Face '
                   'Hub; --dry-run plans offline')


def test_publish_offline_is_one_line(capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    one_line_error(capsys, main(['publish', str(tmp_path), '--repo', 'org/name']), 'publish', OFFLINE_MESSAGE)


def test_publish_offline_real_process(tmp_path):
    done = subprocess.run([sys.executable, '-m', 'timm_coded.cli', 'publish', str(tmp_path), '--repo', 'org/name'],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(ENV, HF_HUB_OFFLINE='1'))
    assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f'timm-coded publish: error: {OFFLINE_MESSAGE}'


def _raise(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def test_publish_network_errors_are_one_line(capsys, tmp_path, monkeypatch):
    import huggingface_hub.errors as hf_errors
    import timm_coded.hub.upload

    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    monkeypatch.setattr(timm_coded.hub.upload, 'publish', _raise(httpx.ConnectError('[Errno -2] Name or service not known')))
    one_line_error(capsys, main(['publish', str(tmp_path), '--repo', 'org/name']), 'publish',
                   'cannot reach the Hugging Face Hub (ConnectError: [Errno -2] Name or service not known)',
                   'publishing needs network access; --dry-run plans offline')
    monkeypatch.setattr(timm_coded.hub.upload, 'publish', _raise(hf_errors.OfflineModeIsEnabled('offline mode is enabled')))
    one_line_error(capsys, main(['publish', str(tmp_path), '--repo', 'org/name']), 'publish', OFFLINE_MESSAGE)


# --- 8. SIGTERM -----------------------------------------------------------------------------------------
def _catches_sigterm(pid: int) -> bool:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('SigCgt:'):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/PID/status')
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    out = tmp_path / 'big.json'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'timm_coded.cli', 'schemes', 'generate', '--classes', '2000', '--subnns', '48',
         '--active', '24', '--time-budget', '60', '--out', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    try:
        # wait until the command runs with its SIGTERM handler (at most 30 s: without one, signal anyway)
        for _ in range(300):
            if proc.poll() is not None or _catches_sigterm(proc.pid):
                break
            time.sleep(0.1)
        assert proc.poll() is None, 'the search ended before it could be interrupted'
        time.sleep(0.5)  # well inside the search (several seconds)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == 'interrupted' and 'Traceback' not in stderr
    assert list(tmp_path.iterdir()) == []  # no scheme, no hidden .tmp leftovers


def test_publish_refuses_an_export_dir_that_holds_files_before_any_work(capsys, tmp_path):
    checkpoint = tmp_path / 'model.safetensors'
    checkpoint.write_bytes(b'never read: the refusal comes first')
    export_dir = tmp_path / 'mine'
    export_dir.mkdir()
    (export_dir / 'full').mkdir()
    (export_dir / 'full' / 'notes.txt').write_text('precious')
    one_line_error(capsys, main(['publish', str(checkpoint), '--model', 'coded_resnext17_10x2d', '--tag', 't',
                                 '--repo', 'org/name', '--export-dir', str(export_dir), '--dry-run']),
                   'publish', f'{export_dir} already exists and is not an empty folder')
    assert (export_dir / 'full' / 'notes.txt').read_text() == 'precious'


def test_demo_with_an_unknown_model_is_one_line(capsys, tmp_path):
    one_line_error(capsys, main(['demo', '--model', 'no_such_model', '--epochs', '1', '--out', str(tmp_path / 'd')]),
                   'demo', "unknown model 'no_such_model'; coded models: coded_resnext")
    assert not (tmp_path / 'd').exists()


@pytest.mark.parametrize('value, message', [
    ('8', 'the exporter writes opsets 9-20, not 8'), ('21', 'the exporter writes opsets 9-20, not 21'),
    ('x', "expected an integer, got 'x'")])
def test_export_onnx_opset_out_of_range_is_a_usage_error(capsys, value, message):
    usage_error(capsys, ['export-onnx', 'm', '--out', 'x.onnx', '--opset', value], f'argument --opset: {message}')


def test_export_onnx_without_onnxruntime_says_what_to_install_before_any_work(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'onnxruntime' else real(name, *a))
    one_line_error(capsys, main(['export-onnx', 'no_such_model', '--out', str(tmp_path / 'x.onnx')]), 'export-onnx',
                   'export-onnx needs onnxruntime: pip install onnxruntime')

