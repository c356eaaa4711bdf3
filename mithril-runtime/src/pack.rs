//! Unpacking the big string constants of generated code.
//!
//! `mithril!` writes the long texts of a model (its `SUMMARY`, `GRAPH_TEXT`, `GRAPH_DOT`,
//! `GRAPH_JSON`, the plan texts, the shape checks, the init table) packed: a deep model's texts
//! repeat themselves layer after layer, and packed they are about a tenth of the Rust source.
//! The packer is `mithril-macros/src/backends/pack.rs`; this module is the unpacker:
//! [`unpack`], a `const fn`, so that a packed text is still a true `&'static str` constant,
//! and [`unpack_string`], the same at run time.
//!
//! # Format
//!
//! A packed text is bytes of printable ASCII (`0x20..=0x7e`), `\n` and `\t`, so that its
//! literal in the generated source (a raw byte string) is as long as the packed text. Every
//! byte but the marker [`MARK`] (`~`) stands for itself. The marker is followed by a number
//! `x` (see below):
//!
//! - `x = 0`: a literal `~`;
//! - `x = 1`: one more number, the value of one byte (any byte the text has that is not
//!   printable ASCII, `\n` or `\t`: the bytes of non-ASCII UTF-8, `\r`, control characters);
//! - `x >= 2`: a back reference: one more number `d`; the next `x - 2 + MIN_MATCH` bytes are a
//!   copy of the bytes `d + 1` back (the copy may overlap what it writes, as in LZ77, so a run
//!   is one reference).
//!
//! A number is written in digits `0x21..=0x7e` (values `0..94`), least significant first: a
//! digit below [`TERMINAL`] ends the number, a digit `t >= TERMINAL` adds `t` times the place
//! value and multiplies the place value by `94 - TERMINAL` for the next digit.

/// The marker byte that starts a back reference or an escaped byte.
pub const MARK: u8 = b'~';
/// The shortest back reference.
pub const MIN_MATCH: usize = 3;
/// Digit values below this end a number (see the module docs).
pub const TERMINAL: usize = 52;
/// The first digit byte; digit value `v` is the byte `DIGIT0 + v`.
pub const DIGIT0: u8 = 0x21;
/// The number of digit values.
pub const DIGITS: usize = 94;

/// Reads one number at `i`: the value and the index after it, or `None` when the text ends
/// inside it or holds a byte that is not a digit.
const fn number(p: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let mut acc: usize = 0;
    let mut place: usize = 1;
    loop {
        if i >= p.len() {
            return None;
        }
        let b = p[i];
        i += 1;
        if b < DIGIT0 || (b - DIGIT0) as usize >= DIGITS {
            return None;
        }
        let d = (b - DIGIT0) as usize;
        let add = match place.checked_mul(d) {
            Some(a) => a,
            None => return None,
        };
        acc = match acc.checked_add(add) {
            Some(a) => a,
            None => return None,
        };
        if d < TERMINAL {
            return Some((acc, i));
        }
        place = match place.checked_mul(DIGITS - TERMINAL) {
            Some(p) => p,
            None => return None,
        };
    }
}

/// Unpacks `packed` into `out`: the number of bytes written, or where the packed text is
/// malformed (a byte index into `packed`) as `Err`. Writes nothing past `out`'s end: a text
/// that unpacks to more than `out.len()` bytes is an error.
pub const fn unpack_into(packed: &[u8], out: &mut [u8]) -> Result<usize, usize> {
    let mut i = 0;
    let mut o = 0;
    while i < packed.len() {
        // a run of literal bytes, copied as one slice
        let mut j = i;
        while j < packed.len() && packed[j] != MARK {
            j += 1;
        }
        if j > i {
            let n = j - i;
            if o + n > out.len() {
                return Err(i);
            }
            let (_, src) = packed.split_at(i);
            let (src, _) = src.split_at(n);
            let (_, dst) = out.split_at_mut(o);
            let (dst, _) = dst.split_at_mut(n);
            dst.copy_from_slice(src);
            o += n;
            i = j;
            continue;
        }
        let at = i;
        let (x, next) = match number(packed, i + 1) {
            Some(v) => v,
            None => return Err(at),
        };
        i = next;
        if x < 2 {
            let byte = if x == 0 {
                MARK
            } else {
                match number(packed, i) {
                    Some((b, next)) if b < 256 => {
                        i = next;
                        b as u8
                    }
                    _ => return Err(at),
                }
            };
            if o >= out.len() {
                return Err(at);
            }
            out[o] = byte;
            o += 1;
            continue;
        }
        let len = x - 2 + MIN_MATCH;
        let dist = match number(packed, i) {
            Some((d, next)) => {
                i = next;
                d + 1
            }
            None => return Err(at),
        };
        if dist > o || len > out.len() - o {
            return Err(at);
        }
        if dist >= len {
            // no overlap: one slice copy
            let (before, after) = out.split_at_mut(o);
            let (_, src) = before.split_at(o - dist);
            let (src, _) = src.split_at(len);
            let (dst, _) = after.split_at_mut(len);
            dst.copy_from_slice(src);
        } else {
            let mut k = 0;
            while k < len {
                out[o + k] = out[o + k - dist];
                k += 1;
            }
        }
        o += len;
    }
    Ok(o)
}

/// Unpacks `packed`, which must unpack to exactly `N` bytes; for constants, evaluated by the
/// compiler:
///
/// ```
/// const B: [u8; 12] = mithril_runtime::pack::unpack::<12>(b"abcabc~%#~\"");
/// assert_eq!(&B, b"abcabcabcabc");
/// ```
///
/// # Panics
///
/// When `packed` is malformed or does not unpack to `N` bytes — in a constant, a compile
/// error. Generated code passes only what the packer wrote for exactly `N` bytes.
pub const fn unpack<const N: usize>(packed: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    match unpack_into(packed, &mut out) {
        Ok(n) if n == N => out,
        Ok(_) => panic!("mithril: a packed text does not have its stated length"),
        Err(_) => panic!("mithril: a packed text is malformed"),
    }
}

/// The number of bytes `packed` unpacks to, or where it is malformed (a byte index) as `Err`.
pub const fn unpacked_len(packed: &[u8]) -> Result<usize, usize> {
    let mut i = 0;
    let mut o: usize = 0;
    while i < packed.len() {
        if packed[i] != MARK {
            i += 1;
            o += 1;
            continue;
        }
        let at = i;
        let (x, next) = match number(packed, i + 1) {
            Some(v) => v,
            None => return Err(at),
        };
        i = next;
        if x < 2 {
            if x == 1 {
                match number(packed, i) {
                    Some((b, next)) if b < 256 => i = next,
                    _ => return Err(at),
                }
            }
            o += 1;
            continue;
        }
        let dist = match number(packed, i) {
            Some((d, next)) => {
                i = next;
                d + 1
            }
            None => return Err(at),
        };
        if dist > o {
            return Err(at);
        }
        o = match o.checked_add(x - 2 + MIN_MATCH) {
            Some(o) => o,
            None => return Err(at),
        };
    }
    Ok(o)
}

/// Unpacks `packed` at run time into a string: an error naming where it is malformed, or
/// when the bytes are not UTF-8.
pub fn unpack_string(packed: &[u8]) -> crate::Result<String> {
    let bad = |at: usize| {
        crate::Error::op(
            "unpack",
            format!("a packed text is malformed at byte {at} of {}", packed.len()),
        )
    };
    let n = unpacked_len(packed).map_err(bad)?;
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| {
        crate::Error::op("unpack", format!("cannot allocate {n} bytes for a packed text"))
    })?;
    out.resize(n, 0);
    unpack_into(packed, &mut out).map_err(bad)?;
    String::from_utf8(out)
        .map_err(|e| crate::Error::op("unpack", format!("a packed text is not UTF-8: {e}")))
}
