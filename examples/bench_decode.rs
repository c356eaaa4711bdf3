//! Decode speed of a GPT with a key/value cache: 6 `CachedTransformerBlock`s (d_model 384, 6
//! heads of 64, MLP 1536 with tanh GELU), learned positions, vocabulary 64, batch 1, f32. One run
//! feeds tokens one at a time at positions 0..255 (a 256-token context; greedy, each token the
//! argmax of the last logits), the 12 caches `[1, 6, 256, 64]` donated to each call and written in
//! place. The peer is `anchors/bench_decode.py` (the same model in PyTorch eager with its own
//! preallocated caches). Prints tokens per second: the median over runs of wall time and of
//! thread CPU time.
//!
//! `MITHRIL_THREADS=1 taskset -c 0 cargo run --release --example bench_decode`

use mithril::prelude::*;
use mithril::rt::sample::argmax;
use ndarray::{Array2, Array4};
use std::collections::VecDeque;
use std::time::Instant;

const CTX: usize = 256;

mithril! {
    /// The GPT at positions `pos ..`, a key/value cache per layer.
    pub model Gpt6 {
        input tokens: i64[B, S];
        input pos: i64[];
        input k0: f32[B, 6, M, 64];
        input v0: f32[B, 6, M, 64];
        input k1: f32[B, 6, M, 64];
        input v1: f32[B, 6, M, 64];
        input k2: f32[B, 6, M, 64];
        input v2: f32[B, 6, M, 64];
        input k3: f32[B, 6, M, 64];
        input v3: f32[B, 6, M, 64];
        input k4: f32[B, 6, M, 64];
        input v4: f32[B, 6, M, 64];
        input k5: f32[B, 6, M, 64];
        input v5: f32[B, 6, M, 64];
        let wte = Embedding(num_embeddings = 64, dim = 384);
        let wpe = CachedPositionalEmbedding(256, 384);
        let block0 = CachedTransformerBlock(384, 6, dim_feedforward = 1536, activation = "gelu_tanh");
        let (h, k0n, v0n) = block0(wpe(wte(tokens), pos), k0, v0, pos);
        let block1 = CachedTransformerBlock(384, 6, dim_feedforward = 1536, activation = "gelu_tanh");
        let (h, k1n, v1n) = block1(h, k1, v1, pos);
        let block2 = CachedTransformerBlock(384, 6, dim_feedforward = 1536, activation = "gelu_tanh");
        let (h, k2n, v2n) = block2(h, k2, v2, pos);
        let block3 = CachedTransformerBlock(384, 6, dim_feedforward = 1536, activation = "gelu_tanh");
        let (h, k3n, v3n) = block3(h, k3, v3, pos);
        let block4 = CachedTransformerBlock(384, 6, dim_feedforward = 1536, activation = "gelu_tanh");
        let (h, k4n, v4n) = block4(h, k4, v4, pos);
        let block5 = CachedTransformerBlock(384, 6, dim_feedforward = 1536, activation = "gelu_tanh");
        let (h, k5n, v5n) = block5(h, k5, v5, pos);
        let ln_f = LayerNorm();
        let head = Linear(64);
        output logits = head(ln_f(h));
        output k0_out = k0n;
        output v0_out = v0n;
        output k1_out = k1n;
        output v1_out = v1n;
        output k2_out = k2n;
        output v2_out = v2n;
        output k3_out = k3n;
        output v3_out = v3n;
        output k4_out = k4n;
        output v4_out = v4n;
        output k5_out = k5n;
        output v5_out = v5n;
    }

    pub compile Gpt6Decode = Gpt6 { donate: [k0, v0, k1, v1, k2, v2, k3, v3, k4, v4, k5, v5], inference: true };
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One run: 256 decode steps from position 0; the caches come back for the next run.
fn run(
    m: &Gpt6Decode,
    p: &Gpt6DecodeParams,
    mut caches: Vec<Array4<f32>>,
) -> mithril::Result<Vec<Array4<f32>>> {
    let mut tok = 1i64;
    for pos in 0..CTX {
        let t = Array2::from_elem((1, 1), tok);
        let at = ndarray::arr0(pos as i64);
        let mut c: VecDeque<Array4<f32>> = caches.into();
        let o = m.evaluate_donating(
            p,
            Gpt6DecodeDonatingInputs {
                tokens: t.view(),
                pos: at.view(),
                k0: c.pop_front().unwrap(),
                v0: c.pop_front().unwrap(),
                k1: c.pop_front().unwrap(),
                v1: c.pop_front().unwrap(),
                k2: c.pop_front().unwrap(),
                v2: c.pop_front().unwrap(),
                k3: c.pop_front().unwrap(),
                v3: c.pop_front().unwrap(),
                k4: c.pop_front().unwrap(),
                v4: c.pop_front().unwrap(),
                k5: c.pop_front().unwrap(),
                v5: c.pop_front().unwrap(),
            },
        )?;
        tok = argmax(o.logits.as_slice().unwrap_or(&[]))? as i64;
        caches = vec![
            o.k0_out, o.v0_out, o.k1_out, o.v1_out, o.k2_out, o.v2_out, o.k3_out, o.v3_out,
            o.k4_out, o.v4_out, o.k5_out, o.v5_out,
        ];
    }
    Ok(caches)
}

fn main() -> mithril::Result<()> {
    let m = Gpt6Decode::new()?;
    let p = m.randomize_params(0);
    let mut caches: Vec<Array4<f32>> = (0..12).map(|_| Array4::zeros((1, 6, CTX, 64))).collect();
    caches = run(&m, &p, caches)?; // warm-up: plans the memory
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (t0, c0) = (Instant::now(), thread_cpu());
        caches = run(&m, &p, caches)?;
        cpu.push(thread_cpu() - c0);
        wall.push(t0.elapsed().as_secs_f64());
    }
    let (w, c) = (median(wall), median(cpu));
    println!(
        "JSON {{\"bench\": \"decode\", \"impl\": \"mithril\", \"threads\": {}, \"context\": {CTX}, \"tokens_per_s\": {:.1}, \"tokens_per_cpu_s\": {:.1}}}",
        mithril::rt::threads::num_threads(),
        CTX as f64 / w,
        CTX as f64 / c
    );
    Ok(())
}
