//! Train a character-level GPT (2 pre-LN causal transformer blocks, d_model 64, 4 heads, learned
//! positions, context 64) with Adam on the Book of Genesis (King James Version, public domain,
//! `examples/data/README.md`), with a progress line; then generate text through the key/value
//! cache (`CachedTransformerBlock`, a prefill call and one call per character, the caches donated
//! and written in place), greedily and with temperature + top-k sampling from a seed.
//!
//! `cargo run --release --example train_gpt`

use mithril::prelude::*;
use mithril::rt::optim::{Adam, Optimizer};
use mithril::rt::sample::{Sampler, argmax};
use ndarray::{Array2, Array4};
use std::io::IsTerminal as _;

/// Positions the model sees (its positional table and the cache's capacity).
pub const CONTEXT: usize = 64;
const HEADS: usize = 4;
const HEAD_DIM: usize = 16;

mithril! {
    /// The GPT over a whole window: `logits[b, s]` predicts the character after `tokens[b, s]`.
    pub train CharGpt {
        input tokens: i64[B, S];
        input targets: i64[B, S];
        let wte = Embedding(num_embeddings = 64, dim = 64);
        let wpe = PositionalEmbedding(64, 64);
        let block0 = TransformerEncoderBlock(64, 4, dim_feedforward = 256, activation = "gelu_tanh", causal = true);
        let block1 = TransformerEncoderBlock(64, 4, dim_feedforward = 256, activation = "gelu_tanh", causal = true);
        let ln_f = LayerNorm();
        let head = Linear(64);
        output logits = head(ln_f(block1(block0(wpe(wte(tokens))))));
        loss cross_entropy(logits, targets).mean();
    }

    /// The same GPT at positions `pos .. pos + S`, reading and appending a key/value cache per
    /// layer (`[B, heads, M, head_dim]`): the params have the same names as `CharGpt`'s.
    pub model CharGptStep {
        input tokens: i64[B, S];
        input pos: i64[];
        input k0: f32[B, 4, M, 16];
        input v0: f32[B, 4, M, 16];
        input k1: f32[B, 4, M, 16];
        input v1: f32[B, 4, M, 16];
        let wte = Embedding(num_embeddings = 64, dim = 64);
        let wpe = CachedPositionalEmbedding(64, 64);
        let block0 = CachedTransformerBlock(64, 4, dim_feedforward = 256, activation = "gelu_tanh");
        let block1 = CachedTransformerBlock(64, 4, dim_feedforward = 256, activation = "gelu_tanh");
        let (h, k0n, v0n) = block0(wpe(wte(tokens), pos), k0, v0, pos);
        let (h, k1n, v1n) = block1(h, k1, v1, pos);
        let ln_f = LayerNorm();
        let head = Linear(64);
        output logits = head(ln_f(h));
        output k0_out = k0n;
        output v0_out = v0n;
        output k1_out = k1n;
        output v1_out = v1n;
    }

    /// The decoder: the caches are donated, so each call writes its new rows into them in place.
    pub compile CharGptDecode = CharGptStep { donate: [k0, v0, k1, v1], inference: true };
}

/// The text and its alphabet (the distinct bytes, sorted; at most 64).
pub fn corpus() -> (Vec<u8>, Vec<i64>) {
    const TEXT: &str = include_str!("data/genesis.txt");
    let mut alphabet: Vec<u8> = TEXT.bytes().collect();
    alphabet.sort_unstable();
    alphabet.dedup();
    let ids = TEXT
        .bytes()
        .map(|b| alphabet.binary_search(&b).unwrap_or(0) as i64)
        .collect();
    (alphabet, ids)
}

/// A seeded xorshift stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The generator: the decode model, its params (loaded from the trained ones by name) and the
/// caches it owns between calls.
pub struct Generator {
    model: CharGptDecode,
    params: CharGptDecodeParams,
    caches: Option<[Array4<f32>; 4]>,
    pos: usize,
}

impl Generator {
    /// A generator over trained `CharGpt` params.
    pub fn new(trained: &CharGptParams) -> mithril::Result<Self> {
        let model = CharGptDecode::new()?;
        let mut params = model.randomize_params(0);
        params.load_safetensors_bytes(&trained.to_safetensors_bytes()?)?;
        let z = || Array4::<f32>::zeros((1, HEADS, CONTEXT, HEAD_DIM));
        Ok(Generator {
            model,
            params,
            caches: Some([z(), z(), z(), z()]),
            pos: 0,
        })
    }

    /// Feeds `tokens` at the next positions (the prompt: a prefill; one token: a decode step)
    /// and returns the logits after the last one. An `Err` when the cache is full.
    pub fn feed(&mut self, tokens: &[i64]) -> mithril::Result<Vec<f32>> {
        let [k0, v0, k1, v1] = self
            .caches
            .take()
            .ok_or_else(|| mithril::Error::op("train_gpt", "the caches were lost"))?;
        let t = Array2::from_shape_vec((1, tokens.len()), tokens.to_vec())
            .map_err(|e| mithril::Error::op("train_gpt", e.to_string()))?;
        let pos = ndarray::arr0(self.pos as i64);
        let r = self.model.evaluate_donating(
            &self.params,
            CharGptDecodeDonatingInputs {
                tokens: t.view(),
                pos: pos.view(),
                k0,
                v0,
                k1,
                v1,
            },
        );
        let o = r?;
        self.caches = Some([o.k0_out, o.v0_out, o.k1_out, o.v1_out]);
        self.pos += tokens.len();
        Ok(o.logits.slice(ndarray::s![0, -1, ..]).to_vec())
    }

    /// Starts over at position 0 (the caches' old rows are simply overwritten).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Generates `n` tokens after `prompt` (`temperature = 0`: greedy; else top-`k` sampling
    /// from `sampler`). When the context is full it starts again from the last half.
    pub fn generate(
        &mut self,
        prompt: &[i64],
        n: usize,
        temperature: f32,
        k: usize,
        sampler: &mut Sampler,
    ) -> mithril::Result<Vec<i64>> {
        self.reset();
        let mut seq = prompt.to_vec();
        let mut logits = self.feed(prompt)?;
        for _ in 0..n {
            let next = sampler.sample(&logits, temperature, k)? as i64;
            seq.push(next);
            if self.pos == CONTEXT {
                self.reset();
                let from = seq.len() - CONTEXT / 2;
                logits = self.feed(&seq[from..])?;
            } else {
                logits = self.feed(&[next])?;
            }
        }
        Ok(seq[prompt.len()..].to_vec())
    }
}

/// Greedy decoding by the full-sequence model: each step recomputes every position.
pub fn greedy_full(
    model: &CharGpt,
    params: &CharGptParams,
    prompt: &[i64],
    n: usize,
) -> mithril::Result<Vec<i64>> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let t = Array2::from_shape_vec((1, seq.len()), seq.clone())
            .map_err(|e| mithril::Error::op("train_gpt", e.to_string()))?;
        let o = model.evaluate(
            params,
            CharGptInputs {
                tokens: t.view(),
                targets: t.view(),
            },
        )?;
        let last = o.logits.slice(ndarray::s![0, -1, ..]).to_vec();
        seq.push(argmax(&last)? as i64);
    }
    Ok(seq[prompt.len()..].to_vec())
}

/// What [`train`] reports.
pub struct Report {
    /// Mean loss (nats per character) of the first and the last 10% of the steps.
    pub loss: (f64, f64),
    pub params: CharGptParams,
    pub model: CharGpt,
    pub alphabet: Vec<u8>,
}

/// Trains for `steps` steps of `batch` random windows of `seq` characters (Adam, lr 3e-3).
pub fn train(steps: usize, batch: usize, seq: usize, verbose: bool) -> mithril::Result<Report> {
    let (alphabet, ids) = corpus();
    let model = CharGpt::new()?;
    let mut params = model.randomize_params(1);
    let mut opt = Adam::new(3e-3);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let tty = verbose && std::io::stderr().is_terminal();
    let tenth = (steps / 10).max(1);
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..steps {
        let mut x = Array2::<i64>::zeros((batch, seq));
        let mut y = Array2::<i64>::zeros((batch, seq));
        for b in 0..batch {
            let at = (rng.next() % (ids.len() - seq - 1) as u64) as usize;
            for s in 0..seq {
                x[[b, s]] = ids[at + s];
                y[[b, s]] = ids[at + s + 1];
            }
        }
        let (out, grads) = model.evaluate_gradients(
            &params,
            CharGptInputs {
                tokens: x.view(),
                targets: y.view(),
            },
        )?;
        let l = out.loss.into_scalar() as f64;
        if step < tenth {
            first += l / tenth as f64;
        }
        if step >= steps - tenth {
            last += l / tenth as f64;
        }
        opt.step(&mut params, &grads)?;
        if tty {
            eprint!("\rstep {:5}/{steps}, loss {l:.3}", step + 1);
        } else if verbose && (step + 1) % 100 == 0 {
            println!("step {:5}/{steps}: loss {l:.3}", step + 1);
        }
    }
    if tty {
        eprintln!();
    }
    Ok(Report {
        loss: (first, last),
        params,
        model,
        alphabet,
    })
}

fn text(alphabet: &[u8], ids: &[i64]) -> String {
    ids.iter()
        .map(|&i| alphabet.get(i as usize).copied().unwrap_or(b'?') as char)
        .collect()
}

pub fn main() -> mithril::Result<()> {
    let t0 = std::time::Instant::now();
    let r = train(1500, 16, CONTEXT, true)?;
    println!(
        "loss {:.3} -> {:.3} nats/char (mean of the first and last 10% of 1500 steps), {:.0} s",
        r.loss.0,
        r.loss.1,
        t0.elapsed().as_secs_f64()
    );
    let enc: Vec<i64> = b"And God said"
        .iter()
        .map(|b| r.alphabet.binary_search(b).unwrap_or(0) as i64)
        .collect();
    let mut g = Generator::new(&r.params)?;
    let mut s = Sampler::new(42);
    let greedy = g.generate(&enc, 200, 0.0, 0, &mut s)?;
    println!("greedy: And God said{}", text(&r.alphabet, &greedy));
    let sampled = g.generate(&enc, 200, 0.8, 10, &mut s)?;
    println!(
        "top-10, temperature 0.8: And God said{}",
        text(&r.alphabet, &sampled)
    );
    let full = greedy_full(&r.model, &r.params, &enc, 40)?;
    if full[..] != greedy[..40] {
        return Err(mithril::Error::op(
            "train_gpt",
            "greedy decoding through the cache differs from the full forward",
        ));
    }
    if r.loss.1 > 2.0 {
        return Err(mithril::Error::op(
            "train_gpt",
            format!("the final loss {:.3} is above 2.0", r.loss.1),
        ));
    }
    Ok(())
}
