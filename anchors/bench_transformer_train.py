"""One training step of the pre-LN transformer encoder block of
/work/shared/anchors/bench_transformer.py (seq 128, d_model 256, 4 heads of 64, MLP 1024 with
tanh GELU, LayerNorm eps 1e-5, f32) at batch 8: exactly what `examples/bench_transformer.rs`
times as `transformer_train` — forward, loss = mean(block(x)^2), backward through every param
(LayerNorm gains and biases included), one plain SGD step (lr 1e-3, no momentum).
Implementations: jax.jit of value_and_grad plus the SGD update (one jit), and PyTorch eager
(F.scaled_dot_product_attention, loss.backward(), torch.optim.SGD). With ANCHORS_INFER=1 it
runs the shared script's inference rows (jax.jit, torch eager) instead, with CPU times.
Every row has the wall median (`median_s`) and the process-CPU median (`cpu_s`).

Imports `common.py` and `bench_transformer.py` (its init and sizes) from
/work/shared/anchors (or $ANCHORS_DIR).

python3 anchors/bench_transformer_train.py    # 1 and 2 threads
"""

import os
import sys

BATCH = 8
LR = 1e-3


def run_jax(np, t, p, x, bt, emit, bench):
    import jax
    import jax.numpy as jnp
    S, D, H = bt.S, bt.D, bt.H

    q = {k: jnp.asarray(v.T if v.ndim == 2 else v) for k, v in p.items()}  # (in, out)

    def ln(x, g, b_):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-5) * g + b_

    def blk(q, x):
        B = x.shape[0]
        h = ln(x, q["ln1_g"], q["ln1_b"])
        qkv = (h @ q["wqkv"] + q["bqkv"]).reshape(B, S, 3, H, D // H)
        qq, kk, vv = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = jnp.einsum("bqhd,bkhd->bhqk", qq, kk) / jnp.sqrt(D // H).astype(x.dtype)
        a = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", a, vv).reshape(B, S, D)
        x = x + o @ q["wo"] + q["bo"]
        h = ln(x, q["ln2_g"], q["ln2_b"])
        return x + jax.nn.gelu(h @ q["w1"] + q["b1"], approximate=True) @ q["w2"] + q["b2"]

    @jax.jit
    def step(q, x):
        l, g = jax.value_and_grad(lambda q: jnp.mean(blk(q, x) ** 2))(q)
        return jax.tree_util.tree_map(lambda w, d: w - LR * d, q, g), l

    xj = jnp.asarray(x)
    st = [q]

    def run():
        st[0], l = step(st[0], xj)
        l.block_until_ready()

    emit("transformer_train", "jax.jit", t, "batch", BATCH, bench(run),
         3 * bt.block_flops(BATCH))


def run_torch(np, t, p, x, bt, emit, bench):
    import torch
    import torch.nn.functional as Fn
    torch.set_num_threads(t)
    S, D, H = bt.S, bt.D, bt.H
    tp = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in p.items()}

    def blk(x):
        B = x.shape[0]
        h = Fn.layer_norm(x, (D,), tp["ln1_g"], tp["ln1_b"], 1e-5)
        qkv = Fn.linear(h, tp["wqkv"], tp["bqkv"]).view(B, S, 3, H, D // H)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        o = Fn.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        o = o.transpose(1, 2).reshape(B, S, D)
        x = x + Fn.linear(o, tp["wo"], tp["bo"])
        h = Fn.layer_norm(x, (D,), tp["ln2_g"], tp["ln2_b"], 1e-5)
        return x + Fn.linear(Fn.gelu(Fn.linear(h, tp["w1"], tp["b1"]), approximate="tanh"),
                             tp["w2"], tp["b2"])

    xt = torch.from_numpy(x)
    opt = torch.optim.SGD(list(tp.values()), lr=LR)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = (blk(xt) ** 2).mean()
        loss.backward()
        opt.step()

    emit("transformer_train", "torch eager", t, "batch", BATCH, bench(run),
         3 * bt.block_flops(BATCH))


def main():
    import bench_transformer as bt
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
    p = bt.init(np)
    x = np.random.default_rng(1).standard_normal((BATCH, bt.S, bt.D)).astype(np.float32)
    emit_info("transformer_train", t)
    if os.environ.get("ANCHORS_INFER") == "1":
        # the shared script's inference rows, timed with the process-CPU median as well
        last = []

        def bench_wall(fn):
            w, c = bench(fn)
            last[:] = [c]
            return w

        def emit_cpu(name, impl, threads, key, size, wall, flops=None):
            emit1(name, impl, threads, key, size, wall, flops, cpu_s=last[0])

        bt.bench, bt.emit = bench_wall, emit_cpu
        for name, job in [("jax.jit", lambda: bt.run_jax(np, t, p)),
                          ("torch eager", lambda: bt.run_torch(np, t, p, "torch eager"))]:
            if wanted(args, name):
                job()
        return
    for name, job in [("jax.jit", run_jax), ("torch eager", run_torch)]:
        if not wanted(args, name):
            continue
        try:
            job(np, t, p, x, bt, emit, bench)
        except Exception as e:
            import traceback
            traceback.print_exc()
            emit_skip("transformer_train", name, t, f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.environ.get("ANCHORS_DIR", "/work/shared/anchors"))
    main()
