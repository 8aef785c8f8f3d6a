"""How precise is the benchmark's wall-clock speed-up on this machine? Times identical plans the way `bench` does.

MeanCache and LayerCache's velocity plan on MeanCache's steps compute the same thing (bit for bit, tested), so any
difference between their speed-ups is timing noise; LayerCache's residual plan on the same steps shows what the
floor of a residual-reused call costs. Each round times, for each plan, three alternated (uncached, cached)
one-image calls, as `bench --repeats 3` does (`evaluation.bench._timed`), and prints the median of the three paired
ratios (the bench's figure) and the ratio of the fastest times; then the mean of each over the rounds.

    python scripts/timing_noise.py --model tiny --steps 10 --budget 0.2 --rounds 6
"""

import argparse
import statistics

from layercache.calibrate import Calibration
from layercache.evaluation.bench import _timed
from layercache.meancache import meancache_schedule
from layercache.methods import LayerCacheSetting, MeanCacheSetting
from layercache.models.registry import load_pipeline, shipped_calibration
from layercache.planner import plan

SEED = 100   # the grid's first evaluation seed, the one its timing uses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-flux"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="alternated pairs per plan and round (bench's)")
    args = parser.parse_args()
    path = shipped_calibration(args.model, args.steps, 4)
    if not path.is_file():
        parser.error(f"no shipped calibration for {args.model} at {args.steps} steps ({path})")
    if args.rounds < 1 or args.repeats < 1 or not 0 < args.budget <= 1:
        parser.error("--rounds and --repeats must be >= 1 and --budget in (0, 1]")
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(path)
    plans = {"meancache": MeanCacheSetting(meancache_schedule(cal, args.budget)),
             "layercache velocity plan": LayerCacheSetting(plan(cal, args.budget, objective="outputs", velocity=True)),
             "layercache residual plan": LayerCacheSetting(plan(cal, args.budget, objective="outputs"))}
    ideal = 1 / plans["meancache"].schedule.compute_fraction
    _timed(pipe, SEED, args.steps)   # warm-up
    found = {name: {"median": [], "fastest": []} for name in plans}
    print(f"{args.model}, {args.steps} steps, budget {args.budget:g} (ideal {ideal:.2f}×); per round: median of "
          f"{args.repeats} paired ratios / ratio of the fastest times")
    for round_index in range(args.rounds):
        cells = []
        for name, cache in plans.items():
            uncached, cached = [], []
            for _ in range(args.repeats):
                uncached.append(_timed(pipe, SEED, args.steps))
                cache.attach(pipe)
                try:
                    cached.append(_timed(pipe, SEED, args.steps))
                finally:
                    cache.detach(pipe)
            found[name]["median"].append(statistics.median(u / c for u, c in zip(uncached, cached)))
            found[name]["fastest"].append(min(uncached) / min(cached))
            cells.append(f"{name} {found[name]['median'][-1]:.2f} / {found[name]['fastest'][-1]:.2f}")
        print(f"round {round_index}: " + " | ".join(cells), flush=True)
    for name, values in found.items():
        print(f"{name}: median of pairs {min(values['median']):.2f}–{max(values['median']):.2f}× (mean "
              f"{statistics.fmean(values['median']):.2f}, {statistics.fmean(values['median']) / ideal:.2f} of ideal); "
              f"fastest {min(values['fastest']):.2f}–{max(values['fastest']):.2f}×")


if __name__ == "__main__":
    main()
