"""`bench2(fn)`: common.py's `bench` (median over REPS runs of the mean time per call, each run
looping `fn` for at least MIN_RUN_S after warm-up), returning both the wall-clock and the
process-CPU median seconds per call. On a shared, loaded machine the CPU time (all threads of
this process, which is pinned to its cores) is the number to compare; the wall time is kept."""

import math
import statistics
import time

from common import MIN_RUN_S, REPS, WARMUP


def bench2(fn, reps=None, min_run_s=None, warmup=WARMUP):
    reps = reps or REPS
    min_run_s = MIN_RUN_S if min_run_s is None else min_run_s
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, math.ceil(min_run_s / one))
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn()
        cpu.append((time.process_time() - c0) / inner)
        wall.append((time.perf_counter() - t0) / inner)
    return statistics.median(wall), statistics.median(cpu)
