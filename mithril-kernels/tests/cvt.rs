//! The narrow-float conversions against the `half` crate, bit for bit, and every slice-converter
//! path against the element functions.

use half::{bf16, f16};
use mithril_kernels::cvt::*;
use mithril_kernels::isa::{with_isa, Isa};

#[test]
fn widening_matches_half_on_all_65536_inputs() {
    for b in 0..=u16::MAX {
        let want = f16::from_bits(b).to_f32().to_bits();
        assert_eq!(f16_to_f32(b).to_bits(), want, "f16 {b:#06x}");
        let want = bf16::from_bits(b).to_f32().to_bits();
        assert_eq!(bf16_to_f32(b).to_bits(), want, "bf16 {b:#06x}");
    }
}

/// Sampled f32 bit patterns: a stride over all 2³² plus, for every exponent and sign, mantissas
/// around the f16 and bf16 rounding points (ties, just below, just above).
fn f32_samples() -> impl Iterator<Item = u32> {
    let stride = (0..=u32::MAX / 997).map(|i| i.wrapping_mul(997));
    let ties = (0..512u32).flat_map(|se| {
        let base = se << 23;
        [
            0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001,
            0x18000, 0x7f_ffff, 0x7f_e000, 0x40_0000, 0x40_1000,
        ]
        .into_iter()
        .flat_map(move |m| (0..8u32).map(move |k| base | ((m ^ (k << 17)) & 0x7f_ffff)))
    });
    stride.chain(ties)
}

#[test]
fn narrowing_matches_half() {
    let mut n = 0u64;
    for b in f32_samples() {
        let f = f32::from_bits(b);
        assert_eq!(
            f32_to_f16(f),
            f16::from_f32(f).to_bits(),
            "f16 of {b:#010x}"
        );
        assert_eq!(
            f32_to_bf16(f),
            bf16::from_f32(f).to_bits(),
            "bf16 of {b:#010x}"
        );
        n += 1;
    }
    assert!(n > 4_000_000);
}

#[test]
fn slice_converters_every_isa() {
    let bits: Vec<u32> = f32_samples().step_by(7).take(70_000).collect();
    let xs: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    let hs: Vec<f16> = (0..=u16::MAX)
        .map(f16::from_bits)
        .chain([f16::ONE; 7])
        .collect();
    let bs: Vec<bf16> = (0..=u16::MAX)
        .map(bf16::from_bits)
        .chain([bf16::ONE; 7])
        .collect();
    for isa in Isa::available() {
        for n in [0usize, 1, 7, 15, 16, 17, 31, 33, 100, 1000, 65536] {
            for off in [0usize, 1] {
                with_isa(isa, || {
                    let mut o = vec![0f32; n + off];
                    f16_to_f32_slice(&hs[off..off + n], &mut o[off..]);
                    for i in 0..n {
                        assert_eq!(
                            o[off + i].to_bits(),
                            hs[off + i].to_f32().to_bits(),
                            "{isa:?} f16->f32 {i}"
                        );
                    }
                    bf16_to_f32_slice(&bs[off..off + n], &mut o[off..]);
                    for i in 0..n {
                        assert_eq!(
                            o[off + i].to_bits(),
                            bs[off + i].to_f32().to_bits(),
                            "{isa:?} bf16->f32 {i}"
                        );
                    }
                    let mut h = vec![f16::ZERO; n + off];
                    f32_to_f16_slice(&xs[off..off + n], &mut h[off..]);
                    for i in 0..n {
                        assert_eq!(
                            h[off + i].to_bits(),
                            f16::from_f32(xs[off + i]).to_bits(),
                            "{isa:?} f32->f16 {:#x}",
                            bits[off + i]
                        );
                    }
                    let mut b = vec![bf16::ZERO; n + off];
                    f32_to_bf16_slice(&xs[off..off + n], &mut b[off..]);
                    for i in 0..n {
                        assert_eq!(
                            b[off + i].to_bits(),
                            bf16::from_f32(xs[off + i]).to_bits(),
                            "{isa:?} f32->bf16"
                        );
                    }
                });
            }
        }
    }
}
