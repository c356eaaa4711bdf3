//! Run-time instrumentation: `save_intermediates` (+ `intermediate_dir`), `profile`
//! (+ `profile_output`) and `code_transformers: [timing, trace, nan_check, hook]`.

use mithril::prelude::*;
use mithril::rt::inspect::ProfileRow;
use mithril::rt::{OpHook, OpInfo, TensorView};
use ndarray::{Array2, array};
use std::cell::RefCell;
use std::sync::OnceLock;

mithril! {
    model Block {
        input x: f32[B, 3];
        param w: f32[3, 3];
        let h = matmul(x, w);
        let a = relu(h + 1.0);
        output y = a * 2.0;
    }

    pub model Net {
        input x: f32[B, 3];
        let b1 = Block()(x);
        let v = exp(b1) - 1.0;
        output out = v.sum(axis = 1);
    }

    pub compile NetInt = Net { save_intermediates: true, intermediate_dir: "target/test-inspect/net-int" };
    pub compile NetIntNoDir = Net { save_intermediates: true, inference: true };

    pub model Mm {
        input x: f32[B, 6];
        param w: f32[6, 5];
        output y = matmul(x, w);
        output s = x.sum(axis = 1);
    }

    pub model Shadowed {
        input x: f32[N];
        let h = x * 2.0;
        let h = h + 1.0;
        let g = h;
        output y = exp(g);
    }

    pub compile ShadowedInt = Shadowed { save_intermediates: true };

    pub compile MmProf = Mm { profile: true, profile_output: "target/test-inspect/mm-profile.json", inference: true };

    pub model Risky {
        input x: f32[N];
        let d = x * 2.0;
        let l = log(d);
        output y = l.sum();
    }

    pub compile RiskyChecked = Risky { code_transformers: [nan_check, timing], inference: true };
    pub compile RiskyHooked = Risky { code_transformers: [hook, trace], inference: true };
}

fn block_w() -> Array2<f32> {
    array![[1.0, -2.0, 0.5], [0.0, 1.0, -1.0], [2.0, 0.5, 0.25]]
}

/// Sets `b1.w` of `p` to [`block_w`].
fn set_block_w<P: mithril::rt::ParamTree>(p: &mut P) {
    let w = block_w();
    p.visit_mut(&mut |name, v| {
        assert_eq!(name, "b1.w");
        match v {
            mithril::rt::TensorViewMut::F32(mut a) => {
                a.assign(&w.view().into_dyn());
                Ok(())
            }
            _ => panic!("f32 param"),
        }
    })
    .unwrap();
}

/// The Net's values computed here, naively: (h, a, y, v, out).
fn net_reference(x: &Array2<f32>) -> [Array2<f64>; 5] {
    let w = block_w();
    let (b, n) = (x.nrows(), 3);
    let mut h = Array2::<f64>::zeros((b, n));
    for i in 0..b {
        for j in 0..n {
            h[[i, j]] = (0..3).map(|k| x[[i, k]] as f64 * w[[k, j]] as f64).sum();
        }
    }
    let a = h.mapv(|t| (t + 1.0).max(0.0));
    let y = a.mapv(|t| t * 2.0);
    let v = y.mapv(|t| t.exp() - 1.0);
    let out = Array2::from_shape_fn((b, 1), |(i, _)| v.row(i).sum());
    [h, a, y, v, out]
}

fn close(got: ndarray::ArrayViewD<'_, f32>, want: &Array2<f64>, what: &str) {
    let want: Vec<f64> = want.iter().copied().collect();
    let got: Vec<f32> = got.iter().copied().collect();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

/// `NetInt` writes its intermediates to one file on every call: the two tests that call it hold
/// this lock, so that one does not read back the file the other has just rewritten (they run on
/// parallel threads; the other writes a 2-row input).
static NET_INT_FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn intermediates_are_every_named_value_with_their_values() {
    let _file = NET_INT_FILE.lock().unwrap_or_else(|e| e.into_inner());
    let m = NetInt::new().unwrap();
    let mut p = m.randomize_params(0);
    set_block_w(&mut p);
    let x = array![[0.5f32, -1.0, 0.25], [1.0, 0.0, -0.5]];
    let (outs, int) = m
        .evaluate_with_intermediates(&p, NetIntInputs { x: x.view() })
        .unwrap();
    let [h, a, y, v, out] = net_reference(&x);
    assert_eq!(int.names(), vec!["b1.h", "b1.a", "b1.y", "v", "out"]);
    close(int.get::<f32>("b1.h").unwrap(), &h, "b1.h");
    close(int.get::<f32>("b1.a").unwrap(), &a, "b1.a");
    close(int.get::<f32>("b1.y").unwrap(), &y, "b1.y");
    close(int.get::<f32>("v").unwrap(), &v, "v");
    close(int.get::<f32>("out").unwrap(), &out, "out");
    assert_eq!(
        int.describe("b1.h").unwrap(),
        (vec![2, 3], mithril::rt::DType::F32)
    );
    // the outputs are those of `evaluate`, bit for bit
    let plain = m.evaluate(&p, NetIntInputs { x: x.view() }).unwrap();
    assert_eq!(outs.out, plain.out);
    close(outs.out.view().into_dyn(), &out, "out");
    // errors name what there is
    let e = int.get::<f32>("nope").unwrap_err().to_string();
    assert!(
        e.contains("no intermediate named `nope`") && e.contains("b1.h, b1.a"),
        "{e}"
    );
    let e = int.get::<i64>("v").unwrap_err().to_string();
    assert!(e.contains("`v` is f32, not i64"), "{e}");
    // `evaluate`'s plan fused these values away; the intermediates' plan kept them
    const { assert!(NetInt::NUM_OPS < 5) };
}

#[test]
fn intermediates_are_written_as_safetensors_and_read_back() {
    let _file = NET_INT_FILE.lock().unwrap_or_else(|e| e.into_inner());
    let m = NetInt::new().unwrap();
    let mut p = m.randomize_params(0);
    set_block_w(&mut p);
    let x = array![[0.25f32, 0.5, -0.75], [-1.0, 2.0, 0.0], [0.0, 0.0, 1.0]];
    let (_, int) = m
        .evaluate_with_intermediates(&p, NetIntInputs { x: x.view() })
        .unwrap();
    let dir = NetInt::INTERMEDIATE_DIR.unwrap();
    assert!(dir.ends_with("target/test-inspect/net-int"), "{dir}");
    let path = std::path::Path::new(dir).join("NetInt.intermediates.safetensors");
    assert_eq!(int.file_in(std::path::Path::new(dir)), path);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(names, vec!["b1.a", "b1.h", "b1.y", "out", "v"]);
    let refs = net_reference(&x);
    for (name, want) in ["b1.h", "b1.a", "b1.y", "v", "out"].iter().zip(&refs) {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let shape: Vec<usize> = if *name == "out" { vec![3] } else { vec![3, 3] };
        assert_eq!(t.shape(), &shape[..], "{name}");
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        close(ndarray::ArrayView1::from(&vals[..]).into_dyn(), want, name);
    }
    // the file has the `{"format": "pt"}` header PyTorch's loader wants
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let format = meta.metadata().as_ref().and_then(|m| m.get("format"));
    assert_eq!(format.map(|s| s.as_str()), Some("pt"));
    // without `intermediate_dir`, nothing is written
    assert_eq!(NetIntNoDir::INTERMEDIATE_DIR, None);
}

fn mm_stats(rows: &[ProfileRow], kind: &str) -> mithril::rt::inspect::OpStats {
    rows.iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} row in {rows:?}"))
        .stats
}

#[test]
fn profile_counts_time_bytes_and_flops_per_op_over_calls() {
    let m = MmProf::new().unwrap();
    let p = m.randomize_params(1);
    let x = Array2::<f32>::from_shape_fn((4, 6), |(i, j)| (i * 6 + j) as f32 * 0.1);
    for _ in 0..3 {
        m.evaluate(&p, MmProfInputs { x: x.view() }).unwrap();
    }
    let rows = m.profile_rows();
    let mm = mm_stats(&rows, "matmul");
    assert_eq!(mm.calls, 3);
    // 2·M·N·K per call; bytes: x (4·6), w (6·5), y (4·5) f32 values
    assert_eq!(mm.flops, 3 * 2 * 4 * 5 * 6);
    assert_eq!(mm.bytes, 3 * 4 * (4 * 6 + 6 * 5 + 4 * 5));
    let s = mm_stats(&rows, "sum");
    assert_eq!(s.calls, 3);
    assert_eq!(s.flops, 3 * 24);
    assert_eq!(s.bytes, 3 * 4 * (24 + 4));
    // sorted by time, slowest first
    assert!(
        rows.windows(2)
            .all(|w| w[0].stats.nanos >= w[1].stats.nanos)
    );
    let r = m.profile_report();
    assert!(
        r.starts_with("profile of `MmProf`\n  evaluate: 3 call(s), "),
        "{r}"
    );
    assert!(r.contains("GFLOP/s") && r.contains("by kind:"), "{r}");
    assert!(r.contains("matmul") && r.contains("sum"), "{r}");
    // the compile-time step timings, with durations
    assert!(
        MmProf::COMPILE_TIMINGS.contains(" ms "),
        "{}",
        MmProf::COMPILE_TIMINGS
    );
    assert!(MmProf::COMPILE_TIMINGS.contains("operator_fusion"));
    m.reset_instrumentation();
    assert!(m.profile_rows().is_empty());
}

#[test]
fn profile_writes_a_chrome_trace() {
    let m = MmProf::new().unwrap();
    let p = m.randomize_params(2);
    let x = Array2::<f32>::ones((2, 6));
    for _ in 0..2 {
        m.evaluate(&p, MmProfInputs { x: x.view() }).unwrap();
    }
    let path = m.save_profile().unwrap();
    assert!(path.ends_with("target/test-inspect/mm-profile.json"));
    let text = std::fs::read_to_string(path).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ev = j["traceEvents"].as_array().unwrap();
    // two calls of two ops, and the two calls themselves
    assert_eq!(ev.len(), 2 * 2 + 2, "{text}");
    for e in ev {
        assert_eq!(e["ph"], "X", "{e}");
        assert!(e["ts"].as_f64().unwrap() >= 0.0 && e["dur"].as_f64().unwrap() >= 0.0);
        assert!(
            e["pid"].is_u64() && e["tid"].is_u64() && e["name"].is_string(),
            "{e}"
        );
    }
    let calls: Vec<_> = ev.iter().filter(|e| e["cat"] == "call").collect();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|e| e["name"] == "evaluate"));
    let mm = ev.iter().find(|e| e["cat"] == "matmul").unwrap();
    assert_eq!(mm["args"]["flops"], 2 * 2 * 5 * 6);
    assert!(
        j["otherData"]["compile"]
            .as_str()
            .unwrap()
            .contains("codegen")
    );
}

#[test]
fn nan_check_names_the_first_op_that_made_a_nan() {
    let m = RiskyChecked::new().unwrap();
    let p = m.randomize_params(0);
    let ok = m
        .evaluate(
            &p,
            RiskyCheckedInputs {
                x: array![1.0f32, 2.0].view(),
            },
        )
        .unwrap();
    assert!((ok.y.into_scalar() - (2f32.ln() + 4f32.ln())).abs() < 1e-6);
    let e = m
        .evaluate(
            &p,
            RiskyCheckedInputs {
                x: array![1.0f32, -2.0, 3.0].view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("`nan_check`") && e.contains("NaN at [1]"), "{e}");
    assert!(
        e.contains("in model `RiskyChecked`") && e.contains("log"),
        "{e}"
    );
    // `timing` counted both calls (the failed one too)
    let t = m.call_timing();
    assert_eq!(t.calls, 2);
    assert!(t.min <= t.max && t.total >= t.max);
}

/// Records what it is shown.
#[derive(Default)]
struct Recorder {
    seen: Vec<(String, usize, Vec<usize>)>,
    stop_after: Option<usize>,
}

impl OpHook for Recorder {
    fn before(&mut self, op: &OpInfo<'_>, inputs: &[&TensorView<'_>]) -> mithril::rt::Result<()> {
        self.seen.push((
            op.kind().to_string(),
            inputs.len(),
            inputs[0].shape().to_vec(),
        ));
        Ok(())
    }
    fn after(&mut self, op: &OpInfo<'_>, output: &TensorView<'_>) -> mithril::rt::Result<()> {
        self.seen
            .push((format!("{} done", op.kind()), 0, output.shape().to_vec()));
        if self.stop_after == Some(self.seen.len() / 2) {
            return Err(mithril::rt::Error::op("recorder", "stop"));
        }
        Ok(())
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// A logger that keeps the records of the threads that asked for them (the suite shares one
/// process: other threads' records are dropped).
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        CAPTURE.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(format!("{} {} {}", r.level(), r.target(), r.args()));
            }
        });
    }
    fn flush(&self) {}
}

fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    static INIT: OnceLock<()> = OnceLock::new();
    static LOGGER: Capture = Capture;
    INIT.get_or_init(|| {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let logs = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, logs)
}

#[test]
fn a_user_hook_sees_every_op_and_can_stop_the_call() {
    let m = RiskyHooked::new().unwrap();
    let p = m.randomize_params(0);
    let x = array![1.0f32, 2.0, 4.0];
    let mut rec = Recorder::default();
    let with = m
        .evaluate_with_hook(&mut rec, &p, RiskyHookedInputs { x: x.view() })
        .unwrap();
    let plain = m.evaluate(&p, RiskyHookedInputs { x: x.view() }).unwrap();
    assert_eq!(with.y, plain.y);
    // the fused `log(x * 2)`, then the sum: before and after each
    let kinds: Vec<&str> = rec.seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["fused", "fused done", "sum", "sum done"],
        "{:?}",
        rec.seen
    );
    assert_eq!(rec.seen[0].2, vec![3]);
    assert_eq!(rec.seen[1].2, vec![3]);
    assert_eq!(rec.seen[3].2, Vec::<usize>::new());
    // an `Err` from the hook stops the call, named by the op it came after
    let mut stop = Recorder {
        stop_after: Some(1),
        ..Recorder::default()
    };
    let e = m
        .evaluate_with_hook(&mut stop, &p, RiskyHookedInputs { x: x.view() })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stop") && e.contains("in model `RiskyHooked`"),
        "{e}"
    );
    assert_eq!(stop.seen.len(), 2);
}

#[test]
fn trace_logs_each_op_through_the_log_facade() {
    let m = RiskyHooked::new().unwrap();
    let p = m.randomize_params(0);
    let x = array![1.0f32, 2.0];
    let (r, logs) = capture_logs(|| m.evaluate(&p, RiskyHookedInputs { x: x.view() }));
    r.unwrap();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(
        logs[0].starts_with("TRACE mithril::trace `RiskyHooked` op "),
        "{logs:?}"
    );
    assert!(
        logs[0].contains("fused") && logs[0].ends_with("f32[2]"),
        "{logs:?}"
    );
    assert!(
        logs[1].contains(" sum: ") && logs[1].ends_with("f32[]"),
        "{logs:?}"
    );
}

/// The instrumentation state is per model value, behind a `Mutex`: models stay `Sync`.
#[test]
fn instrumented_models_stay_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<MmProf>();
    check::<RiskyHooked>();
    check::<NetInt>();
}

#[test]
fn intermediates_name_a_rebound_name_by_its_count() {
    let m = ShadowedInt::new().unwrap();
    let p = m.randomize_params(0);
    let x = array![0.5f32, -1.0];
    let (out, int) = m
        .evaluate_with_intermediates(&p, ShadowedIntInputs { x: x.view() })
        .unwrap();
    // `g` names the value `h` already named: a value keeps its first name
    assert_eq!(int.names(), vec!["h", "h#2", "y"]);
    assert_eq!(
        int.get::<f32>("h").unwrap(),
        array![1.0f32, -2.0].into_dyn()
    );
    assert_eq!(
        int.get::<f32>("h#2").unwrap(),
        array![2.0f32, -1.0].into_dyn()
    );
    assert_eq!(int.get::<f32>("y").unwrap(), out.y.view().into_dyn());
    let want = [2f64.exp(), (-1f64).exp()];
    for (g, w) in out.y.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6 * w, "{g} vs {w}");
    }
}
