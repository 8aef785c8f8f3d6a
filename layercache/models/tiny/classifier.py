"""An independent digit classifier: judges the generated digits, and embeds them for a Fréchet distance.

    python -m layercache train-classifier      # retrain (about a minute on 2 CPU cores), print held-out accuracy

A small CNN trained only on the "train" split of MNIST-5k and tested on the held-out "test" split. It
shares nothing with the diffusion model, so its verdict on generated digits is an outside opinion.
"""

import time
from pathlib import Path

import torch
from torch import nn

from .data import load_mnist
from .defaults import DEFAULT_CLASSIFIER

FEATURES = 64  # penultimate width: small, so that a covariance from a few hundred samples is meaningful


class DigitClassifier(nn.Module):
    """Three conv stages (32x32 -> 4x4) then a 64-wide feature layer and a linear read-out."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 8x8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 4x4
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 16, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 32, 32) in [-1, 1] -> (B, 64) penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_classifier(path=DEFAULT_CLASSIFIER) -> DigitClassifier:
    """Loads the shipped weights; ValueError (naming the file) if they are missing or corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"classifier weights not found at {path}; retrain with "
                         f"`python -m layercache train-classifier`")
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(path))
    except Exception as err:  # safetensors raises SafetensorError, torch RuntimeError on shape mismatch
        raise ValueError(f"classifier weights at {path} are corrupt ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); restore them from git or retrain with "
                         f"`python -m layercache train-classifier`") from None
    return model.eval()


def _to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Pipeline images are (B, 1, 32, 32) in [0, 1]; the classifier was trained on [-1, 1]."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 32, 32):
        raise ValueError(f"expected images of shape (B, 1, 32, 32), got {tuple(images.shape)}")
    return images.float() * 2 - 1


@torch.no_grad()
def classify(model: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 1, 32, 32) in [0, 1] -> predicted labels (B,)."""
    return model(_to_model_range(images)).argmax(dim=1)


@torch.no_grad()
def features(model: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 1, 32, 32) in [0, 1] -> penultimate features (B, 64)."""
    return model.features(_to_model_range(images))


def _sqrtm_psd(mat: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative
    round-off eigenvalues clamped to 0): stable where a general sqrtm would go complex."""
    vals, vecs = torch.linalg.eigh(mat)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), as in FID:
    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2). float64 throughout."""
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()  # tr of its sqrt
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


@torch.no_grad()
def accuracy(model: DigitClassifier, images01: torch.Tensor, labels: torch.Tensor) -> float:
    return (classify(model, images01) == labels).float().mean().item()


def train(epochs: int = 12, seed: int = 0, batch: int = 64) -> DigitClassifier:
    """Adam on the train split with one-pixel random shifts; deterministic from `seed`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_mnist("train")
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * -(-len(labels) // batch))
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(labels), generator=gen).split(batch):
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(images[idx], shifts=(dx, dy), dims=(2, 3))  # digits sit in a padded frame: rolling is safe
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f}", flush=True)
    return model.eval()


def held_out_accuracy(model: DigitClassifier) -> float:
    images, labels = load_mnist("test")
    return accuracy(model, (images + 1) / 2, labels)


def run(args):
    """`python -m layercache train-classifier`: retrain, save, print the held-out accuracy."""

    from safetensors.torch import save_file

    t0 = time.time()
    model = train(epochs=args.epochs, seed=args.seed)
    seconds = time.time() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    print(f"trained in {seconds:.0f}s on {torch.get_num_threads()} threads; weights written to {out}")
    print(f"held-out accuracy on real digits: {held_out_accuracy(model):.4f} (1000 test digits)")

