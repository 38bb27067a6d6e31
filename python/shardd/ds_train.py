"""``python -m shardd.ds_train``: a few ZeRO stage 3 training steps of a
small model with parameters and optimizer state offloaded to NVMe, on
DeepSpeed's CPU accelerator (gloo, bf16): through DeepSpeed's own file
swap, or through shardd (``--endpoint``). Prints one JSON line: the losses
and the seconds of each step, and the files left under ``--nvme``.

One process per run (DeepSpeed and torch.distributed keep global state):
the DeepSpeed tests and ``python -m shardd.bench_deepspeed --train-steps``
run it as a child.

    python -m shardd.ds_train --nvme DIR [--endpoint unix://...] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nvme", required=True, help="nvme_path of the DeepSpeed configuration")
    parser.add_argument("--endpoint", help="swap through the shardd daemon there (else DeepSpeed's own files)")
    parser.add_argument("--namespace", default="dstest")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checkpoint", help="a directory to save a checkpoint in, or load one from")
    parser.add_argument("--save-after", type=int, help="save a checkpoint after this many steps")
    parser.add_argument("--load", action="store_true", help="load the checkpoint first")
    parser.add_argument("--first-step", type=int, default=0, help="the step the inputs start at")
    args = parser.parse_args()

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    import torch

    if args.endpoint:
        import shardd.deepspeed

        shardd.deepspeed.install(endpoint=args.endpoint, namespace=args.namespace, nvme_path=args.nvme)

    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(1234)

    width = args.width
    config = {
        "train_batch_size": 4,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
        "zero_optimization": {
            "stage": 3,
            "offload_param": {
                "device": "nvme",
                "nvme_path": args.nvme,
                "pin_memory": False,
                "buffer_count": 2 * args.layers + 4,
                "buffer_size": width * width,
                "max_in_cpu": 0,
            },
            "offload_optimizer": {
                "device": "nvme",
                "nvme_path": args.nvme,
                "pin_memory": False,
                "buffer_count": 4,
                "fast_init": False,
            },
            "stage3_param_persistence_threshold": 0,
            "stage3_max_live_parameters": width * width,
            "stage3_prefetch_bucket_size": width * width,
            "sub_group_size": width * width,
        },
        "aio": {
            "block_size": 1048576,
            "queue_depth": 8,
            "single_submit": False,
            "overlap_events": True,
            "intra_op_parallelism": 1,
        },
    }

    with deepspeed.zero.Init(config_dict_or_path=config, remote_device="nvme", pin_memory=False):
        layers = []
        for _ in range(args.layers):
            layers += [torch.nn.Linear(width, width, bias=False), torch.nn.GELU()]
        model = torch.nn.Sequential(*layers)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)

    if args.load:
        engine.load_checkpoint(args.checkpoint, tag="ckpt")

    total = args.first_step + args.steps
    generator = torch.Generator().manual_seed(99)
    inputs = torch.randn(total, 4, width, generator=generator)
    targets = torch.randn(total, 4, width, generator=generator)
    losses = []
    step_seconds = []
    for step in range(args.first_step, total):
        start = time.perf_counter()
        out = engine(inputs[step].to(torch.bfloat16))
        loss = torch.nn.functional.mse_loss(out.float(), targets[step])
        engine.backward(loss)
        engine.step()
        step_seconds.append(time.perf_counter() - start)
        losses.append(float(loss))
        if args.save_after is not None and step + 1 == args.save_after:
            engine.save_checkpoint(args.checkpoint, tag="ckpt")

    files = sorted(
        os.path.relpath(os.path.join(root, name), args.nvme)
        for root, _, names in os.walk(args.nvme)
        for name in names
    )
    print(json.dumps({"losses": losses, "files": files, "step_seconds": step_seconds}))
    sys.stdout.flush()
    # DeepSpeed's aio threads and gloo can hang an orderly interpreter exit.
    os._exit(0)


if __name__ == "__main__":
    main()
