"""LayerCache against its peers at the same wall-clock speed-up, from stored benchmark files.

    python scripts/equal_wallclock.py assets/bench_grid_*steps*.json

The grid compares methods at the same compute budget. A plan that reuses residuals pays a floor on every reused
call that a velocity plan does not, so at the same budget it can be the slower one. Here each peer's points of one
(model, step count) are joined into a curve of PSNR against wall-clock speed-up, and the curve is read at
LayerCache's speed-up (linear between the peer's two neighbouring points; a speed-up outside the peer's measured
range is not read: no extrapolation). Printed per cell: LayerCache's point, the best peer there and the margin.
"""

import argparse
import json
from pathlib import Path

import numpy as np


def peer_at(records, method, speedup):
    """`method`'s PSNR at `speedup` read off its curve, or None outside its measured speed-ups."""
    points = sorted((r["speedup_wall"], r["psnr"]) for r in records if r["method"] == method and r["speedup_wall"])
    if len(points) < 2 or not points[0][0] <= speedup <= points[-1][0]:
        return None
    xs, ys = zip(*points)
    return float(np.interp(speedup, xs, ys))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="bench results files (python -m layercache bench --out ...)")
    args = parser.parse_args()
    print("| model | steps | timed pairs | budget | LayerCache wall× | PSNR dB | best peer at that speed-up | "
          "its PSNR dB | margin dB |")
    print("|---|---|---|---|---|---|---|---|---|")
    ahead = behind = unread = 0
    for path in args.files:
        found = json.loads(Path(path).read_text())
        meta, records = found["meta"], found["records"]
        peers = sorted({r["method"] for r in records} - {"uncached"})
        peers = [p for p in peers if not p.startswith("layercache")]   # ablations of LayerCache are not its peers
        for ours in (r for r in records if r["method"] == "layercache" and r["speedup_wall"]):
            read = {p: peer_at(records, p, ours["speedup_wall"]) for p in peers}
            read = {p: v for p, v in read.items() if v is not None}
            cells = f"| {meta['model']} | {ours['steps']} | {meta['repeats']} | {ours['budget']:g} | " \
                    f"{ours['speedup_wall']:.2f} | {ours['psnr']:.2f} | "
            if not read:
                unread += 1
                print(cells + "– (outside every peer's speed-ups) | – | – |")
                continue
            best = max(read, key=read.get)
            margin = ours["psnr"] - read[best]
            ahead, behind = ahead + (margin >= 0), behind + (margin < 0)
            print(cells + f"{best} | {read[best]:.2f} | {margin:+.2f} |")
    print(f"\nLayerCache at or above the best peer's curve in {ahead} cells, below in {behind}; "
          f"{unread} outside every peer's measured speed-ups")


if __name__ == "__main__":
    main()
