"""``python -m shardd.bench_deepspeed``: DeepSpeed-sized swap through
:class:`shardd.deepspeed.SwapHandle` beside DeepSpeed's own aio handle and
fio on the drive under ``--dir``, measured in the same run.

For each buffer size, ``--in-flight`` buffers (locked, from each handle's
``new_cpu_locked_tensor``) are swapped out with ``async_pwrite`` and one
``wait``, then swapped in with ``async_pread`` and one ``wait``:

* shardd, swap-out: write-back puts (acknowledged from the daemon's memory);
* shardd, swap-in from the arena, and cold (the shards demoted first, so
  they are read from the drive);
* DeepSpeed's aio handle on files in ``--dir`` (O_DIRECT: always the drive);
* fio sequential write and read of the same bytes in ``--dir`` (1 MiB
  blocks, O_DIRECT, io_uring, the same depth).

Each run starts with another of the three, so that none always follows
the drive traffic of another. Medians of ``--runs`` runs, in GB/s (10^9
bytes per second). Targets:
swap-in and swap-out at least DeepSpeed's aio handle, and 0.9x fio.

Then ``--train-steps`` ZeRO stage 3 training steps (``shardd.ds_train``:
parameters and optimizer state offloaded to NVMe, DeepSpeed's CPU
accelerator) through shardd and through DeepSpeed's own swap in ``--dir``,
alternated ``--runs`` times: the median seconds per step, the first step
of each run left out (it allocates and fills the swap).

    python -m shardd.bench_deepspeed --endpoint unix://./shardd.sock --dir /local/swap
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from . import Client
from .deepspeed import SwapHandle

MIB = 1 << 20


def _timed(start_all, wait) -> float:
    start = time.perf_counter()
    start_all()
    wait()
    return time.perf_counter() - start


class _Swap:
    """``count`` locked buffers of ``size`` bytes from handle ``h``, each
    swapped to its own file in ``dirname``: ``out`` and ``into`` time one
    round of ``async_pwrite`` / ``async_pread`` of all of them and one
    ``wait``."""

    def __init__(self, h, torch, size, count, dirname, prefix):
        self.h = h
        self.buffers = [h.new_cpu_locked_tensor(size, torch.empty(0, dtype=torch.uint8)) for _ in range(count)]
        for i, b in enumerate(self.buffers):
            b.fill_(i + 1)
        self.paths = [os.path.join(dirname, f"{prefix}{i}.swp") for i in range(count)]
        self.total = size * count

    def _round(self, submit) -> float:
        def start_all():
            for b, p in zip(self.buffers, self.paths):
                assert submit(b, p) == 0

        return _timed(start_all, self.h.wait)

    def out(self) -> float:
        return self._round(self.h.async_pwrite)

    def into(self) -> float:
        return self._round(self.h.async_pread)

    def free(self) -> None:
        for b in self.buffers:
            self.h.free_cpu_locked_tensor(b)


def _shardd_round(client, torch, size, count, dirname):
    h = SwapHandle(1 << 20, 8, False, True, 1, client=client, namespace="bench-deepspeed.rank0", root=dirname)
    swap = _Swap(h, torch, size, count, dirname, "b")
    write = swap.out()
    hot = swap.into()
    keys = [h.key(p) for p in swap.paths]
    # Demoting a shard not yet on the drive writes it first.
    client.evict(h.namespace, keys)
    cold = swap.into()
    client.evict(h.namespace, keys, drop=True)
    swap.free()
    h.close()
    return swap.total / write, swap.total / hot, swap.total / cold


def _deepspeed_round(op, torch, size, count, dirname):
    swap = _Swap(op.aio_handle(1 << 20, 8, False, True, 1), torch, size, count, dirname, "ds")
    write = swap.out()
    read = swap.into()
    swap.free()
    for p in swap.paths:
        os.unlink(p)
    return swap.total / write, swap.total / read


def _fio(dirname, size, count, rw):
    path = os.path.join(dirname, "fio.dat")
    done = subprocess.run(
        ["fio", "--name=swap", f"--filename={path}", f"--size={size * count}", f"--rw={rw}", "--bs=1M",
         "--direct=1", "--ioengine=io_uring", "--iodepth=8", "--output-format=json"],
        capture_output=True, text=True, check=True,
    )
    job = json.loads(done.stdout)["jobs"][0]
    side = job["read" if rw == "read" else "write"]
    return side["io_bytes"] / (side["runtime"] / 1000.0)


def _train(nvme, endpoint, namespace, steps, width, layers):
    command = [sys.executable, "-m", "shardd.ds_train", "--nvme", nvme, "--steps", str(steps),
               "--width", str(width), "--layers", str(layers), "--namespace", namespace]
    if endpoint:
        command += ["--endpoint", endpoint]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training run failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train_rows(args, client):
    """Median seconds per step (after the first) through shardd and through
    DeepSpeed's own swap, and whether their losses agreed."""
    shardd_steps, own_steps, same = [], [], True
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            namespace = f"bench-train-{os.getpid()}-{run}"
            through = _train(os.path.join(d, "shardd"), args.endpoint, namespace, args.train_steps,
                             args.train_width, args.train_layers)
            own = _train(os.path.join(d, "own"), None, namespace, args.train_steps, args.train_width,
                         args.train_layers)
            keys = [m.key for m in client.ls(f"{namespace}.rank0")]
            client.evict(f"{namespace}.rank0", keys, drop=True)
        shardd_steps += through["step_seconds"][1:]
        own_steps += own["step_seconds"][1:]
        same = same and through["losses"] == own["losses"]
    return statistics.median(shardd_steps), statistics.median(own_steps), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="unix://./shardd.sock")
    parser.add_argument("--dir", default=".", help="where DeepSpeed's and fio's files go (the drive to compare)")
    parser.add_argument("--sizes", default="64,256", help="buffer sizes in MiB, comma-separated")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=4,
                        help="training steps per run, at least 2 (the first is left out); 0: no training rows")
    parser.add_argument("--train-width", type=int, default=4096, help="the model's layer width")
    parser.add_argument("--train-layers", type=int, default=4)
    args = parser.parse_args()
    if args.train_steps == 1 or args.train_steps < 0:
        parser.error("--train-steps: 0, or at least 2 (the first step of each run is left out)")
    # DeepSpeed builds its ops with the environment's ninja.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

    import torch

    try:
        from deepspeed.ops.op_builder import AsyncIOBuilder

        op = AsyncIOBuilder().load(verbose=False)
    except Exception as e:  # noqa: BLE001 - the baseline is optional
        op = None
        print(f"DeepSpeed's aio handle is not available ({e}): its columns are left out")
    has_fio = shutil.which("fio") is not None
    if not has_fio:
        print("fio is not installed: its columns are left out")

    client = Client(args.endpoint)
    rows = []
    for mib in (int(s) for s in args.sizes.split(",")):
        size = mib * MIB
        samples = {k: [] for k in ("out", "in_hot", "in_cold", "ds_out", "ds_in", "fio_write", "fio_read")}
        def through_shardd(d):
            o, hot, cold = _shardd_round(client, torch, size, args.in_flight, d)
            samples["out"].append(o)
            samples["in_hot"].append(hot)
            samples["in_cold"].append(cold)

        def through_deepspeed(d):
            w, r = _deepspeed_round(op, torch, size, args.in_flight, d)
            samples["ds_out"].append(w)
            samples["ds_in"].append(r)

        def with_fio(d):
            samples["fio_write"].append(_fio(d, size, args.in_flight, "write"))
            samples["fio_read"].append(_fio(d, size, args.in_flight, "read"))

        phases = [through_shardd] + ([through_deepspeed] if op is not None else []) + ([with_fio] if has_fio else [])
        for run in range(args.runs):
            # Each run starts with another of them, so that none always
            # follows (or always precedes) the drive traffic of another.
            turn = run % len(phases)
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                for phase in phases[turn:] + phases[:turn]:
                    phase(d)
        rows.append((mib, {k: statistics.median(v) / 1e9 if v else None for k, v in samples.items()}))

    print(f"swap of {args.in_flight} buffers in flight, medians of {args.runs} runs, GB/s; files in {args.dir}")
    print(f"{'buffer':>8} {'out':>7} {'in hot':>7} {'in cold':>8} {'ds out':>7} {'ds in':>7} "
          f"{'fio wr':>7} {'fio rd':>7}  {'in cold/ds':>10} {'in cold/fio':>11} {'out/ds':>7}")
    for mib, m in rows:
        def f(v):
            return f"{v:7.2f}" if v is not None else "     - "

        def ratio(a, b):
            return f"{a / b:.2f}x" if a is not None and b else "-"

        print(f"{mib:>5}MiB {f(m['out'])} {f(m['in_hot'])} {f(m['in_cold']):>8} {f(m['ds_out'])} {f(m['ds_in'])} "
              f"{f(m['fio_write'])} {f(m['fio_read'])}  {ratio(m['in_cold'], m['ds_in']):>10} "
              f"{ratio(m['in_cold'], m['fio_read']):>11} {ratio(m['out'], m['ds_out']):>7}")

    if args.train_steps and op is not None:
        through, own, same = _train_rows(args, client)
        swapped = 4 * args.train_width * args.train_width * args.train_layers
        print(f"ZeRO-3 step, {args.train_layers} layers of {args.train_width}x{args.train_width} "
              f"(fp32 parameters {swapped / 1e6:.0f} MB), {args.train_steps} steps x {args.runs} runs, "
              f"median seconds per step: shardd {through:.3f}, DeepSpeed's own swap {own:.3f} "
              f"(shardd's speed {own / through:.2f}x); losses {'equal' if same else 'DIFFER'}")
    elif args.train_steps:
        print("training rows left out: DeepSpeed's aio handle is not available for the baseline")


if __name__ == "__main__":
    main()
