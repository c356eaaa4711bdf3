//! Memory planning: one planned arena per model function, in-place reuse, no heap allocation
//! after the first call for a given shape (proven with a counting global allocator), the
//! planned peak against the naive sum, and `max_memory_gb`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use mithril::prelude::*;
use ndarray::{Array1, Array2};

/// Counts the allocations made by the current thread while counting is on.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    /// The largest size this thread asked the allocator for while counting was on.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Counts one allocation of `size` bytes when counting is on.
fn count(size: usize) {
    if ON.with(|c| c.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LARGEST.with(|c| c.set(c.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count(n);
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counting tests run one at a time: the GEMM thread pool is process-wide, and a caller
/// that finds it busy (another test's GEMM) runs every part itself, which can grow its
/// thread-local packing buffers once. That is a first-time growth, not a per-call allocation, but
/// it would land inside whichever call is being counted.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations made by this thread while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCS.load(Ordering::Relaxed);
    ON.with(|c| c.set(true));
    let r = f();
    ON.with(|c| c.set(false));
    (ALLOCS.load(Ordering::Relaxed) - before, r)
}

/// The largest single allocation this thread asked for while running `f`.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (usize, R) {
    LARGEST.with(|c| c.set(0));
    let (_, r) = allocations(f);
    (LARGEST.with(|c| c.get()), r)
}

mithril! {
    // a scan: a recurrent cell over the sequence axis, per-step outputs stacked
    model Rnn {
        input xs: f32[B, T, 16];
        let cell = Linear(16);
        let mix = Linear(16);
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let h = tanh(cell(h) + mix(xs[(.., t)]));
            stack hs[(.., t)] = h;
        }
        output hs = hs;
    }

    model Mlp {
        input x: f32[B, 784];
        let h = relu(Linear(256)(x));
        let h = relu(Linear(128)(h));
        output logits = Linear(10)(h);
    }

    train Clf {
        input x: f32[B, 784];
        input y: i64[B];
        let h = relu(Linear(256)(x));
        let h = relu(Linear(128)(h));
        output logits = Linear(10)(h);
        loss cross_entropy(logits, y).mean();
    }

    compile StaticMlp = Mlp { shapes: { x: [32, 784] }, static_shapes: true };
    compile NoPlan = Mlp { memory_planning: none };
    compile Tiny = Mlp { max_memory_gb: 0.0001 };
    compile StaticRnn = Rnn { shapes: { xs: [4, 6, 16] }, static_shapes: true };

    // a swap of two loop variables (the simultaneous assignment reads the old values)
    model Swap {
        input x: f32[B, 4];
        input n: i64[];
        let a = x * 2.0;
        let b = x + 1.0;
        let step = 0;
        while step < n, max_steps = 100 {
            let t = a;
            let a = b * 0.5;
            let b = t;
            let step = step + 1;
        }
        output y = a * 3.0 + b;
    }
    compile StaticSwap = Swap { shapes: { x: [3, 4] }, static_shapes: true };

    model Small {
        input x: f32[B, 4];
        output y = MLP(dimensions = [8, 3], activations = [relu])(x);
    }

    model Outer {
        input a: f32[N, 1];
        input b: f32[1, M];
        output c = a * b;
    }

    model Product {
        input a: f32[M, K];
        input b: f32[K, N];
        output c = matmul(a, b);
    }

    model Lookup {
        input ids: i64[N];
        output e = Embedding(10, 4)(ids);
    }

    // a run-time `if` (and the mode) with buffers in both branches
    model Branch {
        input x: f32[B, 64];
        input wide: bool[];
        let h = relu(Linear(64)(x));
        if wide {
            let h = tanh(Linear(64)(h)) * h;
        } else {
            let h = sigmoid(h) + h;
        }
        if is_training {
            let h = h * 0.5;
        }
        output y = Linear(8)(h);
    }
}

fn data(b: usize) -> (Array2<f32>, Array1<i64>) {
    let x = Array2::from_shape_fn((b, 784), |(i, j)| ((i * 784 + j) as f32 * 0.013).sin());
    let y = Array1::from_shape_fn(b, |i| (i % 10) as i64);
    (x, y)
}

#[test]
fn evaluate_allocates_only_its_outputs_after_the_first_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Mlp::new().unwrap();
    let p = m.randomize_params(1);
    for b in [1usize, 32, 256] {
        let (x, _) = data(b);
        let run = || m.evaluate(&p, MlpInputs { x: x.view() }).unwrap();
        let (first, r1) = allocations(run);
        let (second, r2) = allocations(run);
        let (third, r3) = allocations(run);
        assert_eq!(r1.logits, r2.logits);
        assert_eq!(r1.logits, r3.logits);
        // one allocation: the returned `logits`
        assert_eq!(
            second, 1,
            "batch {b}: the second call allocated {second} times (first: {first})"
        );
        assert_eq!(
            third, 1,
            "batch {b}: the third call allocated {third} times"
        );
    }
}

#[test]
fn static_evaluate_allocates_only_its_output_after_the_first_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        StaticMlp::SUMMARY.contains("static_shapes: evaluate specialized"),
        "{}",
        StaticMlp::SUMMARY
    );
    let m = StaticMlp::new().unwrap();
    let p = m.randomize_params(1);
    let (x, _) = data(32);
    let run = || m.evaluate(&p, StaticMlpInputs { x: x.view() }).unwrap();
    let (_, r1) = allocations(run);
    let (second, r2) = allocations(run);
    assert_eq!(r1.logits, r2.logits);
    // one allocation: the returned `logits`
    assert_eq!(second, 1, "the second call allocated {second} times");
}

#[test]
fn training_step_allocates_only_its_outputs_after_the_first_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Clf::new().unwrap();
    let p = m.randomize_params(2);
    for b in [1usize, 32] {
        let (x, y) = data(b);
        let run = || {
            m.evaluate_gradients(
                &p,
                ClfInputs {
                    x: x.view(),
                    y: y.view(),
                },
            )
            .unwrap()
        };
        let (_, (o1, g1)) = allocations(run);
        let (second, (o2, g2)) = allocations(run);
        assert_eq!(o1.loss, o2.loss);
        assert_eq!(g1.linear_0.weight, g2.linear_0.weight);
        // returned: logits, loss and six gradients
        assert_eq!(
            second, 8,
            "batch {b}: the second training step allocated {second} times"
        );
    }
}

#[test]
fn runtime_if_allocates_only_its_outputs_once_both_branches_ran() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Branch::new().unwrap();
    let p = m.randomize_params(3);
    let x = Array2::from_shape_fn((16, 64), |(i, j)| ((i * 64 + j) as f32 * 0.021).cos());
    let (t, f) = (ndarray::arr0(true), ndarray::arr0(false));
    let eval = |c: &ndarray::Array0<bool>| {
        m.evaluate(
            &p,
            BranchInputs {
                x: x.view(),
                wide: c.view(),
            },
        )
        .unwrap()
    };
    let ones = Array2::ones((16, 8));
    let step = |c: &ndarray::Array0<bool>, seed: BranchOutputs| {
        m.evaluate_gradients(
            &p,
            BranchInputs {
                x: x.view(),
                wide: c.view(),
            },
            seed,
        )
        .unwrap()
    };
    // the first call of each branch may plan; after that, whichever branch runs, a call
    // allocates its outputs only
    let (_, a) = allocations(|| eval(&t));
    let (_, b) = allocations(|| eval(&f));
    assert_ne!(a.y, b.y);
    for c in [&t, &f, &f, &t] {
        let (n, o) = allocations(|| eval(c));
        assert_eq!(o.y, if c[()] { a.y.clone() } else { b.y.clone() });
        assert_eq!(n, 1, "evaluate allocated {n} times");
    }
    // (each seed is made outside the counted region)
    let seed = || BranchOutputs { y: ones.clone() };
    let (s1, s2) = (seed(), seed());
    let _ = allocations(|| step(&t, s1));
    let _ = allocations(|| step(&f, s2));
    for c in [&f, &t, &t, &f] {
        let s = seed();
        let (n, (o, g)) = allocations(|| step(c, s));
        assert_eq!(g.names().len(), 6);
        assert!(o.y.iter().all(|v| v.is_finite()));
        // returned: y and six gradients (three linears)
        assert_eq!(n, 7, "a training step allocated {n} times");
    }
}

#[test]
fn results_do_not_depend_on_planning_or_shape_history() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Mlp::new().unwrap();
    let naive = NoPlan::new().unwrap();
    let p = m.randomize_params(3);
    let pn: NoPlanParams = {
        let mut q = naive.randomize_params(0);
        q.linear_0.weight.assign(&p.linear_0.weight);
        q.linear_0.bias.assign(&p.linear_0.bias);
        q.linear_1.weight.assign(&p.linear_1.weight);
        q.linear_1.bias.assign(&p.linear_1.bias);
        q.linear_2.weight.assign(&p.linear_2.weight);
        q.linear_2.bias.assign(&p.linear_2.bias);
        q
    };
    // new shapes re-plan; going back to an earlier shape re-plans again
    for b in [3usize, 5, 3, 64, 5] {
        let (x, _) = data(b);
        let a = m.evaluate(&p, MlpInputs { x: x.view() }).unwrap().logits;
        let c = naive
            .evaluate(&pn, NoPlanInputs { x: x.view() })
            .unwrap()
            .logits;
        assert_eq!(a, c, "batch {b}");
    }
    let r = m.memory_report().unwrap();
    // with bias and relu fused into the matmuls, the forward pass has just its two hidden
    // activations, live together at the second matmul: nothing to share (the training step,
    // below, has plenty)
    assert_eq!(r.slots, 2, "{r:?}");
    // (the report is the last plan's: batch 5)
    assert_eq!(r.planned_bytes, 5 * (256 + 128) * 4, "{r:?}");
    let rn = naive.memory_report().unwrap();
    assert_eq!(
        rn.planned_bytes, rn.naive_bytes,
        "planning off is the naive sum"
    );
}

#[test]
fn the_static_plan_is_in_the_summary_and_matches_the_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = StaticMlp::SUMMARY;
    let line = s
        .lines()
        .find(|l| l.starts_with("evaluate memory: planned peak"))
        .unwrap_or_else(|| panic!("no memory line in\n{s}"));
    let m = StaticMlp::new().unwrap();
    let p = m.randomize_params(4);
    let (x, _) = data(32);
    m.evaluate(&p, StaticMlpInputs { x: x.view() }).unwrap();
    let r = m.memory_report().unwrap();
    // hidden activations: [32, 256] and [32, 128] f32 (bias and relu are matmul epilogues):
    // 32 KiB + 16 KiB
    assert_eq!(r.planned_bytes, 32 * 256 * 4 + 32 * 128 * 4, "{r:?}\n{s}");
    assert!(line.contains("48.0 KiB"), "{line}");
    assert!(r.naive_bytes >= r.planned_bytes);
}

#[test]
fn training_plan_is_smaller_than_the_naive_sum() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Clf::new().unwrap();
    let p = m.randomize_params(5);
    let (x, y) = data(64);
    m.evaluate_gradients(
        &p,
        ClfInputs {
            x: x.view(),
            y: y.view(),
        },
    )
    .unwrap();
    let r = m.memory_report_gradients().unwrap();
    println!(
        "train step b=64: planned {} B, naive {} B, {} slots",
        r.planned_bytes, r.naive_bytes, r.slots
    );
    assert!(r.planned_bytes < r.naive_bytes, "{r:?}");
}

#[test]
fn over_max_memory_is_an_error_at_run_time_for_dynamic_shapes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Tiny::new().unwrap();
    let p = m.randomize_params(6);
    let (x, _) = data(2);
    // [2, 256] + [2, 128] f32 is far below 0.0001 GiB (~107 KB)
    m.evaluate(&p, TinyInputs { x: x.view() }).unwrap();
    let (x, _) = data(512);
    let e = m.evaluate(&p, TinyInputs { x: x.view() }).unwrap_err();
    assert!(matches!(e, mithril::rt::Error::Memory { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("model `Tiny`") && msg.contains("max_memory_gb"),
        "{msg}"
    );
}

/// Asserts `r` is an `Error::Alloc` of exactly `bytes` whose message names the op `op`
/// (elementwise groups report the value they compute as `Error::Alloc::op`, and the op in
/// the context the model adds).
fn assert_alloc_err<T: std::fmt::Debug>(r: Result<T, mithril::rt::Error>, op: &str, bytes: u128) {
    let e = r.expect_err("an impossible size must be an Err");
    match &e {
        mithril::rt::Error::Alloc { bytes: b, .. } => assert!(*b == bytes, "{e:?}"),
        other => panic!("expected Error::Alloc, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("`{op}`")) && msg.contains(&bytes.to_string()),
        "{msg}"
    );
}

/// Inputs whose results cannot fit in any machine's memory (terabytes, from broadcast views of
/// a few bytes) are `Err`s naming the op and the bytes; the process never asks the allocator
/// for them (the largest allocation of each call stays small).
#[test]
fn impossible_sizes_are_errors_not_aborts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const SMALL: usize = 1 << 20;
    // 2^40 rows through a small MLP: its first layer's [2^40, 8] f32 result is 32 TiB
    let m = Small::new().unwrap();
    let p = m.randomize_params(0);
    let row = Array2::<f32>::ones((1, 4));
    let x = row.broadcast((1usize << 40, 4)).unwrap();
    let (big, r) = largest_allocation(|| m.evaluate(&p, SmallInputs { x }));
    assert_alloc_err(r, "matmul", (1u128 << 40) * 8 * 4);
    assert!(big < SMALL, "allocated {big} bytes");
    // outer product [2^20, 1] * [1, 2^20]: 2^40 f32, 4 TiB
    let m = Outer::new().unwrap();
    let col = Array2::<f32>::ones((1, 1));
    let a = col.broadcast((1usize << 20, 1)).unwrap();
    let b = col.broadcast((1, 1usize << 20)).unwrap();
    let (big, r) = largest_allocation(|| m.evaluate(&m.randomize_params(0), OuterInputs { a, b }));
    assert_alloc_err(r, "multiply", 4u128 << 40);
    assert!(big < SMALL, "allocated {big} bytes");
    // a matmul with a 4 TiB result: [2^20, 1] @ [1, 2^20]
    let m = Product::new().unwrap();
    let (big, r) =
        largest_allocation(|| m.evaluate(&m.randomize_params(0), ProductInputs { a, b }));
    assert_alloc_err(r, "matmul", 4u128 << 40);
    assert!(big < SMALL, "allocated {big} bytes");
    // 2^40 embedding ids (a broadcast view of one id): a [2^40, 4] f32 result, 16 TiB
    let m = Lookup::new().unwrap();
    let p = m.randomize_params(0);
    let one = Array1::<i64>::from_elem(1, 3);
    let ids = one.broadcast(1usize << 40).unwrap();
    let (big, r) = largest_allocation(|| m.evaluate(&p, LookupInputs { ids }));
    assert_alloc_err(r, "gather", (1u128 << 40) * 4 * 4);
    assert!(big < SMALL, "allocated {big} bytes");
    // the messages say where
    let e = m
        .evaluate(&p, LookupInputs { ids })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model `Lookup`") && e.contains("input `ids`"),
        "{e}"
    );
}

/// `max_memory_gb` refuses a call before its intermediate buffers are allocated: the first
/// layer's [512, 256] f32 result (512 KiB) alone exceeds the limit (0.0001 GiB, ~105 KiB), and
/// no allocation of that size happens.
#[test]
fn max_memory_is_enforced_before_allocating() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Tiny::new().unwrap();
    let p = m.randomize_params(6);
    let (x, _) = data(512);
    let (big, r) = largest_allocation(|| m.evaluate(&p, TinyInputs { x: x.view() }));
    let e = r.unwrap_err();
    assert!(matches!(e, mithril::rt::Error::Memory { .. }), "{e:?}");
    assert!(e.to_string().contains("model `Tiny`"), "{e}");
    assert!(big < 100 * 1024, "allocated {big} bytes before refusing");
}

#[test]
fn a_steady_training_loop_through_a_scan_allocates_only_its_outputs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = Rnn::new().unwrap();
    let p = m.randomize_params(5);
    let xs = ndarray::Array3::from_shape_fn((4, 12, 16), |(b, t, j)| {
        ((b * 192 + t * 16 + j) as f32 * 0.013).sin()
    });
    let seed = || RnnOutputs {
        hs: ndarray::Array3::ones((4, 12, 16)),
    };
    let step = |s: RnnOutputs| {
        m.evaluate_gradients(&p, RnnInputs { xs: xs.view() }, s)
            .unwrap()
    };
    // the first call records and plans (and grows the tapes of the 12 iterations)
    let (_, (first, g0)) = allocations(|| step(seed()));
    for _ in 0..3 {
        let s = seed();
        let (n, (o, g)) = allocations(|| step(s));
        assert_eq!(o.hs, first.hs);
        assert_eq!(g.cell.weight, g0.cell.weight);
        // returned: hs and four gradients (two linears)
        assert_eq!(n, 5, "a training step through the scan allocated {n} times");
    }
    // inference at the same shapes: the output only
    let _ = allocations(|| m.evaluate(&p, RnnInputs { xs: xs.view() }).unwrap());
    let (n, o) = allocations(|| m.evaluate(&p, RnnInputs { xs: xs.view() }).unwrap());
    assert_eq!(o.hs, first.hs);
    assert_eq!(n, 1, "evaluate allocated {n} times");
}

mithril! {
    // a one-layer GPT step with a donated key/value cache
    model KvStep {
        input tokens: i64[B, S];
        input pos: i64[];
        input k: f32[B, 2, M, 8];
        input v: f32[B, 2, M, 8];
        let wte = Embedding(num_embeddings = 32, dim = 16);
        let wpe = CachedPositionalEmbedding(128, 16);
        let block = CachedTransformerBlock(16, 2, dim_feedforward = 32, activation = "gelu_tanh");
        let (h, k_next, v_next) = block(wpe(wte(tokens), pos), k, v, pos);
        output logits = Linear(32)(h);
        output k_out = k_next;
        output v_out = v_next;
    }
    compile KvDecode = KvStep { donate: [k, v], inference: true };
}

#[test]
fn a_kv_cache_decode_step_allocates_no_cache_sized_buffer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = KvDecode::new().unwrap();
    let p = m.randomize_params(4);
    // a cache of 128 positions: 2 x 128 x 8 x 4 bytes = 8 KiB each
    let mut k = ndarray::Array4::<f32>::zeros((1, 2, 128, 8));
    let mut v = ndarray::Array4::<f32>::zeros((1, 2, 128, 8));
    let (kp, vp) = (k.as_ptr(), v.as_ptr());
    let prompt = ndarray::array![[1i64, 2, 3, 4, 5]];
    let one: Vec<Array2<i64>> = (0..8)
        .map(|i| Array2::from_elem((1, 1), i as i64))
        .collect();
    let at: Vec<ndarray::Array0<i64>> = (0..13).map(|i| ndarray::arr0(i as i64)).collect();
    let o = m
        .evaluate_donating(
            &p,
            KvDecodeDonatingInputs {
                tokens: prompt.view(),
                pos: at[0].view(),
                k,
                v,
            },
        )
        .unwrap();
    (k, v) = (o.k_out, o.v_out);
    for (i, t) in one.iter().enumerate() {
        let pos = at[5 + i].view();
        let (n, (big, o)) = allocations(|| {
            largest_allocation(|| {
                m.evaluate_donating(
                    &p,
                    KvDecodeDonatingInputs {
                        tokens: t.view(),
                        pos,
                        k,
                        v,
                    },
                )
                .unwrap()
            })
        });
        assert_eq!((o.k_out.as_ptr(), o.v_out.as_ptr()), (kp, vp));
        if i > 0 {
            // after the first decode call (which plans the step's memory): never a cache-sized
            // buffer, and from the third call on only the returned `logits` (the second may
            // still re-plan the arena once)
            assert!(
                big < 8 * 1024,
                "decode step {i} allocated {big} bytes at once"
            );
            if i == 1 {
                assert!(n <= 3, "decode step {i} allocated {n} times");
            } else {
                assert_eq!(n, 1, "decode step {i} allocated {n} times");
            }
        }
        (k, v) = (o.k_out, o.v_out);
    }
}

/// The scan on the `static_shapes` path (a Rust `loop` over the planned arena): after the
/// first call, a call allocates only its returned `hs`, whatever the trip count did before.
#[test]
fn a_static_scan_allocates_only_its_output_after_the_first_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        StaticRnn::SUMMARY.contains("run-time control flow as Rust `if` / `loop`"),
        "{}",
        StaticRnn::SUMMARY
    );
    let m = StaticRnn::new().unwrap();
    let p = m.randomize_params(3);
    let xs = ndarray::Array3::from_shape_fn((4, 6, 16), |(b, t, j)| {
        ((b * 96 + t * 16 + j) as f32 * 0.13).sin()
    });
    let run = || m.evaluate(&p, StaticRnnInputs { xs: xs.view() }).unwrap();
    let (_, r1) = allocations(run);
    let (second, r2) = allocations(run);
    assert_eq!(r1.hs, r2.hs);
    assert_eq!(second, 1, "the second call allocated {second} times");
}

/// A swap of loop variables on the `static_shapes` path copies the old value into a workspace
/// temporary kept between iterations and calls (`Workspace::carry_temp`): after the first
/// call, a call allocates only its returned `y`, whatever its trip count.
#[test]
fn a_static_swap_allocates_only_its_output_after_the_first_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = StaticSwap::new().unwrap();
    let p = m.randomize_params(0);
    let x = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32 * 0.25 - 1.0);
    // (the 0-d `n` is made outside the counted calls: `arr0` allocates)
    let run = |n: &ndarray::Array0<i64>| {
        m.evaluate(
            &p,
            StaticSwapInputs {
                x: x.view(),
                n: n.view(),
            },
        )
        .unwrap()
    };
    let two = ndarray::arr0(2i64);
    let _ = run(&two);
    for n in [1i64, 5, 40] {
        let nn = ndarray::arr0(n);
        let (count, r) = allocations(|| run(&nn));
        assert_eq!(count, 1, "{n} iterations allocated {count} times");
        // by hand: each iteration (a, b) <- (b / 2, a)
        let (mut a, mut b) = (x.mapv(|v| v * 2.0), x.mapv(|v| v + 1.0));
        for _ in 0..n {
            (a, b) = (b.mapv(|v| v * 0.5), a);
        }
        assert_eq!(r.y, a * 3.0 + b, "{n} iterations");
    }
}
