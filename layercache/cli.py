"""`python -m layercache <command>`: the command-line face of the project.

Each command is one function decorated with `@command(help, *arguments)`; its name is the function's
name; its arguments are declared here, once, and the work lives in the module it imports when it runs. Nothing
heavy is imported before a command runs, so `--help` answers at once (no torch, no diffusers). Bad input
(out-of-range values, missing or corrupt weights) prints one `error: ...` line on stderr and exits with status 2,
never a traceback: the functions raise ValueError and `main` reports it.
"""

import argparse
import sys
from pathlib import Path

from .evaluation.bench import ARGUMENTS as BENCH_ARGUMENTS
from .models.tiny.defaults import DEFAULT_CLASSIFIER, DEFAULT_GUIDANCE, DEFAULT_WEIGHTS

_COMMANDS = []  # (name, help, arguments, function), in the order they are declared


def arg(*flags, **kwargs):
    return flags, kwargs


def command(help, *arguments):
    def register(fn):
        _COMMANDS.append((fn.__name__.replace("_", "-"), help, arguments, fn))
        return fn
    return register


def _seed(text: str) -> int:
    value = int(text)  # argparse turns the ValueError into "invalid _seed value"
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed must be >= 0, got {value}")
    return value


_seed.__name__ = "seed"  # argparse names the type in its message: "invalid seed value: 'x'"

WEIGHTS = arg("--weights", default=str(DEFAULT_WEIGHTS), help="folder of the bundled model (default: %(default)s)")
STEPS = arg("--steps", type=int, default=50, help="denoising steps, 1-1000 (default: %(default)s)")
GUIDANCE = arg("--guidance", type=float, default=DEFAULT_GUIDANCE,
               help="classifier-free guidance scale, >= 0; 1 turns CFG off (default: %(default)s)")


def _load(weights, steps, guidance, prompt=None, label=None):
    """Checks the inputs with the pipeline's own rules before the (slower) weight loading."""
    from .models.tiny import TinyDigitPipeline

    TinyDigitPipeline.check_inputs(prompt, label, steps, guidance, None)
    return TinyDigitPipeline.from_weights(weights)


@command("write one generated digit to a PNG (same arguments, same bytes)",
         arg("--label", type=int, help="digit 0-9"), arg("--prompt", help="e.g. '7', 'seven', 'digit 7'"),
         arg("--seed", type=_seed, default=0), STEPS, GUIDANCE, WEIGHTS,
         arg("--out", required=True, help="PNG file to write"))
def generate(args):
    import torch

    pipe = _load(args.weights, args.steps, args.guidance, args.prompt, args.label)
    image = pipe(prompt=args.prompt, label=args.label, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed)).images[0]
    try:
        image.save(args.out, format="PNG")
    except OSError as err:
        raise ValueError(f"cannot write {args.out}: {err.strerror or err}") from None
    print(args.out)


@command("accuracy of an independent classifier on generated digits, and their Fréchet distance to real ones",
         arg("--per-class", type=int, default=20, help="digits generated per class (default: %(default)s)"),
         STEPS, GUIDANCE, WEIGHTS,
         arg("--classifier", default=None, help="classifier safetensors (default: assets/classifier)"))
def fidelity(args):
    from .evaluation.fidelity import run_fidelity
    from .models.tiny.classifier import load_classifier

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    classifier = load_classifier(args.classifier or DEFAULT_CLASSIFIER)
    pipe = _load(args.weights, args.steps, args.guidance, label=0)
    run_fidelity(pipe, classifier, per_class=args.per_class, steps=args.steps, guidance=args.guidance)


@command("median CPU wall time of one image with CFG, after a warm-up",
         STEPS, GUIDANCE, WEIGHTS, arg("--repeats", type=int, default=5, help="timed runs (default: %(default)s)"))
def speed(args):
    from .evaluation.speed import machine, summarize, time_images

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    pipe = _load(args.weights, args.steps, args.guidance, label=7)
    print(f"machine: {machine()}")
    times = time_images(pipe, steps=args.steps, guidance=args.guidance, repeats=args.repeats)
    cfg = "with CFG" if args.guidance != 1.0 else "without CFG"
    print(f"one {args.steps}-step image {cfg} (guidance {args.guidance:g}): {summarize(times)}")


@command("LayerCache at the real models' scale on one CUDA GPU (random bf16 weights, 1024x1024)",
         arg("--models", default="qwen-image,flux-dev"), arg("--budgets", default="0.73,0.5"),
         arg("--steps", type=int, default=50), arg("--groups", type=int, default=6),
         arg("--repeats", type=int, default=1))
def bench_gpu(args):
    from .evaluation.bench_gpu import run

    run(args)


@command("the app's two-lane runner at the real models' scale on one CUDA GPU (random bf16 weights, 1024x1024): "
         "peak memory, time to the first streamed step, each lane's step, preview cost, realized / ideal speed-up",
         arg("--models", default="qwen-image,flux-dev,sd35-medium"), arg("--steps", type=int, default=50),
         arg("--budget", type=float, default=0.5), arg("--groups", type=int, default=4),
         arg("--tiny", action="store_true", help="tiny configurations on the CPU (float32): checks the script"))
def gpu_app(args):
    from .evaluation.gpu_app import run

    run(args)


@command("every caching method at every budget on the same evaluation seeds (PSNR/SSIM/fidelity vs uncached, "
         "compute, wall-clock speed-up): results JSON and a Pareto figure", *BENCH_ARGUMENTS)
def bench(args):
    from .evaluation.bench import run

    run(args)


@command("the grid of one or more bench results (e.g. one per step count): LayerCache against the best peer per "
         "(steps, budget) cell, and wall-clock against ideal speed-ups; --html/--png redraw the Pareto figure",
         arg("results", nargs="+", help="bench results JSON files"), arg("--html", default=None),
         arg("--png", default=None))
def bench_report(args):
    from .evaluation.bench import report

    print(report(args.results, args.html, args.png))


@command("LayerCache's quality on the bundled model: the full planner against plain reuse (K=1), PSNR/SSIM of final "
         "images against the uncached ones, both plans checked end to end on the calibration calls",
         arg("--seeds", default="100-119", help="evaluation seeds (default: %(default)s)"),
         arg("--budgets", default="0.9,0.73,0.6,0.5,0.4", help="(default: %(default)s)"),
         arg("--steps", type=int, default=50, help="(default: %(default)s)"),
         arg("--groups", type=int, default=4, help="(default: %(default)s)"))
def quality(args):
    from .evaluation.quality import run

    run(args)


@command("cost of the machinery on a bundled model: hooked-but-all-computed time against unhooked, and the "
         "realized speed-up of LayerCache and MeanCache against the ideal, timed interleaved (median of repeats)",
         arg("--model", default="tiny", help="a bundled model's key: tiny or tiny-flux (default: %(default)s)"),
         arg("--repeats", type=int, default=7, help="(default: %(default)s)"),
         arg("--budgets", default="0.7,0.5,0.35,0.25,0.2", help="(default: %(default)s)"),
         arg("--steps", type=int, default=50, help="(default: %(default)s)"),
         arg("--telemetry", action="store_true", help="time with telemetry recording on"))
def overhead(args):
    from .evaluation.overhead import run

    run(args)


@command("how fast the app feels: time from Run to the first streamed step and to the end of a default run, "
         "through a real `python app.py` server and gradio_client",
         arg("--repeats", type=int, default=5, help="(default: %(default)s)"),
         arg("--url", default=None, help="a running app (default: start one on a free port)"),
         arg("--clients", type=int, default=0, help="a room: this many sessions press Run at once (default: off)"))
def app_speed(args):
    from .evaluation.app_speed import run

    run(args)


@command("the cached sampler on CUDA with the bundled model: all-computed bit-identical to uncached, and the "
         "budget-0.73 / 0.5 schedules' PSNR")
def gpu_check(args):
    from .evaluation.gpu_check import run

    run(args)


@command("what bench-gpu's schedules really skip, without a GPU: Qwen-Image and FLUX.1-dev on the meta device, "
         "FLOPs per block against the weight-count proxy",
         arg("--measured", type=Path, default=Path("assets/bench_gpu_h200.txt"),
             help="a saved bench-gpu output (default: %(default)s)"),
         arg("--budgets", default="0.73,0.5", help="(default: %(default)s)"),
         arg("--steps", type=int, default=50, help="(default: %(default)s)"),
         arg("--groups", type=int, default=6, help="(default: %(default)s)"))
def gpu_cost_model(args):
    from .evaluation.gpu_cost_model import run

    run(args)


@command("what the app's live preview of a latent model costs against one transformer step at 1024 x 1024, on "
         "this machine (preview measured; step estimated from one real-width block of each kind, scaled by FLOPs)",
         arg("--grid", type=int, default=None, help="image grid the blocks are timed at (default: 16 on the CPU, "
                                                    "64 = 1024 px on CUDA)"),
         arg("--repeats", type=int, default=20, help="preview timings (default: %(default)s)"),
         arg("--step-repeats", type=int, default=3, help="block timings (default: %(default)s)"),
         arg("--threads", type=int, default=1, help="torch threads on the CPU (default: %(default)s, as the app)"))
def preview_cost(args):
    from .evaluation.preview_cost import run

    run(args)


@command("GPU memory per hub model without a download (components built on the meta device, bf16): bytes per "
         "component, the cache's bound, the app's peak per offloading option, and which card runs which model",
         arg("--groups", type=int, default=4, help="(default: %(default)s)"),
         arg("--max-k", type=int, default=4, help="largest K, the residuals kept per group (default: %(default)s)"),
         arg("--resolution", type=int, default=1024, help="image side in pixels (default: %(default)s)"))
def memory(args):
    from .evaluation.memory import run

    run(args)


@command("train the bundled digit model (rectified flow on MNIST-5k, EMA, resumable checkpoints); about 2 h on "
         "2 CPU cores at the defaults, minutes on a GPU",
         arg("--steps", type=int, default=5000, help="(default: %(default)s)"),
         arg("--batch", type=int, default=64, help="(default: %(default)s)"),
         arg("--lr", type=float, default=3e-4, help="(default: %(default)s)"),
         arg("--ema", type=float, default=0.999, help="(default: %(default)s)"),
         arg("--warmup", type=int, default=500, help="learning-rate warm-up steps (default: %(default)s)"),
         arg("--seed", type=int, default=0, help="(default: %(default)s)"),
         arg("--device", default=None, help="(default: cuda if available, else cpu)"),
         arg("--run-dir", default="runs/tiny", help="checkpoints, resumed from (default: %(default)s)"),
         arg("--ckpt-every", type=int, default=500, help="(default: %(default)s)"),
         arg("--max-minutes", type=float, default=None, help="stop early (and save) after this long"),
         arg("--stop-at", type=int, default=None, help="stop (and save) at this step, keeping the LR schedule of "
                                                      "--steps"),
         arg("--out", default=str(DEFAULT_WEIGHTS), help="(default: %(default)s)"),
         arg("--snapshots", action="store_true", help="also write the EMA weights at every checkpoint to "
                                                       "RUN_DIR/step<N>/ (loadable with --weights)"),
         # the architecture (issue 12's candidates, docs/candidates.md); the defaults build the bundled model
         arg("--family", choices=["qwen", "flux", "sd3"], default="qwen", help="(default: %(default)s)"),
         arg("--layers", type=int, default=12, help="blocks; FLUX: double-stream blocks (default: %(default)s)"),
         arg("--single-layers", type=int, default=0, help="FLUX's single-stream blocks (default: %(default)s)"),
         arg("--head-dim", type=int, default=32, help="(default: %(default)s)"),
         arg("--heads", type=int, default=4, help="(default: %(default)s)"),
         arg("--patch", type=int, default=4, help="pixels per patch side: 4 -> 64 tokens (default: %(default)s)"),
         arg("--text-tokens", type=int, default=4, help="label tokens in the text stream (default: %(default)s)"))
def train(args):
    from .models.tiny.train import run

    run(args)


@command("retrain the independent digit classifier (fidelity's judge) on MNIST-5k's train split and print its "
         "held-out accuracy",
         arg("--epochs", type=int, default=12, help="(default: %(default)s)"),
         arg("--seed", type=int, default=0, help="(default: %(default)s)"),
         arg("--out", default=str(DEFAULT_CLASSIFIER), help="(default: %(default)s)"))
def train_classifier(args):
    from .models.tiny.classifier import run

    run(args)


@command("write a bundled model's shipped calibrations to assets/calibrations/",
         arg("--model", default="tiny", help="a bundled model's key (default: %(default)s)"),
         arg("--steps", type=int, nargs="+", default=[30, 50], help="(default: %(default)s)"),
         arg("--groups", type=int, nargs="+", default=[4], help="(default: %(default)s)"))
def calibrate_shipped(args):
    from .models.tiny.calibrate_shipped import run

    run(args)


@command("how differently the layer groups behave (velocity change, plain-reuse and best-slope error per group and "
         "phase, and the heterogeneity ratio), from the shipped calibration or a calibration file",
         arg("--model", default="tiny", help="model key (default: %(default)s)"),
         arg("--steps", type=int, default=30, help="(default: %(default)s)"),
         arg("--groups", type=int, default=4, help="(default: %(default)s)"),
         arg("--calibration", default=None, help="a calibration .npz (default: the model's shipped one; without one, "
                                                  "calibrate on the model's calibration inputs)"),
         arg("--weights", default=None, help="a bundled-model folder, e.g. a candidate's (docs/candidates.md): "
                                             "calibrate it on the bundled model's calibration inputs"))
def explore(args):
    from .calibrate import Calibration
    from .heterogeneity import heterogeneity
    from .models.registry import get_entry, shipped_calibration

    get_entry(args.model)
    if args.steps < 2 or args.groups < 1:
        raise ValueError(f"--steps must be >= 2 and --groups >= 1, got {args.steps} and {args.groups}")
    path = args.calibration or shipped_calibration(args.model, args.steps, args.groups)
    if args.weights:
        from .calibrate import calibrate
        from .models.tiny import TinyDigitPipeline
        from .models.tiny.sets import calibration_calls

        cal = calibrate(TinyDigitPipeline.from_weights(args.weights), calibration_calls(), args.steps,
                        num_groups=args.groups)
    elif args.calibration or Path(path).is_file():
        cal = Calibration.load(path)
    else:
        from .calibrate import calibrate
        from .models.registry import load_pipeline
        from .studio.workbench import calibration_calls

        print(f"no shipped calibration for {args.model} at {args.steps} steps and {args.groups} groups: calibrating",
              file=sys.stderr)
        cal = calibrate(load_pipeline(args.model), calibration_calls(args.model), args.steps, num_groups=args.groups)
    measure = heterogeneity(cal)
    print(f"{cal.model_id}: {cal.num_steps} steps, {cal.num_groups} groups\n\n{measure.table()}\n\n{measure.summary()}")


@command("print the README front matter rendered from space.yaml (the Space metadata)")
def space(args):
    from .studio.space import front_matter

    print(front_matter(), end="")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line instead of argparse's usage block, so that every bad input looks the same."""
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m layercache", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, help, arguments, fn in _COMMANDS:
        sub = subparsers.add_parser(name, help=help, description=help)
        for flags, kwargs in arguments:
            sub.add_argument(*flags, **kwargs)
        sub.set_defaults(run=fn)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # keep stderr for errors
    try:
        args.run(args)
    except ValueError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
