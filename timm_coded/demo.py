"""The main job, end to end: train a coded net, decode early, slice per-class binary classifiers,
calibrate and export them Hub-ready, and write a report with the figures.

Default: the small `coded_resnext17_10x2d` on the CIFAR-10 sample shipped with the package, on
the CPU (the report states the measured training time). `data_dir` switches to a user's
ImageFolder (with val/, or a held-out split of its last images per class), `model` to the
paper's networks.
"""
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ._io import StagedOutput
from .errors import TimmCodedError

__all__ = ['DemoConfig', 'run_demo']

# Files every demo writes, checked against what is already in --out before training starts.
DEMO_OUTPUTS_PROBE = ('README.md', 'report.json', 'checkpoint/model.safetensors', 'checkpoint/history.json')


@dataclass
class DemoConfig:
    out: Path = Path('coded-demo')
    data_dir: Optional[Path] = None  # None: the shipped CIFAR-10 sample
    model: str = 'coded_resnext17_10x2d'
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    # None: CIFAR-size images are decoded once and augmented in torch (pad-and-crop + flip), the
    # CPU fast path; a timm auto-augment string (e.g. 'rand-m4-n3', the paper's) uses timm's
    # per-image pipeline instead
    augment: Optional[str] = None
    holdout_per_class: int = 500  # for a data_dir without val/
    limit_per_class: int = 0  # >0: use only the first N images per class of each split (smoke runs)
    device: str = 'cpu'
    seed: int = 0
    workers: int = 0
    progress: bool = True


def _data(cfg: DemoConfig, model):
    from .data import first_per_class, holdout_split, load_samples, sample_data_dir

    root = Path(cfg.data_dir) if cfg.data_dir is not None else sample_data_dir()
    classes = model.class_names
    try:
        train = load_samples(root, 'train', classes)
        val = load_samples(root, 'val', classes)
        if val.root == train.root:  # a flat folder resolves both splits to itself
            raise TimmCodedError('no val split')
        split = f'{root}: train/ ({len(train)} images) for training and calibration, val/ ({len(val)}) for evaluation'
    except TimmCodedError:
        train, val = holdout_split(root, per_class=cfg.holdout_per_class, expected_classes=classes)
        split = (f'{root}: the last {cfg.holdout_per_class} images of each class held out for evaluation '
                 f'({len(val)}); the rest ({len(train)}) for training and calibration')
    if cfg.limit_per_class:
        train, val = (first_per_class(s, cfg.limit_per_class) for s in (train, val))
        split += f'; limited to the first {cfg.limit_per_class} images per class of each'
    return train, val, split


def run_demo(cfg: DemoConfig, log=print) -> Dict[str, Any]:
    """Run everything; write into `cfg.out` (atomically: a failed run leaves no partial folder)."""
    out = Path(cfg.out)
    # A re-run replaces what the previous demo wrote there (its record says what); a file the
    # demo did not write is never replaced: the run is refused before training, naming it.
    with StagedOutput(out, replace_own=True) as output:  # discarded on any error
        output.check(list(DEMO_OUTPUTS_PROBE))
        report, report_dict = _run(cfg, output.tmp, log)
        output.commit()
    for line in report.summary_lines():
        log(line)
    log(f'report: {out / "README.md"}')
    return report_dict


def _loaders(cfg: DemoConfig, model, train, val):
    """(training, held-out, calibration) loaders: decoded-once tensors for small images without an
    auto-augment string (the fast path), else timm's per-image pipeline."""
    from .data import check_class_count, data_config_for, make_loader
    from .data.tensor import TensorBatchLoader, decode_images

    data_config = data_config_for(model)
    size = data_config['input_size'][-1]
    if cfg.augment is None and size <= 64 and data_config['input_size'][-2] == size:
        for samples in (train, val):
            check_class_count(samples, model)
        stats = dict(mean=data_config['mean'], std=data_config['std'])
        train_x, train_y = decode_images(train, size)
        val_x, val_y = decode_images(val, size)
        return (TensorBatchLoader(train_x, train_y, cfg.batch_size, train=True, seed=cfg.seed, **stats),
                TensorBatchLoader(val_x, val_y, 256, train=False, **stats),
                TensorBatchLoader(train_x, train_y, 256, train=False, **stats))
    loader_args = dict(model_or_data_config=model, num_workers=cfg.workers)
    return (make_loader(train, train=True, batch_size=cfg.batch_size, augment=cfg.augment, seed=cfg.seed,
                        **loader_args),
            make_loader(val, train=False, batch_size=256, **loader_args),
            make_loader(train, train=False, batch_size=256, **loader_args))


def _run(cfg: DemoConfig, tmp: Path, log):
    """Train, evaluate, slice and report into the staging folder `tmp`."""
    import timm
    from safetensors.torch import save_file

    from .analysis import plots
    from .pipeline import extract_binary_classifiers
    from .models.binary import binary_architecture, check_registered
    from .analysis.evaluation import evaluate
    from .training.trainer import TrainConfig, history_as_dicts, train_model

    torch.manual_seed(cfg.seed)
    check_registered(cfg.model)
    model = timm.create_model(cfg.model)
    if not getattr(model, 'schemes', None) or all(s is None for s in model.schemes):
        raise TimmCodedError(f'{cfg.model} is not a coded model')
    train, val, split = _data(cfg, model)
    log(f'data: {split}')
    log(f'model: {cfg.model}, {sum(p.numel() for p in model.parameters()):,} parameters; '
        f'training {cfg.epochs} epochs on {cfg.device}')

    train_loader, val_loader, calib_loader = _loaders(cfg, model, train, val)

    start = time.perf_counter()
    history = train_model(
        model, train_loader, TrainConfig(epochs=cfg.epochs, lr=cfg.lr, device=cfg.device), val_loader,
        progress=cfg.progress,
        on_epoch=lambda s, _: log(f'epoch {s.epoch}: loss {s.loss:.3f} (coding part {s.coding_loss:.3f}), '
                               f'val accuracy {100 * s.val_accuracy:.1f} %, {s.seconds:.0f} s'))
    train_seconds = time.perf_counter() - start
    model = model.cpu().eval()
    (tmp / 'checkpoint').mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / 'checkpoint' / 'model.safetensors'))
    (tmp / 'checkpoint' / 'history.json').write_text(json.dumps(history_as_dicts(history), indent=1))

    log('evaluating: accuracy, early decoding, binary classifiers, specialization, early exit ...')
    report = evaluate(model, val_loader, calibration_loader=calib_loader, model_name=cfg.model,
                      progress=cfg.progress)
    report_dict = report.to_dict()
    report_dict['training'] = {'epochs': cfg.epochs, 'seconds': train_seconds, 'split': split,
                               'history': history_as_dicts(history)}
    (tmp / 'figures').mkdir()
    figures = plots.save_report_plots(report_dict, tmp / 'figures')  # notes any figure it cannot draw
    (tmp / 'report.json').write_text(json.dumps(report_dict, indent=1))

    log('slicing, calibrating and exporting the binary classifiers (Hub-ready) ...')
    folders = extract_binary_classifiers(
        model, 'all', tmp / 'binary_classifiers', calib_loader, val_loader,
        checkpoint=tmp / 'checkpoint' / 'model.safetensors', calibration_source=f'the training split ({split})',
        seed=cfg.seed, results=report.binary, hub_card=_hub_card(cfg),
        progress=cfg.progress)

    (tmp / 'README.md').write_text(_report_markdown(cfg, report, report_dict, figures, folders, tmp,
                                                    binary_architecture(cfg.model)))
    return report, report_dict


def _hub_card(cfg: DemoConfig) -> Dict[str, str]:
    """The binaries' card fields: the dataset only where the demo knows it (its shipped sample)."""
    card = {'repo_id': f'local/{cfg.model}-demo', 'tag': 'demo'}
    return card if cfg.data_dir is not None else dict(card, dataset='cifar10')


def _threshold(v: Optional[float]) -> str:
    return 'never exit' if v is None else f'{v:.3f}'  # JSON turns an infinite threshold into None


def _pct(v: Optional[float]) -> str:
    return '-' if v is None else f'{100 * v:.1f}'


def _duration(seconds: float) -> str:
    """'2596 s (43 min 16 s)': the measured number first, a readable form next to it."""
    if seconds < 90:
        return f'{seconds:.0f} s'
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    readable = f'{hours} h {minutes} min' if hours else f'{minutes} min {rest} s'
    return f'{seconds:.0f} s ({readable})'


def _spread(values: Optional[List[float]]) -> str:
    """Mean accuracy % over the draws with its min-max: '41.7 (38.3-45.0)'."""
    if values is None:
        return '- (fewer than k such subNNs)'
    lo, hi, mean = 100 * min(values), 100 * max(values), 100 * sum(values) / len(values)
    return f'{mean:.1f}' if hi - lo < 0.05 else f'{mean:.1f} ({lo:.1f}-{hi:.1f})'


def _figure(figures: List[Path], placed: List[str], name: str, alt: str, sentence: str) -> List[str]:
    """The figure `name` (when it was drawn) with one sentence saying what it shows."""
    if name not in [f.name for f in figures]:
        return []
    placed.append(name)
    return [f'![{alt}](figures/{name})', '', sentence, '']


def _energy_rows(d: Dict[str, Any]) -> List[tuple]:
    """(block, early decoder accuracy, mean energy on active subNNs, on inactive, uniform) per coded block."""
    from .analysis.plots import energy_contrast

    rows = []
    for block, energies in (d.get('mean_energies') or {}).items():
        words = (d.get('codewords') or {}).get(block)
        if words is None:
            continue
        rows.append((block, d.get('early_decoding', {}).get(block)) + energy_contrast(energies, words))
    return rows


def _report_markdown(cfg: DemoConfig, report, d: Dict[str, Any], figures: List[Path], folders: List[Path],
                     root: Path, binary_arch: str) -> str:
    sample = cfg.data_dir is None
    training = d.get('training') or {}
    history = training.get('history') or []
    seconds = training.get('seconds')
    epochs_run = len(history) or cfg.epochs
    num_classes = len(d.get('class_names') or []) or 1
    chance = 1 / num_classes
    decoders = {k: v for k, v in d['early_decoding'].items() if k != 'classifier'}
    energy_rows = _energy_rows(d)
    placed: List[str] = []

    trained = f'{epochs_run} epochs' + (f' (stopped early, of {cfg.epochs})' if epochs_run < cfg.epochs else '')
    if seconds is not None:
        trained += (f' on {cfg.device}, measured wall-clock time {_duration(seconds)} '
                    f'({seconds / epochs_run:.0f} s per epoch, each with its held-out evaluation)')
    else:
        trained += f' on {cfg.device}'
    lines = [
        f'# Coded ResNeXt demo: {cfg.model}', '',
        f"Data: {training.get('split', '-')}.  ",
        f'Training: {trained}.', '',
    ]
    if sample:
        took = (f'training took a measured {_duration(seconds)}' if seconds is not None
                else f'it trained {epochs_run} epochs')
        # counted at the precision the tables print (a float32 0.1 would pass as 'above 10 %')
        above = sum(1 for v in decoders.values() if v is not None and round(100 * v, 1) > round(100 * chance, 1))
        following = sum(1 for r in energy_rows if r[2] > r[3])
        lines += [
            f'**What these numbers mean.** The shipped sample is a small part of CIFAR-10 (image counts above; the '
            f'full set has 50 000 training images) and {took}, so accuracies are far below the paper\'s 94.41 % '
            '(ResNeXt-29 10×11d, 300 epochs on full CIFAR-10). They show that the pipeline works end to end and '
            f'how far coding took hold in this run: {above} of {len(decoders)} early decoders are above chance '
            f'({100 * chance:.0f} %), and in {following} of {len(energy_rows)} coded blocks the subNNs active in a '
            'class\'s codeword carry more energy than the inactive ones. Run `timm-coded demo --data-dir <CIFAR-10 '
            'train folder>` or see benchmarks/RESULTS.md for larger runs.', '']

    if history:
        last = history[-1]
        final = []
        if last.get('loss') is not None:
            coding = last.get('coding_loss')
            final.append(f"loss {last['loss']:.3f}" + ('' if coding is None else f' (coding part {coding:.3f})'))
        if last.get('val_accuracy') is not None:
            final.append(f"held-out accuracy {_pct(last['val_accuracy'])} %")
        lines += ['## Training', '']
        lines += _figure(figures, placed, 'training.png', 'training curves',
                         'Left: the training loss per epoch and its two parts, classification and coding (μ times '
                         'the coding losses that pull each subNN\'s energy towards its codeword digit); right: '
                         'training and held-out top-1 accuracy per epoch.'
                         + (f" Last epoch: {', '.join(final)}." if final else ''))

    lines += [
        '## Accuracy and early decoding (paper Fig. 4)', '',
        f"Top-1 accuracy of the network: **{_pct(d['accuracy'])} %** on {d['num_samples']} held-out images.", '',
        '| decoder | accuracy % |', '|---|---|',
    ]
    lines += [f'| {name} | {_pct(acc)} |' for name, acc in d['early_decoding'].items()]
    lines += ['', 'A coded block decodes by the nearest codeword to its subNN energies (rescaled to sum to N_act).', '']
    lines += _figure(figures, placed, 'early_decoding.png', 'early decoding accuracy',
                     'Accuracy of each coded block\'s early decoder and of the classifier (orange); the dashed '
                     f'line is chance ({100 * chance:.0f} %). The paper finds it rising with depth.')

    if energy_rows:
        lines += ['## SubNN energies vs codewords', '']
        lines += _figure(figures, placed, 'energies.png', 'subNN energies per class',
                         'Per coded block, the mean normalised energy of each subNN (columns) on the held-out images '
                         'of each class (rows), each block on its own colour scale with white at the uniform share '
                         'N_act/N; dots mark the subNNs active in the class\'s codeword, so a block that follows its '
                         'code shows red dots on blue.')
        lines += ['The coding loss pulls the mean energy of active subNNs towards 1 and of inactive ones towards 0 '
                  '(uniform share N_act/N when the block ignores its code):', '',
                  '| block | early decoder % | mean energy, active subNNs | mean energy, inactive subNNs '
                  '| uniform N_act/N |',
                  '|---|---|---|---|---|']
        lines += [f'| {b} | {_pct(acc)} | {a:.3f} | {i:.3f} | {u:.3f} |' for b, acc, a, i, u in energy_rows]
        lines += ['']

    lines += ['## Binary classifiers (paper Figs. 2b, 3)', '',
              f'One folder per class in `binary_classifiers/` (timm `config.json` with architecture `{binary_arch}`, '
              '`model.safetensors`, model card `README.md`), Hub-ready for `timm-coded publish`. Threshold = the '
              'F1-maximising logit on the training split; precision/recall with 9 negatives per positive on the '
              'held-out split, where a random classifier has a precision of 10 %.', '',
              '| class | params % of parent | threshold | precision % | recall % | F1 % |', '|---|---|---|---|---|---|']
    for b in d['binary']:
        m = b.get('validation') or b['calibration']
        lines.append(f"| {b['class_name']} | {_pct(b['parameter_share'])} | {b['threshold']:+.3f} | "
                     f"{_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} |")
    lines += ['']
    lines += _figure(figures, placed, 'precision_recall.png', 'binary classifiers precision and recall',
                     'Precision and recall of each class\'s binary classifier; the dashed line is the precision of '
                     'a random classifier (10 % at 9 negatives per positive).')

    if d.get('specialization'):
        s = d['specialization']
        lines += [f"## Specialization at {s['block']} (paper Fig. 2a)", '',
                  f"Top-1 accuracy % after removing k random subNNs of the block that are active vs inactive in each "
                  f"image's true-class codeword: mean over {s['draws']} draws (min-max over the draws).", '',
                  '| k removed subNNs | remove k active: accuracy % | remove k inactive: accuracy % |', '|---|---|---|']
        lines += [f'| {k} | {_spread(a)} | {_spread(i)} |' for k, a, i in zip(s['ks'], s['active'], s['inactive'])]
        lines += ['', 'The paper (Fig. 2a) expects removing active subNNs to cost accuracy, more with every k, while '
                  'removing inactive ones barely changes it (it even rises slightly): each class\'s information runs '
                  'through its active subNNs.']
        both = [(k, a, i) for k, a, i in zip(s['ks'], s['active'], s['inactive'])
                if k > 0 and a is not None and i is not None]
        if both:
            k, a, i = both[-1]
            lines += [f'Here, at k = {k}: {100 * sum(a) / len(a):.1f} % with active subNNs removed, '
                      f'{100 * sum(i) / len(i):.1f} % with inactive ones removed (network: {_pct(d["accuracy"])} %).']
        lines += ['']
        lines += _figure(figures, placed, 'specialization.png', 'specialization',
                         'The same numbers: mean accuracy against k, bars spanning the draws.')
    if d.get('early_exit'):
        lines += ['## Early exit (beyond the paper)', '',
                  'Stop at the first coded block whose decoding margin passes the threshold.', '',
                  '| margin threshold | accuracy % | compute % of full net |', '|---|---|---|']
        lines += [f"| {_threshold(p['threshold'])} | {_pct(p['accuracy'])} | {_pct(p['relative_macs'])} |"
                  for p in d['early_exit']]
        lines += ['']
        lines += _figure(figures, placed, 'early_exit.png', 'early exit: accuracy vs compute',
                         'Accuracy against average compute, one point per margin threshold (labelled; "never" is the '
                         'full network): lower thresholds exit earlier and save more compute.')
    rest = [f for f in figures if f.name not in placed]
    if rest:
        lines += ['## Other figures', ''] + [f'![{f.stem}](figures/{f.name})' for f in rest] + ['']
    lines += ['Files: `checkpoint/model.safetensors` (the trained net), `checkpoint/history.json` (per-epoch '
              'training statistics), `report.json` (every number above).', '']
    if d.get('notes'):
        lines += ['Notes:', ''] + [f'- {n}' for n in d['notes']] + ['']
    return '\n'.join(lines)
