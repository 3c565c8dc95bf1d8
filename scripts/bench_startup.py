"""Where a run's start-up goes: starting the local Ray instance, then creating the actors and
waiting until every one has loaded its model, for Ray's defaults and for Ray without idle
workers started ahead (the raylet otherwise starts one Python worker per CPU when the driver
connects, which on a small machine compete with the actors' own start for the cores).

    python scripts/bench_startup.py                     # configs/quickstart.yaml, 3 repeats
    python scripts/bench_startup.py --config configs/grpo.yaml --repeats 5

Each repeat is a fresh process, so nothing is warm but the OS file cache (the first repeat
of the first variant warms it and is left out of the means).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "ray defaults": {},
    "no prestarted workers": {"RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"},
}

ONE = """
import json, sys, time
from alignloop.loop.roles.ray_roles import RayRoles
from alignloop.loop.roles.ray_runtime import start_ray
from alignloop.loop.config import load_config
import ray
cfg = load_config(sys.argv[1])
t0 = time.perf_counter()
start_ray(cfg.ray)
t1 = time.perf_counter()
actors = RayRoles(cfg)
actors.wait_ready()
t2 = time.perf_counter()
actors.shutdown()
ray.shutdown()
print(json.dumps({"ray_s": t1 - t0, "actors_s": t2 - t1}))
"""


def once(config: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", ONE, config],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    once(args.config, {})  # warms the file cache
    results = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # alternating, so drift in the machine's load hits both alike
        for name, env in VARIANTS.items():
            results[name].append(once(args.config, env))
    print(f"{os.cpu_count()} cores, {args.config}, mean of {args.repeats} fresh processes\n")
    print("| variant | start Ray s | actors ready s | total s |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        ray_s = sum(r["ray_s"] for r in rows) / len(rows)
        actors_s = sum(r["actors_s"] for r in rows) / len(rows)
        print(f"| {name} | {ray_s:.1f} | {actors_s:.1f} | {ray_s + actors_s:.1f} |")


if __name__ == "__main__":
    main()
