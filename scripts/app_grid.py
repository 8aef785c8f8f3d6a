"""The issue-10 table, as a user gets it: the app's methods compared through a real `python app.py` server.

    python scripts/app_grid.py [--models tiny,tiny-flux] [--steps 12,20,30,50] [--budgets 0.7,0.5,0.35,0.25,0.2]
                               [--methods LayerCache,MeanCache] [--inputs 0:900,3:901,7:902,9:903]
                               [--groups 4] [--max-k 4] [--out F.json]

Starts the app on a free port, presses Run (`/run` through gradio_client) for every model, step count, budget,
method and input (digit:seed; seeds disjoint from calibration, 1-6, and from the benchmark's, 100-199), with the
app's own defaults for everything else (guidance; groups and largest K unless given: a table for each pair), and
prints each cell's mean PSNR of the cached lane against the uncached lane of the same run, with the paired difference
of the first two methods and its standard error over the inputs. Planning happens in the app as a user's first run
of a setting makes it (`studio/workbench.verified_plan`: `plan_verified` on two calibration images, the finalists
rechecked on ten more).
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layercache.evaluation.app_speed import start_app  # noqa: E402
from layercache.studio.space import defaults  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,tiny-flux")
    p.add_argument("--steps", default="12,20,30,50")
    p.add_argument("--budgets", default="0.7,0.5,0.35,0.25,0.2")
    p.add_argument("--methods", default="LayerCache,MeanCache")
    p.add_argument("--inputs", default="0:900,3:901,7:902,9:903", help="digit:seed pairs, comma separated")
    p.add_argument("--groups", help="numbers of groups, comma separated (default: the app's)")
    p.add_argument("--max-k", help="largest K values, comma separated (default: the app's)")
    p.add_argument("--url", help="a running app instead of starting one")
    p.add_argument("--out", help="JSON file for every run's PSNR")
    a = p.parse_args(argv)
    inputs = []
    for item in a.inputs.split(","):
        digit, _, seed = item.partition(":")
        if not (digit.isdigit() and seed.isdigit()) or (1 <= int(seed) <= 6) or (100 <= int(seed) <= 199):
            p.error(f"--inputs: {item!r} must be digit:seed with a seed outside calibration (1-6) and the "
                    f"benchmark's (100-199)")
        inputs.append((digit, int(seed)))
    return a, inputs


def psnr_of_run(client, args) -> float:
    """The last update of one Run: its metrics hold the cached lane's PSNR against the uncached lane."""
    out = None
    for out in client.submit(*args, api_name="/run"):
        pass
    if out is None or not out[0].startswith("**Done"):
        raise SystemExit(f"the run {args} did not finish: {out[0] if out else 'no output'}")
    return float(out[6]["psnr_db"])


def mean_se(values: list) -> tuple[float, float]:
    """Mean and standard error of the mean (0 where undefined: one value, or an infinite PSNR, i.e. exact images)."""
    finite = len(values) > 1 and all(math.isfinite(v) for v in values)
    return statistics.fmean(values), (statistics.stdev(values) / len(values) ** 0.5 if finite else 0.0)


def table(client, model, groups, max_k, a, inputs, methods, d) -> list:
    """One model's table at one number of groups and largest K: a row per (steps, budget)."""
    print(f"\n{model}: mean PSNR (dB) of the cached lane against the uncached one over {len(inputs)} inputs; "
          f"guidance {d['guidance']}, {groups} groups, largest K {max_k}", flush=True)
    print(f"| steps | budget | {' | '.join(methods)} | {methods[0]} − {methods[1]} |", flush=True)
    print("|---|---|" + "---|" * (len(methods) + 1), flush=True)
    rows = []
    for steps in map(int, a.steps.split(",")):
        for budget in map(float, a.budgets.split(",")):
            psnr = {m: [psnr_of_run(client, (model, digit, seed, steps, d["guidance"], budget, groups, max_k, m,
                                             d["fbc_threshold"]))
                        for digit, seed in inputs] for m in methods}
            means = {m: mean_se(v)[0] for m, v in psnr.items()}
            gap, se = mean_se([x - y if x != y else 0.0 for x, y in zip(psnr[methods[0]], psnr[methods[1]])])
            best = max(means.values())
            shown = [f"**{means[m]:.2f}**" if means[m] == best else f"{means[m]:.2f}" for m in methods]
            print(f"| {steps} | {budget:g} | {' | '.join(shown)} | {gap:+.2f} ± {se:.2f} |", flush=True)
            rows.append({"model": model, "groups": groups, "max_k": max_k, "steps": steps, "budget": budget,
                         "psnr_db": psnr})
    return rows


def main(argv=None):
    from gradio_client import Client

    a, inputs = parse(argv)
    d = defaults()
    methods = a.methods.split(",")
    proc, url = (None, a.url) if a.url else start_app()
    rows = []
    try:
        client = Client(url, verbose=False, download_files=False)
        for model in a.models.split(","):
            for groups in map(int, (a.groups or str(d["groups"])).split(",")):
                for max_k in map(int, (a.max_k or str(d["max_k"])).split(",")):
                    rows += table(client, model, groups, max_k, a, inputs, methods, d)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    if a.out:
        Path(a.out).write_text(json.dumps({"inputs": inputs, "defaults": d, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
