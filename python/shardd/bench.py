"""``python -m shardd.bench``: the Python package's fetches beside the Rust
client's, measured in the same run through the same connection.

For 64 MiB and 1 MiB shards resident in the daemon's arena (same node,
Unix socket):

* ``fetch_into`` into one preallocated array (the Rust client's
  ``fetch_into`` into one reused buffer);
* ``view``, its bytes copied into that array (the Rust client's
  ``fetch_view`` and ``copy_to``), so both read every byte once;

and 4 KiB ``get`` calls per second, one at a time (the Rust client's
``fetch``). Targets: 64 MiB at 0.9x of the Rust client or better, 4 KiB
gets at 0.5x or better. Medians of ``--runs`` runs.

    python -m shardd.bench --endpoint unix://./shardd.sock
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from . import Client, _native

MIB = 1 << 20
#: (shard size, shards, passes) per case: a working set that stays in the
#: default 1 GiB arena.
CASES = [(64 * MIB, 4, 4), (1 * MIB, 64, 8)]
SMALL = 4096


def _python_fetch_into(client: Client, ns: str, keys, rounds: int, out: np.ndarray) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            client.fetch_into(ns, key, out)
    return time.perf_counter() - start


def _python_view(client: Client, ns: str, keys, rounds: int, out: np.ndarray) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            with client.view(ns, key) as view:
                np.copyto(out, view.numpy().reshape(-1).view(np.uint8))
    return time.perf_counter() - start


def _python_gets(client: Client, ns: str, key: str, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        client.get(ns, key)
    return time.perf_counter() - start


def run(endpoint: str, runs: int = 3, small_requests: int = 20000, namespace: str = "shardd-python-bench") -> dict:
    """Runs the benchmark; returns the report (rates in bytes or requests
    per second, medians, and Python/Rust ratios)."""
    client = Client(endpoint)
    if not client.zero_copy:
        raise SystemExit(f"{endpoint}: the benchmark needs a Unix-socket endpoint of a daemon that shares its arena")
    rows = []
    try:
        for size, count, rounds in CASES:
            keys = [f"bench/{size}/{i}" for i in range(count)]
            data = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8)
            for key in keys:
                client.put(namespace, key, data)
            out = np.ones(size, np.uint8)
            total = size * count * rounds
            for name, python, rust in [
                ("fetch_into", _python_fetch_into, _native.fetch_into_loop),
                ("view + copy", _python_view, _native.view_loop),
            ]:
                py_rates, rust_rates = [], []
                for _ in range(runs):
                    rust_rates.append(total / rust(client._native, namespace, keys, rounds, size))
                    py_rates.append(total / python(client, namespace, keys, rounds, out))
                py_rate, rust_rate = statistics.median(py_rates), statistics.median(rust_rates)
                rows.append({"case": f"{name} {size // MIB} MiB", "unit": "bytes/s", "python": py_rate,
                             "rust": rust_rate, "ratio": py_rate / rust_rate})
            for key in keys:
                client.rm(namespace, key)
        client.put(namespace, "bench/small", np.ones(SMALL, np.uint8))
        py_rates, rust_rates = [], []
        for _ in range(runs):
            rust_rates.append(small_requests / _native.get_loop(client._native, namespace, "bench/small", small_requests))
            py_rates.append(small_requests / _python_gets(client, namespace, "bench/small", small_requests))
        py_rate, rust_rate = statistics.median(py_rates), statistics.median(rust_rates)
        rows.append({"case": "get 4 KiB, one at a time", "unit": "requests/s", "python": py_rate,
                     "rust": rust_rate, "ratio": py_rate / rust_rate})
        client.rm(namespace, "bench/small")
    finally:
        client.close()
    return {"endpoint": endpoint, "runs": runs, "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shardd.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="unix://./shardd.sock", help="the daemon's Unix socket")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; medians are reported")
    parser.add_argument("--small-requests", type=int, default=20000, help="4 KiB gets per run")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    report = run(args.endpoint, args.runs, args.small_requests)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"shardd Python package beside the Rust client, {args.endpoint}, medians of {args.runs} runs")
    print(f"{'case':<28} {'python':>14} {'rust':>14} {'python/rust':>12}")
    for row in report["rows"]:
        if row["unit"] == "bytes/s":
            py, rust = f"{row['python'] / 1e9:.2f} GB/s", f"{row['rust'] / 1e9:.2f} GB/s"
        else:
            py, rust = f"{row['python']:,.0f}/s", f"{row['rust']:,.0f}/s"
        print(f"{row['case']:<28} {py:>14} {rust:>14} {row['ratio']:>11.2f}x")
    print("targets: 64 MiB 0.90x or more, 4 KiB gets 0.50x or more")


if __name__ == "__main__":
    main()
