"""Parameter share of class-subset classifiers (`slice_subset`) for the CIFAR-10 architectures.

    python benchmarks/bench_subset_shares.py

Builds each architecture with its built-in coding schemes (weights do not change the counts),
slices the subsets below and prints the share of the parent's parameters and the subNNs kept in
every coded block (the union of the classes' codewords).
"""
import timm
import torch

import timm_coded  # noqa: F401
from timm_coded.data import CIFAR10_CLASSES
from timm_coded.models.binary import count_parameters
from timm_coded.models.subset import slice_subset

SUBSETS = {
    'vehicles': ['airplane', 'automobile', 'ship', 'truck'],
    'animals': ['bird', 'cat', 'deer', 'dog', 'frog', 'horse'],
    'pets': ['cat', 'dog'],
}
ARCHS = ('coded_resnext17_10x8d', 'coded_resnext11_10x4d', 'coded_resnext29_10x11d')


def main() -> None:
    torch.set_num_threads(1)
    print('| architecture | parameters | ' + ' | '.join(SUBSETS) + ' |')
    print('|---|---|' + '---|' * len(SUBSETS))
    for arch in ARCHS:
        model = timm.create_model(arch, class_names=list(CIFAR10_CLASSES)).eval()
        cells = []
        for name, classes in SUBSETS.items():
            subset = slice_subset(model, classes, name)
            kept = [len(b.present_subnns) for b in subset.modules() if hasattr(b, 'present_subnns') and b.coded]
            cells.append(f'{100 * count_parameters(subset) / count_parameters(model):.1f} % '
                         f'(subNNs kept {"/".join(map(str, kept))})')
        print(f'| `{arch}` | {count_parameters(model):,} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
