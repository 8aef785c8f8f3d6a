"""How much of the ideal speed-up any cache can realize on the bundled models, next to what the grid realized.

    python scripts/speed_ceiling.py assets/bench_grid_*steps*.json [--images 12]

The ideal speed-up, 1 / compute fraction, counts the transformer alone. A one-image call also spends time outside it
(the pipeline's own work per image and per step: `_execution_device`, the label encoder, the scheduler, guidance,
unpacking the image), which no cache removes. Timed here as the grid times it (one-image calls, `output_type="pt"`):
an uncached image's time T and the part of it spent inside the transformer C (torch forward
hooks around each call; median over `--images` images after two warm-ups). A cache that made every reused call free
would realize T / (f C + T - C) at compute fraction f: the ceiling. Printed per LayerCache record of each file: its
realized fraction of ideal, the ceiling's and MeanCache's (whose reused steps call nothing). Run it on a quiet
machine: it is a timing.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layercache.evaluation.overhead import call_times  # noqa: E402
from layercache.models.registry import load_pipeline  # noqa: E402


def image_and_transformer_time(pipe, steps: int, images: int) -> tuple[float, float]:
    """Median seconds of an uncached one-image call and of its transformer calls summed."""
    totals, inside = [], []
    for index in range(images + 2):
        start = time.perf_counter()
        calls = call_times(pipe, steps)
        if index >= 2:   # the first two warm up
            totals.append(time.perf_counter() - start)
            inside.append(sum(calls))
    return statistics.median(totals), statistics.median(inside)


def ceiling_of_ideal(total: float, inside: float, ideal: float) -> float:
    """The fraction of `ideal` (1 / compute fraction) realized by a cache whose reused calls cost nothing, given an
    uncached image's time `total` of which `inside` is in the transformer."""
    return total / (inside / ideal + total - inside) / ideal


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="bench results files (python -m layercache bench --out ...)")
    parser.add_argument("--images", type=int, default=12, help="timed images per (model, step count)")
    args = parser.parse_args()
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    pipes = {}
    print("| model | steps | budget | ideal | image ms | outside the transformer | LayerCache of ideal | "
          "ceiling of ideal | MeanCache of ideal |")
    print("|---|---|---|---|---|---|---|---|---|")
    below = []
    for path in args.files:
        found = json.loads(Path(path).read_text())
        model = found["meta"]["model"]
        if model not in pipes:
            pipes[model] = load_pipeline(model)
            pipes[model].set_progress_bar_config(disable=True)
        for steps in sorted({r["steps"] for r in found["records"]}):
            records = [r for r in found["records"] if r["steps"] == steps]
            below += ceilings(pipes[model], model, steps, records, args.images)
    print(f"\nLayerCache below 0.90 of ideal in {len(below)} cells" + "".join(f"\n  {line}" for line in below))


def ceilings(pipe, model: str, steps: int, records: list, images: int) -> list[str]:
    """Print one step count's rows; return its cells below 0.90 of ideal."""
    total, inside = image_and_transformer_time(pipe, steps, images)
    outside, below = total - inside, []
    meancache = {r["budget"]: r for r in records if r["method"] == "meancache" and r["speedup_wall"]}
    for ours in (r for r in records if r["method"] == "layercache" and r["speedup_wall"]):
        ideal = ours["speedup_ideal"]
        ceiling = ceiling_of_ideal(total, inside, ideal)
        realized = ours["speedup_wall"] / ideal
        peer = meancache.get(ours["budget"])
        peer_text = f"{peer['speedup_wall'] / peer['speedup_ideal']:.3f}" if peer else "–"
        print(f"| {model} | {steps} | {ours['budget']:g} | {ideal:.2f}× | {1e3 * total:.1f} | "
              f"{1e3 * outside:.1f} ms ({outside / total:.1%}) | {realized:.3f} | {ceiling:.3f} | {peer_text} |")
        if realized < 0.9:
            below.append(f"{model} {steps} / {ours['budget']:g}: {realized:.3f} (ceiling {ceiling:.3f}, "
                         f"MeanCache {peer_text})")
    return below


if __name__ == "__main__":
    main()
