//! Unpacking the long texts of generated code.
//!
//! `mithril!` writes the long texts of a model packed: a deep model's texts repeat themselves
//! layer after layer, and packed they are a fraction of the Rust source. The packer is
//! `mithril-macros/src/backends/pack.rs`; this module is the unpacker, in two forms:
//!
//! - [`unpack`], a `const fn`, for the texts that are documented `&'static str` constants
//!   (`SUMMARY`, `GRAPH_TEXT`, `GRAPH_DOT`, `GRAPH_JSON`): the compiler unpacks them when a
//!   program uses them, and they stay true constants
//!   (`const B: Unpacked<N> = unpack::<N>(b"…"); Unpacked::as_str(&B)`);
//! - [`Packed`], for the texts the runtime reads once (the plans, the shape checks of inputs
//!   and params, the init table of `randomize_params`): unpacked at the first use into a
//!   `OnceLock`, so they cost the compiler nothing.
//!
//! # Format
//!
//! A packed text is bytes of printable ASCII (`0x20..=0x7e`), `\n` and `\t`, so that its
//! literal in the generated source (a raw byte string) is as long as the packed text. Every
//! byte but the marker [`MARK`] (`~`) stands for itself. The marker is followed by a number
//! `x` (see below):
//!
//! - `x = 0`: a literal `~`;
//! - `x = 1`: one more number, a Unicode scalar value: one character that is not printable
//!   ASCII, `\n` or `\t` (non-ASCII characters, `\r`, control characters), in UTF-8;
//! - `x >= 2`: a back reference: one more number `d`; the next `x - 2 + MIN_MATCH` bytes are
//!   a copy of the bytes `d + 1` back (the copy may overlap what it writes, as in LZ77, so a
//!   run is one reference).
//!
//! A number is written in at most [`MAX_DIGITS`] digits `0x21..=0x7e` (values `0..94`), least
//! significant first: a digit `t` below [`TERMINAL`] ends the number, a digit `t >= TERMINAL`
//! adds `t` times the place value and multiplies the place value by `94 - TERMINAL` for the
//! next digit.
//!
//! The unpacker checks that what it writes is UTF-8 as it goes (literal bytes are ASCII, an
//! escaped character is a scalar value, a back reference starts on a character boundary and
//! ends on one), so an unpacked text is a `str` without a second pass over its bytes (which
//! would cost the compiler more than the unpacking: constant evaluation is slow per byte).

use std::sync::OnceLock;

/// The marker byte that starts a back reference or an escaped character.
pub const MARK: u8 = b'~';
/// The shortest back reference.
pub const MIN_MATCH: usize = 3;
/// Digit values below this end a number (see the module docs).
pub const TERMINAL: usize = 52;
/// The first digit byte; digit value `v` is the byte `DIGIT0 + v`.
pub const DIGIT0: u8 = 0x21;
/// The number of digit values.
pub const DIGITS: usize = 94;
/// The most digits a number has (so that no number overflows a `usize`, even of 32 bits).
pub const MAX_DIGITS: usize = 5;

/// Reads one number at index `$i` of `$p` into `$v`, advancing `$i`; on a malformed number
/// returns `Err($at)` from the enclosing function. A macro, not a function: a call costs
/// constant evaluation more than the loop.
macro_rules! number {
    ($p:ident, $i:ident, $v:ident, $at:expr) => {
        let mut $v: usize = 0;
        let mut place: usize = 1;
        let mut k = 0;
        loop {
            if $i >= $p.len() || k == MAX_DIGITS {
                return Err($at);
            }
            let b = $p[$i];
            $i += 1;
            k += 1;
            if b < DIGIT0 || (b - DIGIT0) as usize >= DIGITS {
                return Err($at);
            }
            let d = (b - DIGIT0) as usize;
            $v += place * d;
            if d < TERMINAL {
                break;
            }
            place *= DIGITS - TERMINAL;
        }
    };
}

/// Whether `b` is a UTF-8 continuation byte (not the start of a character).
const fn continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// Unpacks `packed` into `out`: the number of bytes written, or where the packed text is
/// malformed (a byte index into `packed`) as `Err`. Writes nothing past `out`'s end: a text
/// that unpacks to more than `out.len()` bytes is an error. On success `out[..n]` is UTF-8.
pub const fn unpack_into(packed: &[u8], out: &mut [u8]) -> Result<usize, usize> {
    let mut i = 0;
    let mut o = 0;
    while i < packed.len() {
        // a run of literal bytes (ASCII)
        let mut j = i;
        while j < packed.len() && packed[j] != MARK {
            if packed[j] >= 0x80 {
                return Err(j);
            }
            j += 1;
        }
        if j > i {
            let n = j - i;
            if n > out.len() - o {
                return Err(i);
            }
            // SAFETY: `i + n <= packed.len()` and `o + n <= out.len()` (checked above); two
            // distinct borrows do not overlap
            unsafe {
                core::ptr::copy_nonoverlapping(packed.as_ptr().add(i), out.as_mut_ptr().add(o), n);
            }
            o += n;
            i = j;
            continue;
        }
        let at = i;
        i += 1;
        number!(packed, i, x, at);
        if x == 0 {
            if o >= out.len() {
                return Err(at);
            }
            out[o] = MARK;
            o += 1;
            continue;
        }
        if x == 1 {
            number!(packed, i, c, at);
            let ch = match char::from_u32(c as u32) {
                Some(ch) if c <= 0x10ffff => ch,
                _ => return Err(at),
            };
            let n = ch.len_utf8();
            if n > out.len() - o {
                return Err(at);
            }
            let (_, rest) = out.split_at_mut(o);
            let (dst, _) = rest.split_at_mut(n);
            ch.encode_utf8(dst);
            o += n;
            continue;
        }
        let len = x - 2 + MIN_MATCH;
        number!(packed, i, d, at);
        let dist = d + 1;
        if dist > o || len > out.len() - o {
            return Err(at);
        }
        let src = o - dist;
        // UTF-8: the copy starts on a character boundary and ends on one (for an overlapping
        // copy, the repeated `out[src..o]` is cut `len % dist` bytes into its last repeat)
        let end = if dist >= len {
            src + len
        } else {
            src + len % dist
        };
        if continuation(out[src]) || (end < o && continuation(out[end])) {
            return Err(at);
        }
        if dist >= len {
            // SAFETY: `src + len <= o` and `o + len <= out.len()` (checked above): both
            // ranges are inside `out` and do not overlap
            unsafe {
                let p = out.as_mut_ptr();
                core::ptr::copy_nonoverlapping(p.add(src), p.add(o), len);
            }
        } else {
            let mut k = 0;
            while k < len {
                out[o + k] = out[src + k];
                k += 1;
            }
        }
        o += len;
    }
    Ok(o)
}

/// The number of bytes `packed` unpacks to, or where it is malformed (a byte index) as `Err`
/// (only the form is checked here; [`unpack_into`] checks the rest).
pub fn unpacked_len(packed: &[u8]) -> Result<usize, usize> {
    let mut i = 0;
    let mut o: usize = 0;
    while i < packed.len() {
        if packed[i] != MARK {
            i += 1;
            o += 1;
            continue;
        }
        let at = i;
        i += 1;
        number!(packed, i, x, at);
        let n = if x == 0 {
            1
        } else if x == 1 {
            number!(packed, i, c, at);
            match char::from_u32(c as u32) {
                Some(ch) => ch.len_utf8(),
                None => return Err(at),
            }
        } else {
            number!(packed, i, d, at);
            if d >= o {
                return Err(at);
            }
            x - 2 + MIN_MATCH
        };
        o = o.checked_add(n).ok_or(at)?;
    }
    Ok(o)
}

/// An unpacked text of `N` bytes, UTF-8 by construction ([`unpack`] is the only way to make
/// one). [`Unpacked::as_str`] gives the `&'static str` of a constant:
///
/// ```
/// use mithril_runtime::pack::{unpack, Unpacked};
/// const B: Unpacked<27> = unpack::<27>(b"abc~)# ~! ~,/");
/// const S: &str = Unpacked::as_str(&B);
/// let s: &'static str = S;
/// assert_eq!(s, "abcabcabcabc ~ abcabcabcabc");
/// ```
pub struct Unpacked<const N: usize>([u8; N]);

impl<const N: usize> Unpacked<N> {
    /// The text.
    pub const fn as_str(&self) -> &str {
        // SAFETY: `unpack`, the only constructor, returns only what `unpack_into` wrote in
        // full and accepted, which is UTF-8 (see its checks)
        unsafe { core::str::from_utf8_unchecked(&self.0) }
    }
}

/// Unpacks `packed`, which must unpack to exactly `N` bytes; for constants, evaluated by the
/// compiler (see [`Unpacked`]).
///
/// # Panics
///
/// When `packed` is malformed or does not unpack to `N` bytes — in a constant, a compile
/// error. Generated code passes only what the packer wrote for exactly `N` bytes.
pub const fn unpack<const N: usize>(packed: &[u8]) -> Unpacked<N> {
    let mut out = [0u8; N];
    match unpack_into(packed, &mut out) {
        Ok(n) if n == N => Unpacked(out),
        Ok(_) => panic!("mithril: a packed text does not have its stated length"),
        Err(_) => panic!("mithril: a packed text is malformed"),
    }
}

/// Unpacks `packed` at run time into a string, or an error naming where it is malformed.
pub fn unpack_string(packed: &[u8]) -> crate::Result<String> {
    let bad = |at: usize| {
        crate::Error::op(
            "unpack",
            format!(
                "a packed text is malformed at byte {at} of {}",
                packed.len()
            ),
        )
    };
    let n = unpacked_len(packed).map_err(bad)?;
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| {
        crate::Error::op(
            "unpack",
            format!("cannot allocate {n} bytes for a packed text"),
        )
    })?;
    out.resize(n, 0);
    match unpack_into(packed, &mut out) {
        Ok(k) if k == n => {}
        Ok(_) => return Err(bad(packed.len())),
        Err(at) => return Err(bad(at)),
    }
    String::from_utf8(out)
        .map_err(|e| crate::Error::op("unpack", format!("a packed text is not UTF-8: {e}")))
}

/// A packed text the runtime reads: unpacked at the first [`Packed::get`], kept for the
/// process. Generated code holds one in a `static`:
///
/// ```
/// use mithril_runtime::pack::Packed;
/// static PLAN: Packed = Packed::new(b"abc~)# ~! ~,/");
/// assert_eq!(PLAN.get().unwrap(), "abcabcabcabc ~ abcabcabcabc");
/// ```
pub struct Packed {
    packed: &'static [u8],
    text: OnceLock<std::result::Result<String, String>>,
}

impl Packed {
    /// The packed text `packed`, not unpacked yet.
    pub const fn new(packed: &'static [u8]) -> Self {
        Packed {
            packed,
            text: OnceLock::new(),
        }
    }

    /// The text, unpacked at the first call; an error when the packed text is malformed.
    pub fn get(&'static self) -> crate::Result<&'static str> {
        match self
            .text
            .get_or_init(|| unpack_string(self.packed).map_err(|e| e.to_string()))
        {
            Ok(s) => Ok(s),
            Err(e) => Err(crate::Error::op("unpack", e.clone())),
        }
    }
}
