//! The mobile target (`target_hardware: "mobile"`): a small model compiled for it and checked
//! against an f64 reference, on the baseline path and on the vector path (NEON on aarch64). This
//! is the model test `.ci/run` cross-compiles for `aarch64-unknown-linux-gnu` and runs under
//! qemu; on x86-64 it runs with `cargo test --workspace` as an ordinary test.

#[cfg(test)]
mod tests {
    use mithril::ndarray::{Array2, ArrayView2};
    use mithril::prelude::*;
    use mithril::rt::isa::{self, with_isa, Isa};

    mithril! {
        model Tiny {
            input x: f32[B, 13];
            let h = relu(Linear(17)(x));
            let h = tanh(Linear(9)(h));
            output y = softmax(Linear(5)(h));
        }

        compile TinyArm = Tiny {
            target_hardware: "mobile",
            mobile: { platform: linux, arch: "arm64-v8a", quantization: none, optimize_size: true },
            inference: true,
        };

        /// Only the int8 products, bias adds and a `relu` (each rounded once, the same way on
        /// every path).
        model TinyLin {
            input x: f32[B, 13];
            let h = relu(Linear(17)(x));
            output y = Linear(5)(h);
        }

        compile TinyArmQ = TinyLin {
            target_hardware: "mobile",
            mobile: { platform: linux, arch: "arm64-v8a", quantization: int8 },
            inference: true,
        };
    }

    /// `act(x · Wᵀ + b)` in f64.
    fn layer(x: &[Vec<f64>], w: ArrayView2<f32>, b: &[f32], act: fn(f64) -> f64) -> Vec<Vec<f64>> {
        x.iter()
            .map(|row| {
                (0..w.nrows())
                    .map(|j| {
                        let s: f64 = (0..w.ncols()).map(|k| row[k] * w[[j, k]] as f64).sum();
                        act(s + b[j] as f64)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn mobile_model_matches_f64_reference_on_every_path() {
        assert_eq!(
            TinyArm::MOBILE,
            Some("linux arm64-v8a (aarch64-unknown-linux-gnu), quantization none, optimize_size true")
        );
        #[cfg(target_arch = "aarch64")]
        assert_eq!(isa::detected(), Isa::Neon, "NEON is detected on aarch64");
        let model = TinyArm::new().unwrap();
        let p = model.randomize_params(3);
        // batch 1 takes the GEMV path, 9 the packed GEMM
        for batch in [1usize, 9] {
            let x = Array2::from_shape_fn((batch, 13), |(i, j)| ((i * 13 + j) as f32 * 0.37).sin());
            let xs: Vec<Vec<f64>> = x
                .rows()
                .into_iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect();
            let h = layer(
                &xs,
                p.linear_0.weight.view(),
                p.linear_0.bias.as_slice().unwrap(),
                |v| v.max(0.0),
            );
            let h = layer(
                &h,
                p.linear_1.weight.view(),
                p.linear_1.bias.as_slice().unwrap(),
                f64::tanh,
            );
            let z = layer(
                &h,
                p.linear_2.weight.view(),
                p.linear_2.bias.as_slice().unwrap(),
                |v| v,
            );
            let mut levels = vec![Isa::Scalar];
            levels.extend(Isa::available().filter(|&i| i != Isa::Scalar));
            for level in levels {
                let y = with_isa(level, || {
                    assert_eq!(isa::active(), level);
                    model.evaluate(&p, TinyArmInputs { x: x.view() }).unwrap().y
                });
                assert_eq!(y.shape(), &[batch, 5]);
                for i in 0..batch {
                    let m = z[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = z[i].iter().map(|v| (v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    for j in 0..5 {
                        let want = e[j] / s;
                        let got = y[[i, j]] as f64;
                        assert!(
                            (got - want).abs() <= 2e-6,
                            "{level:?} b={batch} [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// int8 (`mobile.quantization: int8`): the integer products are exact, so every path (the
    /// scalar one and `sdot` on aarch64, VNNI / AVX2 on x86-64) gives the same outputs bit for
    /// bit, and they stay close to the f32 model.
    #[test]
    fn mobile_int8_model_is_the_same_on_every_path() {
        assert_eq!(
            TinyArmQ::MOBILE,
            Some("linux arm64-v8a (aarch64-unknown-linux-gnu), quantization int8, optimize_size false")
        );
        let model = TinyArmQ::new().unwrap();
        let p = model.randomize_params(3);
        let qp = model.quantize(&p).unwrap();
        for batch in [1usize, 9] {
            let x = Array2::from_shape_fn((batch, 13), |(i, j)| ((i * 13 + j) as f32 * 0.37).sin());
            let f = model
                .evaluate(&p, TinyArmQInputs { x: x.view() })
                .unwrap()
                .y;
            let base = with_isa(Isa::Scalar, || {
                model
                    .evaluate_quantized(&qp, TinyArmQInputs { x: x.view() })
                    .unwrap()
                    .y
            });
            let top = f.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in base.iter().zip(f.iter()) {
                assert!((a - b).abs() < 0.05 * top, "int8 {a} vs f32 {b}");
            }
            assert!(base != f, "the int8 path ran");
            for level in Isa::available() {
                let y = with_isa(level, || {
                    model
                        .evaluate_quantized(&qp, TinyArmQInputs { x: x.view() })
                        .unwrap()
                        .y
                });
                assert_eq!(y, base, "{level:?} b={batch}");
            }
        }
    }
}
