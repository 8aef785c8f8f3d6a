"""Train the bundled digit model: rectified flow on MNIST-5k, EMA weights, resumable checkpoints.

    python -m layercache train                 # CPU: about 2 h on 2 cores at the defaults below
    python -m layercache train --device cuda   # minutes on a GPU

Reproducible from --seed on the same device and software. Checkpoints go to --run-dir every
--ckpt-every steps; a restarted run resumes from the last one. At the end the EMA weights are written
with `save_pretrained` (safetensors) to --out, which the pipeline loads with `from_pretrained`.
"""

import copy
import math
import time
from pathlib import Path

import torch

from .data import load_mnist
from .model import NULL_LABEL, DigitLabelEncoder, build_transformer, pack, velocity

ARCHITECTURE = ("family", "layers", "single_layers", "head_dim", "heads", "patch")  # build_transformer's arguments


def flow_matching_loss(transformer, encoder, images, labels, generator, label_drop=0.1):
    """Rectified flow: x_s = (1-s) x0 + s eps, target eps - x0, s logit-normal."""
    b = images.shape[0]
    dev = images.device
    drop = torch.rand(b, generator=generator, device=dev) < label_drop
    labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    sigma = torch.sigmoid(torch.randn(b, generator=generator, device=dev))
    noise = torch.randn(images.shape, generator=generator, device=dev)
    s = sigma.view(b, 1, 1, 1)
    noisy = (1 - s) * images + s * noise
    pred = velocity(transformer, pack(noisy), sigma, encoder(labels))
    return torch.nn.functional.mse_loss(pred, pack(noise - images))


def random_shift(images, generator, max_shift=1):
    """Shift each digit by up to one pixel: cheap augmentation on a 5k-image set."""
    shifts = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator, device=images.device).tolist()
    return torch.roll(images, shifts=shifts, dims=(2, 3))


def run(args):
    """`python -m layercache train`: the arguments are declared once, in `layercache/cli.py`."""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    images, labels = load_mnist("all")
    images, labels = images.to(dev), labels.to(dev)
    architecture = {key: getattr(args, key) for key in ARCHITECTURE}
    transformer = build_transformer(**architecture).to(dev)
    encoder = DigitLabelEncoder(num_tokens=args.text_tokens).to(dev)
    print(f"{type(transformer).__name__} {architecture}, {args.text_tokens} text tokens: "
          f"{sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M parameters", flush=True)
    ema_t, ema_e = copy.deepcopy(transformer).eval(), copy.deepcopy(encoder).eval()
    params = list(transformer.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    step = 0

    run_dir = Path(args.run_dir)
    ckpt = run_dir / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        if state.get("architecture", architecture) != architecture:
            raise ValueError(f"{ckpt} holds {state['architecture']}, not {architecture}: use another --run-dir")
        for module, key in [(transformer, "transformer"), (encoder, "encoder"), (ema_t, "ema_t"), (ema_e, "ema_e")]:
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())  # a generator state is a CPU byte tensor, also for CUDA generators
        step = state["step"]
        print(f"resumed from {ckpt} at step {step}", flush=True)

    def save_checkpoint():
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"transformer": transformer.state_dict(), "encoder": encoder.state_dict(),
                 "ema_t": ema_t.state_dict(), "ema_e": ema_e.state_dict(), "opt": opt.state_dict(),
                 "gen": gen.get_state(), "step": step, "architecture": architecture}
        torch.save(state, run_dir / "tmp.pt")
        (run_dir / "tmp.pt").replace(ckpt)  # atomic: an interrupted save never corrupts the last checkpoint
        if args.snapshots:  # the EMA weights at this step, loadable by the pipeline (heterogeneity over training)
            save_weights(run_dir / f"step{step}")

    def save_weights(out):
        ema_t.save_pretrained(out / "transformer", safe_serialization=True, max_shard_size="12MB")
        ema_e.save_pretrained(out / "label_encoder", safe_serialization=True)

    t0, running = time.time(), None
    transformer.train()
    while step < args.steps:
        idx = torch.randint(0, len(labels), (args.batch,), generator=gen, device=dev)
        batch = random_shift(images[idx], gen)
        loss = flow_matching_loss(transformer, encoder, batch, labels[idx], gen)
        warm = min(1.0, (step + 1) / max(1, args.warmup))
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for ema, live in [(ema_t, transformer), (ema_e, encoder)]:
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - args.ema)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0:
            print(f"step {step}/{args.steps} loss {running:.4f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        if step % args.ckpt_every == 0:
            save_checkpoint()
        if args.stop_at is not None and step >= args.stop_at:
            break
        if args.max_minutes and time.time() - t0 > 60 * args.max_minutes:
            print(f"stopping at step {step}: --max-minutes reached", flush=True)
            break
    save_checkpoint()

    out = Path(args.out)
    ema_t.to("cpu")
    ema_e.to("cpu")
    save_weights(out)
    print(f"trained {step} steps in {time.time() - t0:.0f}s; EMA weights written to {out}", flush=True)
