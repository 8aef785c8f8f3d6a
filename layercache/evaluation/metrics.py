"""Image quality against the uncached image (PSNR, SSIM; LPIPS where its weights exist) and speed figures."""

import numpy as np
import torch
import torch.nn.functional as F

LPIPS_UNAVAILABLE = ("LPIPS needs pretrained AlexNet/VGG backbone weights, which cannot be downloaded on this "
                     "machine; install `lpips` with its weights to get it")


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for (B, C, H, W) images in [0, 1]; identical images give inf."""
    mse = ((images.float() - reference.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def ssim(images: torch.Tensor, reference: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window) for (B, C, H, W) images in [0, 1]."""
    x, y = images.float(), reference.float()
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t):
        return F.conv2d(t, kernel, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def lpips(images: torch.Tensor, reference: torch.Tensor):
    """(per-image LPIPS or None, reason). Uses the `lpips` package only if it and its weights are present."""
    try:
        import lpips as lpips_pkg  # noqa: F401 - optional
        model = lpips_pkg.LPIPS(net="alex", verbose=False)
    except Exception:
        return None, LPIPS_UNAVAILABLE
    x, y = images.float(), reference.float()
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return model(x * 2 - 1, y * 2 - 1).flatten(), None


class BlockCounter:
    """What the transformer blocks really computed: executions per block and multiply-adds of their Linears.

    Counted with forward hooks on the Linear layers inside each block: a hook on a block itself still
    fires when a cache skips its forward, but the layers inside a skipped block never run.
    """

    def __init__(self, transformer):
        from ..groups import find_blocks

        blocks = find_blocks(transformer)
        self.counts = np.zeros(len(blocks), dtype=np.int64)   # executions per block, since the last take()
        self.macs = 0
        self._handles = []
        for index, (_, block) in enumerate(blocks):
            linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
            for position, layer in enumerate(linears):
                self._handles.append(layer.register_forward_hook(self._hook(index, position == 0)))

    def _hook(self, index, first):
        def hook(module, args, output):
            self.macs += output.numel() * module.in_features
            if first:
                self.counts[index] += 1
        return hook

    def take(self) -> np.ndarray:
        counts, self.counts = self.counts, np.zeros_like(self.counts)
        return counts

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
