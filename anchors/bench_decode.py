"""Decode speed of a GPT with a key/value cache in PyTorch eager (one thread), the peer of
`examples/bench_decode.rs`: 6 pre-LN blocks, d_model 384, 6 heads, MLP 1536 (GELU tanh), learned
positions, vocabulary 64, batch 1. One run feeds tokens one at a time at positions 0..255 (a
256-token context), each step writing its key and value into preallocated [1, 6, 256, 64]
caches in place and attending over the rows filled so far. Reports the median over runs of
tokens per second: the median over 5 runs of wall time and of thread CPU time.

    /work/anchors_venv/bin/python anchors/bench_decode.py
"""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
try:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
except (AttributeError, OSError):
    pass

import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)
L, D, H, FF, V, CTX = 6, 384, 6, 1536, 64, 256
HD = D // H


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(D)
        self.in_proj = torch.nn.Linear(D, 3 * D)
        self.out_proj = torch.nn.Linear(D, D)
        self.norm2 = torch.nn.LayerNorm(D)
        self.linear1 = torch.nn.Linear(D, FF)
        self.linear2 = torch.nn.Linear(FF, D)

    def forward(self, x, kc, vc, pos):
        b, s, _ = x.shape
        q, k, v = self.in_proj(self.norm1(x)).split(D, dim=-1)
        q = q.view(b, s, H, HD).transpose(1, 2)
        kc[:, :, pos:pos + s] = k.view(b, s, H, HD).transpose(1, 2)
        vc[:, :, pos:pos + s] = v.view(b, s, H, HD).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, kc[:, :, :pos + s], vc[:, :, :pos + s],
                                           is_causal=s > 1)
        x = x + self.out_proj(a.transpose(1, 2).reshape(b, s, D))
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x)), approximate="tanh"))


class Gpt(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(V, D)
        self.wpe = torch.nn.Embedding(CTX, D)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
        self.ln_f = torch.nn.LayerNorm(D)
        self.head = torch.nn.Linear(D, V)

    def forward(self, tokens, pos, caches):
        s = tokens.shape[1]
        h = self.wte(tokens) + self.wpe(torch.arange(pos, pos + s))
        for blk, (kc, vc) in zip(self.blocks, caches):
            h = blk(h, kc, vc, pos)
        return self.head(self.ln_f(h))


def main():
    torch.manual_seed(0)
    model = Gpt().eval()
    caches = [(torch.zeros(1, H, CTX, HD), torch.zeros(1, H, CTX, HD)) for _ in range(L)]
    tok = torch.tensor([[1]])

    def run():
        t = tok
        with torch.inference_mode():
            for pos in range(CTX):
                logits = model(t, pos, caches)
                t = logits[:, -1:].argmax(-1)

    run()  # warm-up
    wall, cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.thread_time()
        run()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    w, c = statistics.median(wall), statistics.median(cpu)
    print(f"JSON {{\"bench\": \"decode\", \"impl\": \"torch_eager\", \"threads\": 1, "
          f"\"context\": {CTX}, \"tokens_per_s\": {CTX / w:.1f}, "
          f"\"tokens_per_cpu_s\": {CTX / c:.1f}, \"torch\": \"{torch.__version__}\"}}")


if __name__ == "__main__":
    main()
