//! aarch64 int8 kernel: `sdot` (the Armv8.2 dot-product extension, `FEAT_DotProd`), four
//! `i8·i8` products summed into each `i32` lane per instruction.
//!
//! The packed B layout of the module (per panel of 16 columns, per k-group of 4: each column's
//! 4 weights consecutive, 64 bytes) is `sdot`'s vector operand as it lies: one 16-byte load
//! holds 4 columns × 4 k. The A operand is the by-lane form `sdot vd.4s, vn.16b, vm.4b[r]`: one
//! register holds the 4 k-bytes of up to 4 rows (lane `r` = row `r`), converted from the stored
//! `u8` `q + 128` back to the signed `q` with one `eor 0x80`, so no column-sum correction is
//! needed (the products are exact in `i32` as in the other paths, and the results equal them
//! bit for bit).
//!
//! `sdot` is written with `asm!` (the dot-product intrinsics are not stable Rust); the kernels
//! are `#[target_feature(enable = "neon,dotprod")]` and chosen only when
//! `is_aarch64_feature_detected!("dotprod")` holds.

use super::{PANEL, TILE_W};
use std::arch::aarch64::*;
use std::arch::asm;

/// `acc.4s += Σ_t b.16b[4j + t] · a.4b[L][t]` for each lane `j`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_lane<const L: u32>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{l}]",
        acc = inout(vreg) acc,
        b = in(vreg) b,
        a = in(vreg) a,
        l = const L,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The `sdot` kernel (the module's `Kern`): `R <= 4` rows × `V` panels of 16 columns, with
/// `4·R·V <= 16` accumulator registers.
///
/// # Safety
/// The CPU has `dotprod`; A has `R` rows of `4·kg` readable bytes (stride `lda`); `V` panels of
/// `kg·64` bytes at `b` (stride `pstride`); the tile holds `R` rows of [`TILE_W`].
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn k_sdot<const R: usize, const V: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    pstride: usize,
    _sums: *const i32,
    tile: *mut i32,
) {
    const { assert!(R >= 1 && R <= 4 && 4 * R * V <= 16) };
    let mut acc = [[vdupq_n_s32(0); 16]; R];
    let flip = vdupq_n_u8(0x80);
    for g in 0..kg {
        // the 4 k-bytes of each row into lane r (lanes past R stay 0x80 -> 0 after the flip,
        // never read)
        let mut av = vdupq_n_u32(0x8080_8080);
        for r in 0..R {
            let w = (a.add(r * lda + 4 * g) as *const u32).read_unaligned();
            av = match r {
                0 => vsetq_lane_u32::<0>(w, av),
                1 => vsetq_lane_u32::<1>(w, av),
                2 => vsetq_lane_u32::<2>(w, av),
                _ => vsetq_lane_u32::<3>(w, av),
            };
        }
        let av = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(av), flip));
        for v in 0..V {
            let bp = b.add(v * pstride + g * 64);
            for c in 0..4 {
                let bv = vld1q_s8(bp.add(16 * c));
                for (r, accr) in acc.iter_mut().enumerate() {
                    let s = &mut accr[4 * v + c];
                    *s = match r {
                        0 => sdot_lane::<0>(*s, bv, av),
                        1 => sdot_lane::<1>(*s, bv, av),
                        2 => sdot_lane::<2>(*s, bv, av),
                        _ => sdot_lane::<3>(*s, bv, av),
                    };
                }
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        for v in 0..V {
            for c in 0..4 {
                vst1q_s32(tile.add(r * TILE_W + v * PANEL + 4 * c), accr[4 * v + c]);
            }
        }
    }
}
