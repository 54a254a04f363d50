"""TwoNN, ours against scikit-dimension's, side by side in one process on the same data (issue 31).

Gaussian points (`--points` x `--features`, float32, seed 0), both estimators on one thread (torch's
and, through threadpoolctl, the BLAS scikit-learn calls), after one warm-up fit each on 200 points
(first-call costs); then `--repeats` rounds, each fitting ours and then theirs, timed by CPU time
(time.process_time) and wall time. Prints every round, the medians, the ratio of the medians
(scikit-dimension over ours) and both estimates with their difference. Goal (issue 31): at 10000 x
768 ours at least 2x faster, the estimates within 1e-6 (relative) of each other.

    OMP_NUM_THREADS=1 python scripts/bench_twonn.py [--points 10000] [--features 768] [--repeats 5] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skdim
import torch
from threadpoolctl import threadpool_limits

from ecoflap_exp.scoring.id_estimators import twonn


def timed(fit: Callable[[], float]) -> tuple[float, float, float]:
    """(estimate, CPU seconds, wall seconds) of one fit."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fit()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--features", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.points, args.features)).astype(np.float32)
    fits: dict[str, Callable[[np.ndarray], float]] = {
        "ours": lambda data: twonn(torch.from_numpy(data)),
        "skdim": lambda data: float(skdim.id.TwoNN().fit(data).dimension_),
    }
    rounds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in fits}
    with threadpool_limits(1):
        warm = rng.standard_normal((200, args.features)).astype(np.float32)
        for fit in fits.values():
            fit(warm)
        for r in range(args.repeats):
            for name, fit in fits.items():  # alternating, so both see the same load on a shared machine
                rounds[name].append(timed(lambda fit=fit: fit(X)))
            print(f"round {r + 1}: " + ", ".join(f"{name} {runs[-1][1]:.3f} s CPU ({runs[-1][2]:.3f} s wall)"
                                               for name, runs in rounds.items()), flush=True)
    cpu = {name: statistics.median(run[1] for run in runs) for name, runs in rounds.items()}
    wall = {name: statistics.median(run[2] for run in runs) for name, runs in rounds.items()}
    ours, theirs = rounds["ours"][-1][0], rounds["skdim"][-1][0]
    result = {"points": args.points, "features": args.features, "repeats": args.repeats, "threads": 1,
              "ours_cpu_s": cpu["ours"], "skdim_cpu_s": cpu["skdim"], "ours_wall_s": wall["ours"],
              "skdim_wall_s": wall["skdim"], "cpu_ratio": cpu["skdim"] / cpu["ours"],
              "wall_ratio": wall["skdim"] / wall["ours"], "ours": ours, "skdim": theirs,
              "relative_difference": abs(ours - theirs) / abs(theirs)}
    print(f"TwoNN on {args.points} x {args.features} float32 Gaussian points, one thread, median of {args.repeats}:")
    print(f"  ours  {cpu['ours']:.3f} s CPU ({wall['ours']:.3f} s wall), estimate {ours!r}")
    print(f"  skdim {cpu['skdim']:.3f} s CPU ({wall['skdim']:.3f} s wall), estimate {theirs!r}")
    print(f"  scikit-dimension / ours: {result['cpu_ratio']:.2f}x CPU, {result['wall_ratio']:.2f}x wall; "
          f"estimates differ by {result['relative_difference']:.1e} (relative)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
