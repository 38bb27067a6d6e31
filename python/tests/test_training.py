"""A small training loop whose layer weights live in shardd, partitioned
across nodes and gathered layer by layer (forward, then backward again, as
ZeRO-3 does) with the trainer prefetching ahead, gives the same losses as
the same loop with its weights in memory."""

from __future__ import annotations

import pytest

import shardd

LAYERS, WIDTH, BATCH, STEPS, LR = 4, 48, 32, 6, 0.05


def step(torch, weights, update, x, target):
    """One step of an MLP (ReLU between layers, MSE loss, SGD), computed by
    hand so that each layer's weights are needed in forward and again in
    backward order, as with ZeRO-3. ``weights(i)`` gives layer i's (w, b),
    ``update(i, w, b)`` stores its new ones; returns the loss."""
    activations = [x]
    for i in range(LAYERS):
        w, b = weights(i)
        z = activations[-1] @ w.T + b
        activations.append(torch.relu(z) if i < LAYERS - 1 else z)
    out = activations[-1]
    loss = ((out - target) ** 2).mean()
    grad = 2 * (out - target) / out.numel()
    for i in reversed(range(LAYERS)):
        w, b = weights(i)
        if i < LAYERS - 1:
            grad = grad * (activations[i + 1] > 0)
        grad_w, grad_b = grad.T @ activations[i], grad.sum(0)
        grad = grad @ w
        update(i, w - LR * grad_w, b - LR * grad_b)
    return float(loss)


def data(torch):
    gen = torch.Generator().manual_seed(7)
    init = [(torch.randn(WIDTH, WIDTH, generator=gen) * 0.2, torch.zeros(WIDTH)) for _ in range(LAYERS)]
    batches = [(torch.randn(BATCH, WIDTH, generator=gen), torch.randn(BATCH, WIDTH, generator=gen))
               for _ in range(STEPS)]
    return init, batches


def in_memory(torch):
    init, batches = data(torch)
    params = [(w.clone(), b.clone()) for w, b in init]

    def update(i, w, b):
        params[i] = (w, b)

    return [step(torch, lambda i: params[i], update, x, target) for x, target in batches]


def test_a_loop_gathering_its_layers_from_shardd_matches_the_loop_in_memory(nodes, torch):
    init, batches = data(torch)
    cluster = shardd.Cluster([n.tcp for n in nodes], local=(0, nodes[0].unix), piece_size=4096)
    for i, (w, b) in enumerate(init):
        cluster.put_partitioned("job", f"layers.{i}.weight", w)
        cluster.put_partitioned("job", f"layers.{i}.bias", b)
    trainer = shardd.Trainer(cluster, "job", depth=2)
    for i in range(LAYERS):
        trainer.add_layer(f"layer{i}", [f"layers.{i}.weight", f"layers.{i}.bias"])
    buf = torch.zeros(trainer.layer_nbytes, dtype=torch.uint8)
    trainer.lend(torch.zeros_like(buf))

    # The layer in use is copied out of the gather buffer (as a trainer
    # copies it to the GPU) before the next gather reuses the buffer.
    def weights(i):
        nonlocal buf
        buf, tensors = trainer.gather(f"layer{i}", buf)
        return tensors[f"layers.{i}.weight"].clone(), tensors[f"layers.{i}.bias"].clone()

    def update(i, w, b):
        cluster.put_partitioned("job", f"layers.{i}.weight", w)
        cluster.put_partitioned("job", f"layers.{i}.bias", b)

    losses = []
    for x, target in batches:
        losses.append(step(torch, weights, update, x, target))
        trainer.end_step()

    assert losses == in_memory(torch)
    assert losses[-1] < losses[0], "the loop learns"
    # After the first (recording) step, hints ran ahead of every gather.
    assert [s["replayed"] for s in trainer.steps()] == [False] + [True] * (STEPS - 1)
    assert all(d.process.poll() is None for d in nodes)
