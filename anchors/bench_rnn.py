"""The Elman RNN of `examples/recurrent.rs` / `examples/bench_rnn.rs`, f32: B 32, T 24, one
input feature, hidden 32, a Linear(1) head per step.
    h_0 = 0;  h_t = tanh(W h_{t-1} + b_W + U x_t + b_U);  y_t = V h_t + c
    loss = mean((y - ys)^2)
Inference (the stacked predictions) and one training step (forward, loss, backward, one Adam
step at lr 0.01, betas (0.9, 0.999), eps 1e-8, as `mithril::rt::optim::Adam`).
Implementations: jax.jit of a `lax.scan` (the training step's value_and_grad and Adam update
inside the one jit), and PyTorch eager (a Python loop over the steps, torch.optim.Adam).

Imports `common.py` from /work/shared/anchors (or $ANCHORS_DIR).

python3 anchors/bench_rnn.py    # 1 thread, ANCHORS_PROCS processes
"""

import os
import sys

B, T, H = 32, 24, 32
LR = 0.01


def init(np):
    rng = np.random.default_rng(0)
    u = lambda fan_in, *s: rng.uniform(-fan_in ** -0.5, fan_in ** -0.5, s).astype(np.float32)  # noqa: E731
    return {"w": u(H, H, H), "bw": u(H, H), "u": u(1, H, 1), "bu": u(1, H),
            "v": u(H, 1, H), "c": u(H, 1)}  # weights (out, in), as Linear


def data(np):
    i = np.arange(B, dtype=np.float32)[:, None]
    k = np.arange(T + 1, dtype=np.float32)[None, :]
    s = np.sin(0.3 * k + 0.1 * i).astype(np.float32)
    return s[:, :T, None].copy(), s[:, 1:, None].copy()


def run_jax(np, t, p, xs, ys, emit, bench):  # bench: cpubench.bench2
    import jax
    import jax.numpy as jnp

    q = {k: jnp.asarray(v) for k, v in p.items()}
    xs_, ys_ = jnp.asarray(xs), jnp.asarray(ys)

    def fwd(q, xs):
        def cell(h, x):
            h = jnp.tanh(h @ q["w"].T + q["bw"] + x @ q["u"].T + q["bu"])
            return h, h @ q["v"].T + q["c"]
        h0 = jnp.zeros((xs.shape[0], H), xs.dtype)
        _, ys = jax.lax.scan(cell, h0, jnp.swapaxes(xs, 0, 1))
        return jnp.swapaxes(ys, 0, 1)

    infer = jax.jit(fwd)

    def loss(q, xs, ys):
        return jnp.mean((fwd(q, xs) - ys) ** 2)

    @jax.jit
    def train(q, m, v, n, xs, ys):
        l, g = jax.value_and_grad(loss)(q, xs, ys)
        n = n + 1
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        c1, c2 = 1 - 0.9 ** n, 1 - 0.999 ** n
        q = jax.tree_util.tree_map(
            lambda w, a, b: w - LR * (a / c1) / (jnp.sqrt(b / c2) + 1e-8), q, m, v)
        return q, m, v, n, l

    emit("rnn_infer", "jax.jit", t, "batch", B, bench(lambda: infer(q, xs_).block_until_ready()))
    st = [q, jax.tree_util.tree_map(jnp.zeros_like, q), jax.tree_util.tree_map(jnp.zeros_like, q),
          jnp.float32(0.0)]

    def step():
        st[0], st[1], st[2], st[3], l = train(*st, xs_, ys_)
        l.block_until_ready()

    emit("rnn_train", "jax.jit", t, "batch", B, bench(step))


def run_torch(np, t, p, xs, ys, emit, bench):  # bench: cpubench.bench2
    import torch
    torch.set_num_threads(t)
    q = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in p.items()}
    xs_, ys_ = torch.from_numpy(xs), torch.from_numpy(ys)
    F = torch.nn.functional

    def fwd(xs):
        h = torch.zeros(xs.shape[0], H)
        out = []
        for k in range(xs.shape[1]):
            h = torch.tanh(F.linear(h, q["w"], q["bw"]) + F.linear(xs[:, k], q["u"], q["bu"]))
            out.append(F.linear(h, q["v"], q["c"]))
        return torch.stack(out, 1)

    def infer():
        with torch.inference_mode():
            return fwd(xs_)

    emit("rnn_infer", "torch eager", t, "batch", B, bench(infer))
    opt = torch.optim.Adam(list(q.values()), lr=LR)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ((fwd(xs_) - ys_) ** 2).mean()
        loss.backward()
        opt.step()

    emit("rnn_train", "torch eager", t, "batch", B, bench(step))


def main():
    from common import emit_info, emit_skip, parse_args, pin, run_children, wanted
    from cpubench import bench2 as bench
    from common import emit as emit1

    def emit(name, impl, threads, key, size, wall_cpu, flops=None):
        # the wall median as `median_s`, the process-CPU median as `cpu_s`
        emit1(name, impl, threads, key, size, wall_cpu[0], flops, cpu_s=wall_cpu[1])
    args = parse_args()
    if args.threads is None:
        run_children(os.path.abspath(__file__), thread_counts=(1,))
        return
    t = args.threads
    pin(t)
    import numpy as np
    p = init(np)
    xs, ys = data(np)
    emit_info("rnn", t)
    for name, job in [("jax.jit", run_jax), ("torch eager", run_torch)]:
        if not wanted(args, name):
            continue
        try:
            job(np, t, p, xs, ys, emit, bench)
        except Exception as e:
            import traceback
            traceback.print_exc()
            emit_skip("rnn", name, t, f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.environ.get("ANCHORS_DIR", "/work/shared/anchors"))
    main()
