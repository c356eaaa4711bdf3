//! `verbose: true` (the compile report, `COMPILE_REPORT`) and `trace_shapes: true` (the
//! shape-inference trace, `SHAPE_TRACE`, and the symbols bound by the last call,
//! `last_symbols`).

use mithril::prelude::*;
use ndarray::{Array0, Array1, Array2};

mithril! {
    /// `D` is fixed by the matmul (to `w`'s 4 rows); `B` and `N` stay run-time symbols.
    pub model Traced {
        input x: f32[B, D];
        input y: f32[B, 3];
        input z: f32[N];
        param w: f32[4, 3];
        let h = matmul(x, w);
        output out = relu(h + y);
        output s = sum(z);
    }

    pub compile TracedBoth = Traced { verbose: true, trace_shapes: true };
    pub compile TracedVerbose = Traced { verbose: true };
    pub compile TracedShapes = Traced { trace_shapes: true };
    pub compile TracedCheckpoint = Traced { verbose: true, gradient_checkpointing: { segments: 2 } };
    pub compile TracedStatic = Traced {
        shapes: { x: [2, 4], y: [2, 3], z: [5] },
        static_shapes: true,
        verbose: true,
        inference: true,
    };
}

#[test]
fn compile_report_names_checkpointing_and_the_static_path() {
    let r = TracedCheckpoint::COMPILE_REPORT;
    assert!(
        r.lines().any(
            |l| l.starts_with("  backward: checkpoint ") && l.contains("2 segments recomputed")
        ),
        "{r}"
    );
    // `static_shapes`: the CPU generator's choice, as the summary words it
    let r = TracedStatic::COMPILE_REPORT;
    let line = r
        .lines()
        .find(|l| l.starts_with("  codegen "))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        line.ends_with("backend cpu, static_shapes: evaluate specialized (constant dims, contiguous slices, direct kernel calls)")
            || line.contains("backend cpu, static_shapes: evaluate keeps the generic path (not specialized: "),
        "{r}"
    );
    assert!(
        TracedStatic::SUMMARY.contains(line.split("backend cpu, ").nth(1).unwrap()),
        "{r}"
    );
    assert!(
        r.contains("autodiff") && r.contains("none: `inference: true`"),
        "{r}"
    );
    // `shapes:` replaces the symbols while flattening: none is left to infer
    assert!(
        r.contains("run-time symbols: []; fixed at compile time: []"),
        "{r}"
    );
}

#[test]
fn compile_report_names_every_step_with_what_it_did() {
    let r = TracedVerbose::COMPILE_REPORT;
    assert!(
        r.starts_with("mithril: compile report of `TracedVerbose` (model `Traced`)\n"),
        "{r}"
    );
    // the steps, in the order they ran (each line: the step's name, then what it did)
    let steps: Vec<&str> = r
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "flatten",
            "dtypes",
            "shapes",
            "finish",
            "roles",
            "checks",
            "autodiff",
            "backward:",
            "backward:",
            "backward:",
            "backward:",
            "backward:",
            "backward:",
            "backward:",
            "elide",
            "constant_folding",
            "common_subexpression",
            "dead_code_elimination",
            "norm_fusion",
            "head_fusion",
            "operator_fusion",
            "epilogue_fusion",
            "memory",
            "codegen",
        ],
        "{r}"
    );
    // flattening: x, y, z, w, matmul, add, relu, sum
    assert!(
        r.contains("flatten  ") && r.contains("8 nodes, 4 ops; 3 inputs, 1 params, 2 outputs"),
        "{r}"
    );
    assert!(
        r.contains("run-time symbols: [B, N]; fixed at compile time: [D = 4]"),
        "{r}"
    );
    assert!(
        r.contains("trainable: 1 of 1 params; discard: []; data: []; inference: false"),
        "{r}"
    );
    // `relu(h + y)` becomes one fused group, which then becomes the matmul's epilogue
    let line = |step: &str| {
        r.lines()
            .find(|l| l.trim_start().starts_with(step))
            .unwrap_or_else(|| panic!("no `{step}` line in\n{r}"))
    };
    assert!(
        line("operator_fusion").ends_with("1 changes; 4 -> 3 ops; 1 fusion groups:"),
        "{r}"
    );
    assert!(r.contains("fused[relu(add(#0, #1))]"), "{r}");
    assert!(
        line("epilogue_fusion").ends_with("1 changes; 3 -> 2 ops; 1 matmul epilogues:"),
        "{r}"
    );
    assert!(r.contains("out: matmul+epilogue[relu(add(#0, #1))]"), "{r}");
    assert!(r.contains("evaluate memory"), "{r}");
    assert!(
        r.contains("backend cpu: `evaluate` runs a plan (`mithril::rt::plan::run`)"),
        "{r}"
    );
    assert!(r.contains("evaluate_gradients: yes"), "{r}");
    // no durations in the constant (they are only printed at build time)
    assert!(!r.contains(" ms"), "{r}");
    assert!(!r.contains("total"), "{r}");
    // without `trace_shapes`, no shape trace
    assert!(!r.contains("shape trace"), "{r}");
}

#[test]
fn shape_trace_says_where_each_symbol_was_bound_and_unified() {
    let t = TracedShapes::SHAPE_TRACE;
    assert!(
        t.starts_with("shape trace of `TracedShapes`\nsymbols:\n"),
        "{t}"
    );
    // B: declared by x (binds it at run time) and y
    let b = "  B: stays symbolic: bound at run time (slot 0)\n    bound by input `x` f32[B, D]\n    also in input `y` f32[B, 3]\n";
    assert!(t.contains(b), "{t}");
    // D: fixed by the matmul, to `w`'s rows
    let d = "  D: compile-time: 4\n    bound by input `x` f32[B, D]\n    unified = 4 at %4 h `matmul`\n";
    assert!(t.contains(d), "{t}");
    let n = "  N: stays symbolic: bound at run time (slot 1)\n    bound by input `z` f32[N]\n";
    assert!(t.contains(n), "{t}");
    // every node with its operands' shapes as inference saw them, and what it unified
    assert!(t.contains("  %0 x = input : f32[B, D]\n"), "{t}");
    assert!(
        t.contains("  %4 h = matmul(%0 f32[B, D], %3 f32[4, 3]) -> f32[B, 3]; unified: D = 4\n"),
        "{t}"
    );
    assert!(
        t.contains(" = add(%4 f32[B, 3], %1 f32[B, 3]) -> f32[B, 3]\n"),
        "{t}"
    );
    assert!(t.contains(" = sum(%2 f32[N]) -> f32[]\n"), "{t}");
    // with both options, the report ends with the same trace (the model's own name in it)
    let both = TracedBoth::COMPILE_REPORT;
    assert!(
        both.contains("shape trace of `TracedBoth`\nsymbols:\n"),
        "{both}"
    );
    assert!(both.ends_with(&TracedBoth::SHAPE_TRACE), "{both}");
    assert_eq!(
        TracedBoth::SHAPE_TRACE.replace("TracedBoth", "TracedShapes"),
        TracedShapes::SHAPE_TRACE
    );
}

fn inputs(b: usize, n: usize) -> (Array2<f32>, Array2<f32>, Array1<f32>) {
    (
        Array2::from_shape_fn((b, 4), |(i, j)| (i + j) as f32 * 0.25),
        Array2::from_shape_fn((b, 3), |(i, j)| i as f32 - j as f32),
        Array1::from_shape_fn(n, |i| i as f32),
    )
}

#[test]
fn last_symbols_are_the_values_of_the_last_call() {
    let m = TracedShapes::new().unwrap();
    let p = m.randomize_params(5);
    assert_eq!(m.last_symbols(), None);
    assert_eq!(TracedShapes::SYMBOLS, ["B", "N"]);

    let (x, y, z) = inputs(2, 5);
    let o = m
        .evaluate(
            &p,
            TracedShapesInputs {
                x: x.view(),
                y: y.view(),
                z: z.view(),
            },
        )
        .unwrap();
    assert_eq!(o.out.shape(), &[2, 3]);
    assert_eq!(m.last_symbols(), Some(vec![("B", 2), ("N", 5)]));

    let (x, y, z) = inputs(7, 1);
    m.evaluate(
        &p,
        TracedShapesInputs {
            x: x.view(),
            y: y.view(),
            z: z.view(),
        },
    )
    .unwrap();
    assert_eq!(m.last_symbols(), Some(vec![("B", 7), ("N", 1)]));

    // a call whose shapes are rejected binds nothing: the last good call's values stay
    let (x, _, z) = inputs(3, 2);
    let y_bad = Array2::<f32>::zeros((4, 3));
    assert!(
        m.evaluate(
            &p,
            TracedShapesInputs {
                x: x.view(),
                y: y_bad.view(),
                z: z.view(),
            },
        )
        .is_err()
    );
    assert_eq!(m.last_symbols(), Some(vec![("B", 7), ("N", 1)]));

    // evaluate_gradients keeps its own
    assert_eq!(m.last_symbols_gradients(), None);
    let (x, y, z) = inputs(4, 6);
    let seeds = TracedShapesOutputs {
        out: Array2::ones((4, 3)),
        s: Array0::from_elem((), 1.0),
    };
    m.evaluate_gradients(
        &p,
        TracedShapesInputs {
            x: x.view(),
            y: y.view(),
            z: z.view(),
        },
        seeds,
    )
    .unwrap();
    assert_eq!(m.last_symbols_gradients(), Some(vec![("B", 4), ("N", 6)]));
    assert_eq!(m.last_symbols(), Some(vec![("B", 7), ("N", 1)]));
}
