"""Dataset constants shared by the models, the data pipeline and the coding schemes (no torch)."""

__all__ = ['CIFAR10_CLASSES', 'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD']

# CIFAR-10 label order (also alphabetical, so an ImageFolder of it gets the same indices).
CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck',
)

# Per-channel statistics of the training splits (the true std; the often-copied
# (0.2023, 0.1994, 0.2010) is a std of per-image means).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
