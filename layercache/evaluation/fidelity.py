"""Quality of the bundled model as an outside judge sees it: generate digits of every class, let the
independent classifier read them, and compare its features of generated and real digits.

Seeds: class c is generated as one batch from `torch.Generator().manual_seed(SEED_BASE + c)`.
SEED_BASE = 50_000 keeps these evaluation seeds apart from the small seeds (0, 1, ...) used by
examples, tests and calibration.
"""

import torch

from ..models.tiny.classifier import accuracy, classify, features, frechet_distance, load_classifier
from ..models.tiny.data import load_mnist
from ..models.tiny.pipeline import DEFAULT_GUIDANCE

SEED_BASE = 50_000


def generate_all_classes(pipe, per_class: int = 20, steps: int = 50, guidance: float = DEFAULT_GUIDANCE,
                         seed_base: int = SEED_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (images (10*per_class, 1, 32, 32) in [0, 1], labels); one batched pipeline call per class."""
    images, labels = [], []
    for label in range(10):
        out = pipe(label=[label] * per_class, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(seed_base + label), output_type="pt").images
        images.append(out.float().cpu())
        labels.append(torch.full((per_class,), label))
    return torch.cat(images), torch.cat(labels)


def run_fidelity(pipe, classifier=None, per_class: int = 20, steps: int = 50,
                 guidance: float = DEFAULT_GUIDANCE, log=lambda line: print(line, flush=True)) -> dict:
    """Prints the classifier's accuracy on real held-out digits, the Fréchet distance of generated vs
    real digits (with a real-vs-real reference at the same sample sizes: the finite-sample floor), and,
    last, the accuracy on generated digits. Returns the figures."""
    classifier = classifier if classifier is not None else load_classifier()
    test_x, test_y = load_mnist("test")
    test_x = (test_x + 1) / 2
    real_acc = accuracy(classifier, test_x, test_y)
    log(f"classifier accuracy on real held-out digits: {real_acc:.4f} ({len(test_y)} test digits)")

    gen_x, gen_y = generate_all_classes(pipe, per_class, steps, guidance)
    real_feats = features(classifier, test_x)
    fd = frechet_distance(features(classifier, gen_x), real_feats)
    train_x, _ = load_mnist("train")
    fd_real = frechet_distance(features(classifier, (train_x[: len(gen_y)] + 1) / 2), real_feats)
    log(f"Fréchet distance of classifier features, generated vs real test digits: {fd:.3f} "
        f"({len(gen_y)} vs {len(test_y)}; real train vs real test at the same sizes: {fd_real:.3f})")

    hits = classify(classifier, gen_x) == gen_y
    per_class_acc = [hits[gen_y == c].float().mean().item() for c in range(10)]
    log("per-class accuracy: " + " ".join(f"{c}:{a:.2f}" for c, a in enumerate(per_class_acc)))
    gen_acc = hits.float().mean().item()
    log(f"generated-digit accuracy: {gen_acc:.3f} ({len(gen_y)} samples)")
    return {"real_accuracy": real_acc, "frechet": fd, "frechet_real_reference": fd_real,
            "generated_accuracy": gen_acc, "per_class_accuracy": per_class_acc}
