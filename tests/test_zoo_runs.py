"""The zoo's training runs (benchmarks/cifar10_zoo.py) and their shipping (scripts/ship_weights.py):
a warm restart continues a run without touching it, and every refusal is one line before anything
is written. Real images (the package's CIFAR-10 sample), a tiny model, one epoch per stage."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from timm_coded.hub.export import sha256_file
from timm_coded.training.runs import read_run, stage_epochs
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / 'timm_coded' / 'data' / 'cifar10_sample' / 'train'
PER_CLASS = 20  # of the sample's real images: the first 10 of each class are trained on, the last 10 held out


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar10')
    for folder in sorted(SAMPLE.iterdir()):
        (root / folder.name).mkdir()
        for source in sorted(folder.iterdir())[:PER_CLASS]:
            shutil.copyfile(source, root / folder.name / source.name)
    return root


def zoo(images: Path, *argv: str) -> None:
    """benchmarks/cifar10_zoo.py in this process (the threads setting restored afterwards)."""
    script = load_script(REPO / 'benchmarks' / 'cifar10_zoo.py')
    threads, old_argv = torch.get_num_threads(), sys.argv
    sys.argv = ['cifar10_zoo.py', '--data-dir', str(images), '--model', 'coded_resnext17_10x2d',
                '--holdout-per-class', '10', '--epochs', '1', '--batch-size', '50', '--threads', '1', *argv]
    try:
        script.main()
    finally:
        sys.argv = old_argv
        torch.set_num_threads(threads)


def snapshot(folder: Path) -> dict:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


@pytest.fixture(scope='module')
def first_run(tmp_path_factory, images):
    out = tmp_path_factory.mktemp('zoo') / 'first'
    zoo(images, '--out', str(out))
    return out


def test_a_run_records_its_checkpoint_and_the_epochs_each_stage_ran(first_run, images, tmp_path):
    record = read_run(first_run)
    assert record['checkpoint_sha256'] == sha256_file(first_run / 'model.safetensors')
    assert stage_epochs(record) == [1] and record['stages'][0]['epochs_run'] == 1
    assert record['train_images'] == 100 and record['val_images'] == 100
    before = snapshot(first_run)

    zoo(images, '--out', str(tmp_path / 'second'), '--init-from', str(first_run), '--lr', '0.01')
    record = read_run(tmp_path / 'second')
    assert [h['epoch'] for h in record['history']] == [1, 2]
    assert stage_epochs(record) == [1, 1] and [s['lr'] for s in record['stages']] == [0.15, 0.01]
    assert snapshot(first_run) == before  # the run continued from is untouched


def test_refusals_are_one_line_and_write_nothing(first_run, images, tmp_path):
    def refused(*argv: str, match: str) -> None:
        with pytest.raises(SystemExit) as e:
            zoo(images, *argv)
        message = str(e.value.code)
        assert message.startswith('error: ') and '\n' not in message and match in message, message

    before = snapshot(first_run)
    refused('--out', str(first_run), match='already holds a run')
    refused('--out', str(tmp_path / 'a'), '--init-from', str(first_run), '--control', match='it trained coded_resnext17_10x2d {}')
    refused('--out', str(tmp_path / 'b'), '--init-from', str(first_run), '--holdout-per-class', '5',
            match='held out 10 images per class, not --holdout-per-class 5')
    refused('--out', str(tmp_path / 'c'), '--init-from', str(tmp_path / 'nothing'), match='not a training run folder')

    # weights replaced after the record was written (a run killed between its two writes)
    tampered = tmp_path / 'tampered'
    tampered.mkdir()
    (tampered / 'history.json').write_bytes((first_run / 'history.json').read_bytes())
    data = bytearray((first_run / 'model.safetensors').read_bytes())
    data[-1] ^= 1
    (tampered / 'model.safetensors').write_bytes(bytes(data))
    refused('--out', str(tmp_path / 'd'), '--init-from', str(tampered), match='is not the checkpoint')

    # a record whose stages do not add up to its history (an old run stopped before its schedule ended)
    record = json.loads((first_run / 'history.json').read_text())
    for stage in record['stages']:
        stage.pop('epochs_run')
    record['stages'] = record['stages'] * 2
    (tampered / 'history.json').write_text(json.dumps(dict(record, checkpoint_sha256=None)))
    (tampered / 'model.safetensors').write_bytes((first_run / 'model.safetensors').read_bytes())
    refused('--out', str(tmp_path / 'e'), '--init-from', str(tampered), match='lists 1 epochs but its stages account for 2')

    assert snapshot(first_run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['tampered']  # no --out folder was created


def test_ship_weights_refuses_a_control_or_a_mismatched_split_before_writing(first_run, images, tmp_path, monkeypatch):
    from timm_coded.hub import manifest as manifest_module

    ship = load_script(REPO / 'scripts' / 'ship_weights.py')
    manifest = manifest_module.PACKAGE_DIR / 'weights_manifest.json'
    before = sha256_file(manifest)
    base = ['ship_weights.py', '--data-dir', str(images), '--tag', 'test', '--report-dir', str(tmp_path / 'report')]

    def refused(*argv: str, match: str) -> None:
        monkeypatch.setattr(sys, 'argv', base + list(argv))
        with pytest.raises(SystemExit) as e:
            ship.main()
        assert str(e.value.code).startswith('error: ') and match in str(e.value.code), e.value.code

    refused('--run', str(first_run), match='held out [10] images per class, not --holdout-per-class 500')
    control = tmp_path / 'control'
    control.mkdir()
    record = json.loads((first_run / 'history.json').read_text())
    (control / 'history.json').write_text(json.dumps(dict(record, model_kwargs={'coded': False})))
    (control / 'model.safetensors').write_bytes((first_run / 'model.safetensors').read_bytes())
    refused('--run', str(control), '--holdout-per-class', '10', match='uncoded control (coded=False)')
    assert not (tmp_path / 'report').exists() and sha256_file(manifest) == before
