"""`python -m layercache <command>`: the command-line face of the project.

Each command is one function decorated with `@command(help, *arguments)`; its name is the function's
name. Bad input (out-of-range values, missing or corrupt weights) prints one `error: ...` line on
stderr and exits with status 2, never a traceback: the functions raise ValueError and `main` reports it.
"""

import argparse
import sys

from .bench import ARGUMENTS as BENCH_ARGUMENTS
from .models.tiny.pipeline import DEFAULT_GUIDANCE, DEFAULT_WEIGHTS

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
    from .fidelity import run_fidelity
    from .models.tiny.classifier import DEFAULT_CLASSIFIER, load_classifier

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    classifier = load_classifier(args.classifier or DEFAULT_CLASSIFIER)
    pipe = _load(args.weights, args.steps, args.guidance, label=0)
    run_fidelity(pipe, classifier, per_class=args.per_class, steps=args.steps, guidance=args.guidance)


@command("median CPU wall time of one image with CFG, after a warm-up",
         STEPS, GUIDANCE, WEIGHTS, arg("--repeats", type=int, default=5, help="timed runs (default: %(default)s)"))
def speed(args):
    from .speed import machine, summarize, time_images

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
    from .bench_gpu import main as bench_gpu_main

    bench_gpu_main(["--models", args.models, "--budgets", args.budgets, "--steps", str(args.steps),
                    "--groups", str(args.groups), "--repeats", str(args.repeats)])


@command("every caching method at every budget on the same evaluation seeds (PSNR/SSIM/fidelity vs uncached, "
         "compute, wall-clock speed-up): results JSON and a Pareto figure", *BENCH_ARGUMENTS)
def bench(args):
    from .bench import run

    run(args)


@command("the grid of one or more bench results (e.g. one per step count): LayerCache against the best peer per "
         "(steps, budget) cell, and wall-clock against ideal speed-ups; --html/--png redraw the Pareto figure",
         arg("results", nargs="+", help="bench results JSON files"), arg("--html", default=None),
         arg("--png", default=None))
def bench_report(args):
    from .bench import report

    print(report(args.results, args.html, args.png))


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
