"""Rule-engine benchmark: 100,000 tags with the preset rule mix, batches of 100,000 readings.

Builds a plant of N copies of the demo tank farm (81 tags each, renamed), compiles the shipped
presets (alarm_rules/gas-detectors.yaml, process-defaults.yaml) and the demo rules, and feeds
one reading per tag per batch (normal operation with noise and a few excursions). Reports the
median time per batch on one core, readings per second, the ratio to the plain reference
implementation (tests/alarm_reference.py, timed on a smaller plant in the same run and scaled
per reading), and the engine's memory for 1,000,000 tags. Last line: one JSON object.

The engine and the reference are measured alike: the first ``--warmup`` batches of each are run
but not counted, the garbage collector is collected and then disabled while each is timed, and
each figure is the median per batch. The engine's median with the collector left on is reported
too (``median_ms_per_batch_gc_on``), and so is the CPU time of the benchmark's thread for engine
and reference (``median_cpu_ms_per_batch``, ``speedup_vs_reference_cpu``): on a busy machine the
wall time includes the time other processes held the core.

    .venv/bin/python bench/engine.py [--tags 100000] [--batches 60] [--warmup 5]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from alarm_reference import ReferenceEngine  # noqa: E402
from hazmon.alarms.compiler import CompiledRules, compile_rules, load_rules  # noqa: E402
from hazmon.alarms.engine import AlarmEngine  # noqa: E402
from hazmon.errors import read_yaml  # noqa: E402
from hazmon.plant.site import Site, parse_site  # noqa: E402
from hazmon.plant.tag import TagIndex  # noqa: E402
from hazmon.reading import ReadingBatch  # noqa: E402

RULE_FILES = [ROOT / "alarm_rules" / f for f in ("gas-detectors.yaml", "process-defaults.yaml", "demo-tank-farm.yaml")]
S = 1_000_000


def plant(units: int) -> Site:
    """``units`` renamed copies of the demo tank farm in one site."""
    demo = read_yaml(ROOT / "sites" / "demo-tank-farm.yaml")
    data = copy.deepcopy(demo)
    data["installations"] = demo["installations"]
    data["equipment"], data["tags"] = [], []
    for u in range(units):
        p = f"U{u:05d}-"
        for e in demo["equipment"]:
            e2 = dict(e, id=p + e["id"])
            if e.get("in_service_tag"):
                e2["in_service_tag"] = p + e["in_service_tag"]
            data["equipment"].append(e2)
        for t in demo["tags"]:
            data["tags"].append(dict(t, id=p + t["id"], equipment=p + t["equipment"]))
    return parse_site(data, "<bench plant>")


def normal_values(site: Site, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per tag: a normal operating value and a noise amplitude."""
    base, noise = [], []
    normal_state = {"sis_trip": 0.0, "esd_valve": 1.0, "in_service": 1.0, "pump": 1.0}
    for t in site.tags:
        if t.range is None:
            base.append(normal_state.get(str(t.signal), 0.0))
            noise.append(0.0)
        elif t.kind == "gas":
            base.append(1.0)
            noise.append(0.5)
        else:
            lo, hi = t.range
            base.append(lo + (hi - lo) * rng.uniform(0.3, 0.7))
            noise.append((hi - lo) * 0.001)
    return np.array(base), np.array(noise)


def batches(site: Site, n_batches: int, rng: np.random.Generator) -> list[ReadingBatch]:
    n = len(site.tags)
    base, noise = normal_values(site, rng)
    gas = np.array([i for i, t in enumerate(site.tags) if t.kind == "gas"])
    leaks = rng.choice(gas, size=max(1, len(gas) // 1000), replace=False)
    out = []
    t0 = 1_700_000_000 * S
    for b in range(n_batches):
        keys = rng.permutation(n).astype(np.int32)
        value = base[keys] + rng.normal(0.0, 1.0, n) * noise[keys]
        spikes = rng.random(n) < 0.0005  # a few one-sample spikes per batch (filtered by on-delays)
        value[spikes] *= 3.0
        value[np.isin(keys, leaks)] = 30.0  # a few gas leaks: real alarms (latched, no on-delay)
        out.append(
            ReadingBatch.from_columns(keys, t0 + b * S + rng.integers(0, S // 2, n), value, np.zeros(n, np.uint8))
        )
    return out


def timed(run: Any, gc_off: bool = True) -> Any:
    """Run ``run()`` with the garbage collector collected and disabled (or left on)."""
    gc.collect()
    if gc_off:
        gc.disable()
    try:
        return run()
    finally:
        gc.enable()


def time_engine(compiled: CompiledRules, data: list[ReadingBatch]) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds per batch (CPU time: this thread only, less disturbed by a busy machine)."""
    engine = AlarmEngine(compiled)
    events = 0
    times, cpu = [], []
    for batch in data:
        t, c = time.perf_counter(), time.thread_time()
        events += len(engine.process(batch))
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return times, cpu, events


def time_repeats(compiled: CompiledRules, data: list[ReadingBatch]) -> float:
    """Median ms for batches of the same size where every tag of half the plant reads twice."""
    engine = AlarmEngine(compiled)
    times = []
    for batch in data:
        half = batch.take(np.flatnonzero(batch.tag < compiled.rows // 2))
        doubled = ReadingBatch.concat([half, ReadingBatch(half.tag, half.ts + 1000, half.value, half.quality)])
        t = time.perf_counter()
        engine.process(doubled)
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:] or times) * 1e3


def time_tick(compiled: CompiledRules, data: list[ReadingBatch]) -> float:
    engine = AlarmEngine(compiled)
    times = []
    for batch in data:
        engine.process(batch)
        t = time.perf_counter()
        engine.tick(int(batch.ts.max()))
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:] or times) * 1e3


def time_reference(compiled: CompiledRules, data: list[ReadingBatch], warmup: int) -> tuple[float, float]:
    """Wall and CPU seconds per reading: the median batch after ``warmup`` batches, like the engine."""
    ref = ReferenceEngine(compiled)
    times, cpu = [], []
    for batch in data:
        t, c = time.perf_counter(), time.thread_time()
        ref.process(batch)
        times.append((time.perf_counter() - t) / len(batch))
        cpu.append((time.thread_time() - c) / len(batch))
    return statistics.median(times[warmup:] or times), statistics.median(cpu[warmup:] or cpu)


def tile(compiled: CompiledRules, times: int) -> CompiledRules:
    """The same rules for ``times`` as many tags (arrays repeated), to measure memory at scale."""
    n = compiled.rows
    out = copy.copy(compiled)
    for name, v in vars(compiled).items():
        if isinstance(v, np.ndarray) and v.shape[:1] == (n,):
            setattr(out, name, np.concatenate([v] * times))
    out.tag_ids = [f"{t}#{i}" for i in range(times) for t in compiled.tag_ids]
    out.kinds = compiled.kinds * times
    out.state_names = compiled.state_names * times
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=100_000)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5, help="batches run but not counted (engine and reference)")
    ap.add_argument("--memory-tags", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    units = max(1, round(args.tags / 81))
    t = time.perf_counter()
    site = plant(units)
    index = TagIndex.from_sites([site])
    rule_set = load_rules(RULE_FILES)
    compiled = compile_rules(rule_set, [site], index)
    compile_s = time.perf_counter() - t
    n = len(site.tags)
    print(f"plant: {n} tags ({units} tank farms), compiled in {compile_s:.1f} s", file=sys.stderr)

    data = batches(site, args.batches, rng)
    warm = args.warmup
    times, cpu, events = timed(partial(time_engine, compiled, data))
    steady = times[warm:] or times
    median_ms = statistics.median(steady) * 1e3
    per_reading_engine = statistics.median(steady) / n
    cpu_ms = statistics.median(cpu[warm:] or cpu) * 1e3
    gc_on_times, _, _ = timed(partial(time_engine, compiled, data), gc_off=False)
    gc_on_ms = statistics.median(gc_on_times[warm:] or gc_on_times) * 1e3
    print(
        f"engine: median {median_ms:.2f} ms per batch of {n} (CPU {cpu_ms:.2f} ms; {gc_on_ms:.2f} ms with the "
        "collector on), "
        f"{events} events; {warm} warm-up batches not counted",
        file=sys.stderr,
    )
    repeat_ms = time_repeats(compiled, data[:15])
    tick_ms = time_tick(compiled, data[:15])
    print(f"engine: {repeat_ms:.2f} ms per batch with every tag twice; tick {tick_ms:.2f} ms", file=sys.stderr)

    small_units = 25
    small = plant(small_units)
    small_compiled = compile_rules(rule_set, [small], TagIndex.from_sites([small]))
    small_data = batches(small, 20 + warm, np.random.default_rng(2))
    per_reading_ref, cpu_per_reading_ref = timed(partial(time_reference, small_compiled, small_data, warm))
    ratio = per_reading_ref / per_reading_engine
    cpu_ratio = cpu_per_reading_ref / (cpu_ms / 1e3 / n)
    print(
        f"reference: {per_reading_ref * 1e6:.1f} µs per reading (CPU {cpu_per_reading_ref * 1e6:.1f} µs); "
        f"engine {ratio:.0f}x faster (CPU time: {cpu_ratio:.0f}x)",
        file=sys.stderr,
    )

    times_1m = max(1, round(args.memory_tags / n))
    del data
    gc.collect()
    tracemalloc.start()
    big = tile(compiled, times_1m)
    engine = AlarmEngine(big)
    engine.process(batches(site, 1, rng)[0])
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    array_bytes = engine.nbytes()
    print(
        f"memory for {big.rows} tags: arrays {array_bytes / 2**20:.0f} MiB, traced {current / 2**20:.0f} MiB "
        f"(peak {peak / 2**20:.0f} MiB)",
        file=sys.stderr,
    )
    result: dict[str, Any] = {
        "benchmark": "engine",
        "tags": n,
        "batch_readings": n,
        "median_ms_per_batch": round(median_ms, 3),
        "median_cpu_ms_per_batch": round(cpu_ms, 3),
        "median_ms_per_batch_gc_on": round(gc_on_ms, 3),
        "timing": f"median per batch after {warm} warm-up batches, garbage collector off, engine and reference alike",
        "readings_per_s": round(n / statistics.median(steady)),
        "reference_us_per_reading": round(per_reading_ref * 1e6, 2),
        "speedup_vs_reference": round(ratio, 1),
        "reference_cpu_us_per_reading": round(cpu_per_reading_ref * 1e6, 2),
        "speedup_vs_reference_cpu": round(cpu_ratio, 1),
        "memory_tags": big.rows,
        "memory_array_mib": round(array_bytes / 2**20, 1),
        "memory_traced_mib": round(current / 2**20, 1),
        "memory_peak_mib": round(peak / 2**20, 1),
        "median_ms_per_batch_tags_twice": round(repeat_ms, 3),
        "median_ms_per_tick": round(tick_ms, 3),
        "compile_s": round(compile_s, 2),
        "events": events,
        "targets": {"median_ms_per_batch": 5.0, "speedup_vs_reference": 100, "memory_mib_1m_tags": 1024},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
