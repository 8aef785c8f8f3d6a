"""How fast the app feels on this machine: time from Run to the first streamed step, and to the end of a
default run (both lanes, defaults from space.yaml), through a real `python app.py` server and gradio_client.

    python -m layercache app-speed [--repeats 5] [--url http://127.0.0.1:7860/]
    python -m layercache app-speed --clients 8      # a room: 8 sessions press Run at once

Without --url it starts the app on a free port (warm-up included, as a user would find it) and stops it after.
With --clients N, N sessions submit the default run together: per session, the best queue position it was told,
its wait for the first streamed step, its whole time, the steps it received and its history rows (its own only).
"""

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository, where app.py is


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app() -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("app.py did not start within 300 s")


def one_run(client, args) -> tuple[float, float, dict]:
    start = time.perf_counter()
    first = None
    for out in client.submit(*args, api_name="/run"):
        if first is None and out[0].startswith("**Step"):
            first = time.perf_counter() - start
    return first, time.perf_counter() - start, out[6]


def room(url, args, clients: int) -> list[dict]:
    """`clients` sessions submit `args` at once; what each saw."""
    from gradio_client import Client

    sessions = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
    seen = [{"rank": 0, "first_s": None, "steps": 0} for _ in sessions]

    def one(i):
        start = time.perf_counter()
        job = sessions[i].submit(*args, api_name="/run")
        while not job.done():   # the queue position the UI shows comes from these status updates
            rank = job.status().rank
            seen[i]["rank"] = max(seen[i]["rank"], rank or 0)
            if job.outputs():
                break
            time.sleep(0.05)
        for out in job:
            if out[0].startswith("**Step"):
                seen[i]["steps"] += 1
                if seen[i]["first_s"] is None:
                    seen[i]["first_s"] = time.perf_counter() - start
        seen[i].update(total_s=time.perf_counter() - start, done=out[0].startswith("**Done"),
                       history_rows=len(out[11]["data"]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def run(a):
    from gradio_client import Client

    from ..studio.space import defaults
    from .speed import machine

    d = defaults()
    args = (d["model"], d["prompt"], d["seed"], d["steps"], d["guidance"], d["budget"], d["groups"], d["max_k"],
            d["method"], d["fbc_threshold"])
    proc, url = (None, a.url) if a.url else start_app()
    if a.clients:
        try:
            Client(url, verbose=False, download_files=False).predict(*args, api_name="/run")   # warm, untimed
            seen = room(url, args, a.clients)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}; {a.clients} sessions press Run at once "
              f"({d['steps']} steps, {d['method']} at budget {d['budget']}; one run at a time on the device)")
        print("session  queue position  first step  whole run  steps  finished  history rows")
        for i, s in enumerate(seen):
            print(f"{i:7d}  {s['rank']:14d}  {s['first_s']:9.2f}s  {s['total_s']:8.2f}s  {s['steps']:5d}  "
                  f"{str(s['done']):>8}  {s['history_rows']:12d}")
        return
    try:
        client = Client(url, verbose=False, download_files=False)
        one_run(client, args)  # untimed: the first request also opens the client's connection
        results = [one_run(client, args) for _ in range(a.repeats)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    firsts, totals = [r[0] for r in results], [r[1] for r in results]
    m = results[-1][2]
    print(f"machine: {machine()} (the app itself uses LAYERCACHE_THREADS, default 1, on a CPU); "
          f"load average {os.getloadavg()[0]:.1f} (other work shares these cores)")
    print(f"default run: {d['steps']} steps, both lanes, {d['method']} at budget {d['budget']}, {d['groups']} groups")
    print(f"first streamed step after Run: median {statistics.median(firsts):.2f} s "
          f"(min {min(firsts):.2f}, max {max(firsts):.2f}; {a.repeats} runs)   target < 1 s")
    print(f"whole default run:             median {statistics.median(totals):.2f} s "
          f"(min {min(totals):.2f}, max {max(totals):.2f})   target < 10 s")
    print(f"last run: lanes uncached {m['time_uncached_s']} s, cached {m['time_cached_s']} s; "
          f"PSNR {m['psnr_db']} dB, wall speed-up {m['wall_speedup']}x, compute speed-up {m['compute_speedup']}x")
