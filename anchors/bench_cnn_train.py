"""The CNN of /work/shared/anchors/bench_cnn.py (conv3x3 1->32 pad 1, ReLU, maxpool 2,
conv3x3 32->64 pad 1, ReLU, maxpool 2, linear 3136->10; f32): one training step at batch 64 —
what `examples/bench_cnn.rs` times as `cnn_train`: forward, mean cross entropy against integer
labels, backward through every param, one plain SGD step (lr 0.01). Implementations: jax.jit of
value_and_grad plus the SGD update (one jit, NHWC as the shared script), and PyTorch eager
(NCHW, loss.backward(), torch.optim.SGD). With ANCHORS_INFER=1 it runs the shared script's
inference rows (jax.jit, torch eager) instead, with CPU times. Every row has the wall median
(`median_s`) and the process-CPU median (`cpu_s`).

Imports `common.py` and `bench_cnn.py` (its init and FLOP count) from /work/shared/anchors (or
$ANCHORS_DIR).

python3 anchors/bench_cnn_train.py --threads 1
"""

import os
import sys

BATCH = 64
LR = 0.01


def labels(np):
    return (np.arange(BATCH) % 10).astype(np.int64)


def images(np):
    return np.random.default_rng(1).standard_normal((BATCH, 1, 28, 28)).astype(np.float32)


def run_jax(np, t, p, emit, bench, flops):
    import jax
    import jax.numpy as jnp
    from jax import lax

    q = {"w1": jnp.asarray(p["w1"].transpose(2, 3, 1, 0)), "b1": jnp.asarray(p["b1"]),
         "w2": jnp.asarray(p["w2"].transpose(2, 3, 1, 0)), "b2": jnp.asarray(p["b2"]),
         "w3": jnp.asarray(p["w3"].T), "b3": jnp.asarray(p["b3"])}
    dn = ("NHWC", "HWIO", "NHWC")

    def pool(y):
        return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def loss(q, x, y):
        h = lax.conv_general_dilated(x, q["w1"], (1, 1), "SAME", dimension_numbers=dn) + q["b1"]
        h = pool(jax.nn.relu(h))
        h = lax.conv_general_dilated(h, q["w2"], (1, 1), "SAME", dimension_numbers=dn) + q["b2"]
        h = pool(jax.nn.relu(h))
        logits = h.reshape(h.shape[0], -1) @ q["w3"] + q["b3"]
        lp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(lp, y[:, None], axis=1).mean()

    @jax.jit
    def step(q, x, y):
        l, g = jax.value_and_grad(loss)(q, x, y)
        return l, jax.tree_util.tree_map(lambda a, b: a - LR * b, q, g)

    x = jnp.asarray(images(np).transpose(0, 2, 3, 1))
    y = jnp.asarray(labels(np).astype(np.int32))

    def run():
        l, q2 = step(q, x, y)
        jax.block_until_ready(q2)

    emit("cnn_train", "jax.jit (NHWC)", t, "batch", BATCH, bench(run), 3 * flops(BATCH))


def run_torch(np, t, p, emit, bench, flops):
    import torch
    torch.set_num_threads(t)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3136, 10))
    with torch.no_grad():
        for layer, wk, bk in ((m[0], "w1", "b1"), (m[3], "w2", "b2"), (m[7], "w3", "b3")):
            layer.weight.copy_(torch.from_numpy(p[wk]))
            layer.bias.copy_(torch.from_numpy(p[bk]))
    opt = torch.optim.SGD(m.parameters(), lr=LR)
    x = torch.from_numpy(images(np))
    y = torch.from_numpy(labels(np))
    lossf = torch.nn.CrossEntropyLoss()

    def run():
        opt.zero_grad(set_to_none=True)
        loss = lossf(m(x), y)
        loss.backward()
        opt.step()

    emit("cnn_train", "torch eager", t, "batch", BATCH, bench(run), 3 * flops(BATCH))


def main():
    import bench_cnn as bc
    from common import emit_info, emit_skip, parse_args, pin, run_children, wanted
    from cpubench import bench2 as bench
    from common import emit as emit1

    def emit(name, impl, threads, key, size, wall_cpu, flops=None):
        # the wall median as `median_s`, the process-CPU median as `cpu_s`
        emit1(name, impl, threads, key, size, wall_cpu[0], flops, cpu_s=wall_cpu[1])
    args = parse_args()
    if args.threads is None:
        run_children(os.path.abspath(__file__))
        return
    t = args.threads
    pin(t)
    import numpy as np
    p = bc.init(np)
    emit_info("cnn_train", t)
    if os.environ.get("ANCHORS_INFER") == "1":
        # the shared script's inference rows, timed with the process-CPU median as well
        last = []

        def bench_wall(fn):
            w, c = bench(fn)
            last[:] = [c]
            return w

        def emit_cpu(name, impl, threads, key, size, wall, flops=None):
            emit1(name, impl, threads, key, size, wall, flops, cpu_s=last[0])

        bc.bench, bc.emit = bench_wall, emit_cpu
        for name, job in [("jax.jit", lambda: bc.run_jax(np, t, p)),
                          ("torch eager", lambda: bc.run_torch(np, t, p, False))]:
            if wanted(args, name):
                job()
        return
    for name, job in [("jax.jit", run_jax), ("torch eager", run_torch)]:
        if not wanted(args, name):
            continue
        try:
            job(np, t, p, emit, bench, bc.cnn_flops)
        except Exception as e:
            import traceback
            traceback.print_exc()
            emit_skip("cnn_train", name, t, f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.environ.get("ANCHORS_DIR", "/work/shared/anchors"))
    main()
