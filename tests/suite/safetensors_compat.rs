//! PyTorch compatibility of param files.
//!
//! `safetensors.torch.save_file(model.state_dict(), path, metadata={"format": "pt"})` for
//!
//! ```python
//! class Net(nn.Module):
//!     def __init__(self):
//!         super().__init__()
//!         self.fc1 = nn.Linear(784, 256)
//!         self.fc2 = nn.Linear(256, 128)
//!         self.fc3 = nn.Linear(128, 10)
//! ```
//!
//! writes: an 8-byte little-endian header length; a compact JSON header (padded with spaces to
//! a multiple of 8) holding `__metadata__` first and then one entry per tensor, sorted by name
//! (`fc1.bias` < `fc1.weight` < `fc2.bias` ...), each `{"dtype", "shape", "data_offsets"}`;
//! then the raw little-endian data in that order. The tests build such files byte by byte
//! (independently of the `safetensors` crate), load them into the generated params, and parse
//! what mithril writes with the same hand-written reader.

use mithril::prelude::*;
use ndarray::{Array1, Array2, Axis};
use std::collections::BTreeMap;

mithril! {
    /// The PyTorch `Net` above, in mithril.
    pub model TorchNet {
        input x: f32[B, 784];
        let fc1 = Linear(256);
        let fc2 = Linear(128);
        let fc3 = Linear(10);
        let h = relu(fc1(x));
        let h = relu(fc2(h));
        output logits = fc3(h);
    }

    /// The same layers in bf16 (as after `model.to(torch.bfloat16)`).
    pub compile TorchNetBf16 = TorchNet { types: { x: bf16 } };
}

// ------------------------------------------------------------------ the PyTorch side

/// One tensor of a state dict: name, safetensors dtype, shape, little-endian data.
struct Tensor {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The bytes `safetensors.torch.save_file(state_dict, metadata={"format": "pt"})` writes.
fn torch_save_file(mut tensors: Vec<Tensor>) -> Vec<u8> {
    // all tensors share one dtype here, so the order is by name
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0usize;
    for t in &tensors {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            r#","{}":{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}}"#,
            t.name,
            t.dtype,
            shape.join(","),
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in &tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Deterministic values, distinct per tensor and position, as PyTorch weights would be.
fn values(tag: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + tag * 101) % 1009) as f32 / 1009.0 * 0.2 - 0.1)
        .collect()
}

fn f32_tensor(name: &str, shape: &[usize], tag: usize) -> (Tensor, Vec<f32>) {
    let v = values(tag, shape.iter().product());
    let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (
        Tensor {
            name: name.into(),
            dtype: "F32",
            shape: shape.to_vec(),
            data,
        },
        v,
    )
}

/// The layers of `Net` as (name, shape), in the order `state_dict()` lists them.
const LAYERS: [(&str, &[usize]); 6] = [
    ("fc1.weight", &[256, 784]),
    ("fc1.bias", &[256]),
    ("fc2.weight", &[128, 256]),
    ("fc2.bias", &[128]),
    ("fc3.weight", &[10, 128]),
    ("fc3.bias", &[10]),
];

fn torch_state_dict() -> (Vec<u8>, BTreeMap<String, Vec<f32>>) {
    let mut tensors = Vec::new();
    let mut vals = BTreeMap::new();
    for (tag, (name, shape)) in LAYERS.iter().enumerate() {
        let (t, v) = f32_tensor(name, shape, tag);
        tensors.push(t);
        vals.insert(name.to_string(), v);
    }
    (torch_save_file(tensors), vals)
}

// ------------------------------------------------------------------ a hand-written reader

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, k: &str) -> &Json {
        match self {
            Json::Obj(m) => {
                &m.iter()
                    .find(|(n, _)| n == k)
                    .unwrap_or_else(|| panic!("no `{k}`"))
                    .1
            }
            o => panic!("not an object: {o:?}"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            o => panic!("not a string: {o:?}"),
        }
    }
    fn usizes(&self) -> Vec<usize> {
        match self {
            Json::Arr(a) => a
                .iter()
                .map(|x| match x {
                    Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 => *n as usize,
                    o => panic!("not a size: {o:?}"),
                })
                .collect(),
            o => panic!("not an array: {o:?}"),
        }
    }
}

/// Parses the JSON subset safetensors headers use (objects keep their key order).
fn parse_json(s: &[u8]) -> Json {
    fn ws(s: &[u8], i: &mut usize) {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }
    fn string(s: &[u8], i: &mut usize) -> String {
        assert_eq!(s[*i], b'"', "expected a string at {i}");
        *i += 1;
        let start = *i;
        while s[*i] != b'"' {
            assert_ne!(s[*i], b'\\', "no escapes expected in these headers");
            *i += 1;
        }
        *i += 1;
        String::from_utf8(s[start..*i - 1].to_vec()).unwrap()
    }
    fn value(s: &[u8], i: &mut usize) -> Json {
        ws(s, i);
        match s[*i] {
            b'{' => {
                *i += 1;
                let mut m = Vec::new();
                ws(s, i);
                if s[*i] == b'}' {
                    *i += 1;
                    return Json::Obj(m);
                }
                loop {
                    ws(s, i);
                    let k = string(s, i);
                    ws(s, i);
                    assert_eq!(s[*i], b':');
                    *i += 1;
                    let v = value(s, i);
                    assert!(m.iter().all(|(n, _)| *n != k), "duplicate key {k}");
                    m.push((k, v));
                    ws(s, i);
                    *i += 1;
                    match s[*i - 1] {
                        b',' => {}
                        b'}' => return Json::Obj(m),
                        c => panic!("unexpected `{}`", c as char),
                    }
                }
            }
            b'[' => {
                *i += 1;
                let mut a = Vec::new();
                ws(s, i);
                if s[*i] == b']' {
                    *i += 1;
                    return Json::Arr(a);
                }
                loop {
                    a.push(value(s, i));
                    ws(s, i);
                    *i += 1;
                    match s[*i - 1] {
                        b',' => {}
                        b']' => return Json::Arr(a),
                        c => panic!("unexpected `{}`", c as char),
                    }
                }
            }
            b'"' => Json::Str(string(s, i)),
            _ => {
                let start = *i;
                while *i < s.len() && (s[*i].is_ascii_digit() || b"-+.eE".contains(&s[*i])) {
                    *i += 1;
                }
                Json::Num(std::str::from_utf8(&s[start..*i]).unwrap().parse().unwrap())
            }
        }
    }
    let mut i = 0;
    let v = value(s, &mut i);
    ws(s, &mut i);
    assert_eq!(i, s.len(), "trailing bytes after the header JSON");
    v
}

/// A parsed safetensors file: metadata, then (name, dtype, shape, data) in header order.
struct File {
    metadata: Option<Json>,
    tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
    header_len: usize,
}

fn read_file(bytes: &[u8]) -> File {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = &bytes[8..8 + n];
    let data = &bytes[8 + n..];
    let Json::Obj(entries) = parse_json(header) else {
        panic!("the header is not an object")
    };
    let mut metadata = None;
    let mut tensors = Vec::new();
    let mut expect_offset = 0;
    for (name, info) in entries {
        if name == "__metadata__" {
            metadata = Some(info);
            continue;
        }
        let off = info.get("data_offsets").usizes();
        assert_eq!(off.len(), 2);
        assert_eq!(
            off[0], expect_offset,
            "`{name}`: data is contiguous, in header order"
        );
        expect_offset = off[1];
        tensors.push((
            name,
            info.get("dtype").str().to_string(),
            info.get("shape").usizes(),
            data[off[0]..off[1]].to_vec(),
        ));
    }
    assert_eq!(expect_offset, data.len(), "no bytes after the last tensor");
    File {
        metadata,
        tensors,
        header_len: n,
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

// ------------------------------------------------------------------ tests

#[test]
fn the_hand_built_file_has_the_pytorch_layout() {
    let (bytes, _) = torch_state_dict();
    let f = read_file(&bytes);
    assert_eq!(f.header_len % 8, 0);
    assert_eq!(
        f.metadata,
        Some(Json::Obj(vec![("format".into(), Json::Str("pt".into()))]))
    );
    let names: Vec<&str> = f.tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.weight",
            "fc3.bias",
            "fc3.weight"
        ]
    );
    assert!(bytes[8..].starts_with(br#"{"__metadata__":{"format":"pt"},"fc1.bias":{"dtype":"F32","shape":[256],"data_offsets":[0,1024]}"#));
}

#[test]
fn a_pytorch_state_dict_loads_into_the_generated_params() {
    let (bytes, vals) = torch_state_dict();
    let model = TorchNet::new().unwrap();
    let mut p = model.randomize_params(0);
    p.load_safetensors_bytes(&bytes).unwrap();

    // every leaf holds the file's values, row-major, `weight: [out, in]`
    let w1: Vec<f32> = p.fc1.weight.iter().copied().collect();
    assert_eq!(w1, vals["fc1.weight"]);
    assert_eq!(p.fc1.weight[[1, 0]], vals["fc1.weight"][784]);
    assert_eq!(p.fc1.weight[[0, 1]], vals["fc1.weight"][1]);
    assert_eq!(p.fc1.bias.to_vec(), vals["fc1.bias"]);
    assert_eq!(
        p.fc2.weight.iter().copied().collect::<Vec<_>>(),
        vals["fc2.weight"]
    );
    assert_eq!(p.fc2.bias.to_vec(), vals["fc2.bias"]);
    assert_eq!(
        p.fc3.weight.iter().copied().collect::<Vec<_>>(),
        vals["fc3.weight"]
    );
    assert_eq!(p.fc3.bias.to_vec(), vals["fc3.bias"]);

    // and the model computes PyTorch's forward: x @ W^T + b
    let x = Array2::from_shape_fn((3, 784), |(i, j)| ((i * 784 + j) as f32 * 0.013).cos());
    let out = model.evaluate(&p, TorchNetInputs { x: x.view() }).unwrap();
    let lin = |x: &Array2<f32>, name: &str, n_out: usize, n_in: usize| {
        let w =
            Array2::from_shape_vec((n_out, n_in), vals[&format!("{name}.weight")].clone()).unwrap();
        let b = Array1::from(vals[&format!("{name}.bias")].clone());
        x.dot(&w.t()) + b.view().insert_axis(Axis(0))
    };
    let relu = |a: Array2<f32>| a.mapv(|v| v.max(0.0));
    let h = relu(lin(&x, "fc1", 256, 784));
    let h = relu(lin(&h, "fc2", 128, 256));
    let want = lin(&h, "fc3", 10, 128);
    for (a, b) in out.logits.iter().zip(want.iter()) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn our_file_is_byte_identical_to_pytorchs() {
    let (bytes, _) = torch_state_dict();
    let model = TorchNet::new().unwrap();
    let mut p = model.randomize_params(5);
    p.load_safetensors_bytes(&bytes).unwrap();
    let ours = p.to_safetensors_bytes().unwrap();
    assert_eq!(ours.len(), bytes.len());
    assert!(
        ours == bytes,
        "mithril's file differs from PyTorch's layout"
    );
}

#[test]
fn our_file_parses_with_the_hand_reader() {
    let model = TorchNet::new().unwrap();
    let p = model.randomize_params(7);
    let bytes = p.to_safetensors_bytes().unwrap();
    let f = read_file(&bytes);
    assert_eq!(f.header_len % 8, 0);
    assert_eq!(f.metadata.as_ref().unwrap().get("format").str(), "pt");
    // sorted by name, as PyTorch writes
    let names: Vec<&str> = f.tensors.iter().map(|t| t.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 6);
    for (name, shape) in LAYERS {
        let t = f.tensors.iter().find(|t| t.0 == name).unwrap();
        assert_eq!(t.1, "F32", "{name}");
        assert_eq!(t.2, shape, "{name}");
        assert_eq!(t.3.len(), 4 * shape.iter().product::<usize>(), "{name}");
    }
    let get = |n: &str| f32s(&f.tensors.iter().find(|t| t.0 == n).unwrap().3);
    assert_eq!(
        get("fc1.weight"),
        p.fc1.weight.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(get("fc1.bias"), p.fc1.bias.to_vec());
    assert_eq!(
        get("fc3.weight"),
        p.fc3.weight.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(get("fc3.bias"), p.fc3.bias.to_vec());
}

#[test]
fn files_round_trip_through_disk() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mithril-test");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("torchnet-{}.safetensors", std::process::id()));
    let (bytes, vals) = torch_state_dict();
    std::fs::write(&path, &bytes).unwrap();
    let model = TorchNet::new().unwrap();
    let mut p = model.randomize_params(1);
    p.load_safetensors(&path).unwrap();
    assert_eq!(p.fc2.bias.to_vec(), vals["fc2.bias"]);
    let out = dir.join(format!("torchnet-out-{}.safetensors", std::process::id()));
    p.save_safetensors(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn a_bf16_state_dict_loads_into_bf16_and_f32_params() {
    // `model.to(torch.bfloat16).state_dict()`: BF16 tensors, 2 bytes each
    let mut tensors = Vec::new();
    let mut vals = BTreeMap::new();
    for (tag, (name, shape)) in LAYERS.iter().enumerate() {
        let v: Vec<bf16> = values(tag, shape.iter().product())
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        tensors.push(Tensor {
            name: name.to_string(),
            dtype: "BF16",
            shape: shape.to_vec(),
            data: v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        });
        vals.insert(name.to_string(), v);
    }
    let bytes = torch_save_file(tensors);

    // into bf16 params: copied bit for bit
    let m16 = TorchNetBf16::new().unwrap();
    let mut p16 = m16.randomize_params(0);
    p16.load_safetensors_bytes(&bytes).unwrap();
    assert_eq!(
        p16.fc1.weight.iter().copied().collect::<Vec<_>>(),
        vals["fc1.weight"]
    );
    assert_eq!(p16.fc3.bias.to_vec(), vals["fc3.bias"]);
    // and written back identically
    assert!(p16.to_safetensors_bytes().unwrap() == bytes);

    // into f32 params: widened exactly
    let m32 = TorchNet::new().unwrap();
    let mut p32 = m32.randomize_params(0);
    p32.load_safetensors_bytes(&bytes).unwrap();
    let want: Vec<f32> = vals["fc2.weight"].iter().map(|v| v.to_f32()).collect();
    assert_eq!(p32.fc2.weight.iter().copied().collect::<Vec<_>>(), want);
}

#[test]
fn a_mismatched_state_dict_is_an_error_that_names_the_tensor() {
    // a PyTorch `nn.Linear(784, 300)` where we expect 256 outputs
    let mut tensors = Vec::new();
    for (tag, (name, shape)) in LAYERS.iter().enumerate() {
        let shape: Vec<usize> = if *name == "fc1.weight" {
            vec![300, 784]
        } else {
            shape.to_vec()
        };
        tensors.push(f32_tensor(name, &shape, tag).0);
    }
    let bytes = torch_save_file(tensors);
    let model = TorchNet::new().unwrap();
    let mut p = model.randomize_params(2);
    let before = p.fc1.bias.clone();
    let e = p.load_safetensors_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("fc1.weight"), "{e}");
    assert!(e.contains("256") && e.contains("300"), "{e}");
    // nothing was modified
    assert_eq!(p.fc1.bias, before);

    // a state dict of an `nn.Sequential` (`0.weight`, ...) names no leaf of ours
    let seq: Vec<Tensor> = LAYERS
        .iter()
        .enumerate()
        .map(|(tag, (name, shape))| {
            let name = name
                .replace("fc1", "0")
                .replace("fc2", "2")
                .replace("fc3", "4");
            f32_tensor(&name, shape, tag).0
        })
        .collect();
    let e = p
        .load_safetensors_bytes(&torch_save_file(seq))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc1.weight"), "{e}");
}
