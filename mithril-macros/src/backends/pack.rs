//! The packer of the big string constants of generated code (the unpacker and the format are
//! in `mithril-runtime/src/pack.rs`, `mithril::rt::pack`).
//!
//! A deep model's texts — `SUMMARY`, `GRAPH_TEXT`, `GRAPH_DOT`, `GRAPH_JSON`, the plans, the
//! shape checks, the init table — repeat themselves layer after layer: as plain literals they
//! were three quarters of a 100-layer MLP's generated Rust. Packed (LZ77: back references into
//! what came before), a text is a fifth to a third of its length (the 100-layer MLP: 175 KB of
//! text in 38 KB). The packed bytes are printable ASCII, `\n` and `\t` only, written as a raw
//! byte string, so the literal in the source is as long as the packed text.
//!
//! Texts shorter than [`PACK_MIN`] stay plain literals (small models' expansions stay
//! readable). [`str_const`] makes the expression of a `&'static str` constant (the four
//! documented introspection texts): the packed text unpacked by the compiler
//! (`mithril::rt::pack::unpack`, a `const fn`) when a program uses it; [`runtime_text`] the
//! expression of a text the runtime reads (plans, shape checks, the init table): a `static`
//! `mithril::rt::pack::Packed`, unpacked at the first call.

use proc_macro2::TokenStream;
use quote::quote;

/// Texts shorter than this many bytes stay plain string literals.
pub(crate) const PACK_MIN: usize = 2048;

// The format; the same constants as `mithril_runtime::pack` (a test checks they agree).
const MARK: u8 = b'~';
const MIN_MATCH: usize = 3;
const TERMINAL: usize = 52;
const DIGIT0: u8 = 0x21;
const DIGITS: usize = 94;

/// How far back the hash chains look (positions tried per token).
const CHAIN: usize = 48;
/// The longest back reference written (a longer repeat is several).
const MAX_LEN: usize = 1 << 20;
/// A match this long is taken without trying further candidates.
const NICE: usize = 256;

/// The number of digits of `n` (see the format in `mithril::rt::pack`).
fn digits(mut n: usize) -> usize {
    let mut k = 1;
    while n >= TERMINAL {
        n = (n - TERMINAL) / (DIGITS - TERMINAL);
        k += 1;
    }
    k
}

fn put_number(out: &mut Vec<u8>, mut n: usize) {
    while n >= TERMINAL {
        let r = (n - TERMINAL) % (DIGITS - TERMINAL);
        out.push(DIGIT0 + (TERMINAL + r) as u8);
        n = (n - TERMINAL) / (DIGITS - TERMINAL);
    }
    out.push(DIGIT0 + n as u8);
}

/// Whether byte `b` stands for itself in a packed text.
fn plain(b: u8) -> bool {
    b != MARK && ((0x20..=0x7e).contains(&b) || b == b'\n' || b == b'\t')
}

/// The packed length of the character that starts at byte `i` of `s`, and its length in
/// bytes.
fn literal(s: &str, i: usize) -> (usize, usize) {
    let b = s.as_bytes()[i];
    if plain(b) {
        (1, 1)
    } else if b == MARK {
        (2, 1)
    } else {
        let c = s[i..].chars().next().unwrap_or('\0');
        (2 + digits(c as usize), c.len_utf8())
    }
}

/// Writes the character that starts at byte `i` of `s`; its length in bytes.
fn put_literal(out: &mut Vec<u8>, s: &str, i: usize) -> usize {
    let b = s.as_bytes()[i];
    if plain(b) {
        out.push(b);
        1
    } else if b == MARK {
        out.push(MARK);
        put_number(out, 0);
        1
    } else {
        let c = s[i..].chars().next().unwrap_or('\0');
        out.push(MARK);
        put_number(out, 1);
        put_number(out, c as usize);
        c.len_utf8()
    }
}

/// The packed length of a back reference.
fn match_cost(len: usize, dist: usize) -> usize {
    1 + digits(len - MIN_MATCH + 2) + digits(dist - 1)
}

fn hash3(s: &[u8], i: usize) -> usize {
    let v = (s[i] as u32) | (s[i + 1] as u32) << 8 | (s[i + 2] as u32) << 16;
    (v.wrapping_mul(0x9E37_79B1) >> 16) as usize
}

/// The hash chains: the last position with each hash, and for each position the one before
/// it with the same hash.
struct Chains {
    head: Vec<usize>,
    prev: Vec<usize>,
}

const NONE: usize = usize::MAX;

impl Chains {
    fn new(n: usize) -> Self {
        Chains {
            head: vec![NONE; 1 << 16],
            prev: vec![NONE; n],
        }
    }

    fn insert(&mut self, s: &[u8], i: usize) {
        if i + MIN_MATCH <= s.len() {
            let h = hash3(s, i);
            self.prev[i] = self.head[h];
            self.head[h] = i;
        }
    }

    /// The back reference at `i` that saves the most (length, distance, bytes saved), if any
    /// saves anything.
    fn best(&self, s: &[u8], i: usize, lit: &[usize]) -> Option<(usize, usize, usize)> {
        if i + MIN_MATCH > s.len() {
            return None;
        }
        let mut best: Option<(usize, usize, usize)> = None;
        let mut cand = self.head[hash3(s, i)];
        let mut tries = 0;
        while cand != NONE && tries < CHAIN {
            tries += 1;
            let mut len = s[cand..]
                .iter()
                .zip(&s[i..])
                .take_while(|(a, b)| a == b)
                .count()
                .min(MAX_LEN);
            // at most `MAX_LEN` (its number fits the format's digits), ending on a character
            // boundary (the start is one: `i` is, and `s[cand] == s[i]`)
            while i + len < s.len() && s[i + len] & 0xc0 == 0x80 {
                len -= 1;
            }
            if len >= MIN_MATCH {
                let dist = i - cand;
                // what the covered bytes would cost as literals (prefix sums of `lit`)
                let plain_cost = lit[i + len] - lit[i];
                let cost = match_cost(len, dist);
                if plain_cost > cost {
                    let saved = plain_cost - cost;
                    if best.is_none_or(|(_, _, b)| saved > b) {
                        best = Some((len, dist, saved));
                    }
                }
                if len >= NICE {
                    break;
                }
            }
            cand = self.prev[cand];
        }
        best
    }
}

/// Packs `text` (the format is in `mithril::rt::pack`): greedy LZ77 over hash chains, with
/// one step of lazy matching (a literal first when the reference one byte later saves more).
pub(crate) fn pack(text: &str) -> Vec<u8> {
    let s = text.as_bytes();
    let n = s.len();
    // prefix sums of the literal costs (a character's cost at its first byte)
    let mut lit = vec![0usize; n + 1];
    let mut k = 0;
    while k < n {
        let (cost, len) = literal(text, k);
        for j in k..k + len {
            lit[j + 1] = lit[j] + if j == k { cost } else { 0 };
        }
        k += len;
    }
    let mut out = Vec::with_capacity(n / 4 + 16);
    let mut ch = Chains::new(n);
    let mut i = 0;
    // the best reference at `i` when already looked up (lazy matching)
    let mut pending: Option<Option<(usize, usize, usize)>> = None;
    while i < n {
        let here = pending.take().unwrap_or_else(|| ch.best(s, i, &lit));
        ch.insert(s, i);
        match here {
            Some((len, dist, saved)) => {
                let next = ch.best(s, i + 1, &lit);
                if let Some((_, _, saved_next)) = next {
                    if plain(s[i]) && saved_next > saved + 1 {
                        out.push(s[i]);
                        i += 1;
                        pending = Some(next);
                        continue;
                    }
                }
                out.push(MARK);
                put_number(&mut out, len - MIN_MATCH + 2);
                put_number(&mut out, dist - 1);
                for k in i + 1..i + len {
                    ch.insert(s, k);
                }
                i += len;
            }
            None => {
                let len = put_literal(&mut out, text, i);
                for k in i + 1..i + len {
                    ch.insert(s, k);
                }
                i += len;
            }
        }
    }
    out
}

/// A raw byte string literal of `packed` (printable ASCII, `\n` and `\t`): as many `#` as it
/// takes for no `"#…` inside to end it.
fn raw_literal(packed: &[u8]) -> TokenStream {
    let body = String::from_utf8_lossy(packed);
    let mut hashes = String::new();
    while body.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }
    format!("br{hashes}\"{body}\"{hashes}")
        .parse()
        .unwrap_or_else(|_| {
            let lit = proc_macro2::Literal::byte_string(packed);
            quote!(#lit)
        })
}

/// The expression of a `&'static str` constant holding `text`: a plain literal below
/// [`PACK_MIN`] bytes, else the packed text unpacked by the compiler.
pub(crate) fn str_const(text: &str) -> TokenStream {
    if text.len() < PACK_MIN {
        return quote!(#text);
    }
    let n = proc_macro2::Literal::usize_unsuffixed(text.len());
    let lit = raw_literal(&pack(text));
    quote!({
        const __B: ::mithril::rt::pack::Unpacked<#n> = ::mithril::rt::pack::unpack::<#n>(#lit);
        ::mithril::rt::pack::Unpacked::as_str(&__B)
    })
}

/// The expression of a `Result<&'static str>` holding `text`, for the runtime to read: a
/// plain literal below [`PACK_MIN`] bytes, else the packed text in a `static`
/// `mithril::rt::pack::Packed`, unpacked at the first call.
pub(crate) fn runtime_text(text: &str) -> TokenStream {
    if text.len() < PACK_MIN {
        return quote!(::mithril::rt::Result::<&'static str>::Ok(#text));
    }
    let lit = raw_literal(&pack(text));
    quote!({
        static __T: ::mithril::rt::pack::Packed = ::mithril::rt::pack::Packed::new(#lit);
        __T.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(text: &str) -> Vec<u8> {
        let p = pack(text);
        assert!(
            p.iter().all(|&b| plain(b) || b == MARK),
            "packed bytes not printable"
        );
        let back = mithril_runtime::pack::unpack_string(&p).expect("unpacks");
        assert_eq!(back, text);
        let mut out = vec![0u8; text.len()];
        assert_eq!(
            mithril_runtime::pack::unpack_into(&p, &mut out),
            Ok(text.len())
        );
        assert_eq!(out, text.as_bytes());
        p
    }

    #[test]
    fn format_constants_agree_with_the_runtime() {
        use mithril_runtime::pack as rt;
        assert_eq!(
            (MARK, MIN_MATCH, TERMINAL, DIGIT0, DIGITS),
            (
                rt::MARK,
                rt::MIN_MATCH,
                rt::TERMINAL,
                rt::DIGIT0,
                rt::DIGITS
            )
        );
    }

    #[test]
    fn numbers_round_trip_and_digits_counts_them() {
        for n in (0..20_000).chain([93_963, 93_964, 1 << 20, usize::MAX / 100]) {
            let mut out = vec![MARK];
            put_number(&mut out, 0);
            // `~` `0`, then `~` `1` `n` as an escaped byte is limited to 256; test numbers
            // through a back reference's distance instead: "a" then a reference
            let mut p = b"a".to_vec();
            p.push(MARK);
            put_number(&mut p, 2); // length MIN_MATCH
            let before = p.len();
            put_number(&mut p, n);
            assert_eq!(p.len() - before, digits(n), "{n}");
            // the distance is n + 1 > 1 byte written: malformed, reported at the marker
            let r = mithril_runtime::pack::unpacked_len(&p);
            if n == 0 {
                assert_eq!(r, Ok(1 + MIN_MATCH));
            } else {
                assert_eq!(r, Err(1), "{n}");
            }
        }
    }

    #[test]
    fn edge_cases_round_trip() {
        assert!(round_trip("").is_empty());
        assert_eq!(round_trip("a"), b"a");
        assert_eq!(round_trip("~"), b"~!");
        round_trip("~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~");
        round_trip("\r\n\0\x01\x7f\u{80}é—😀 ×");
        // a long run is one overlapping reference
        let run = "x".repeat(100_000);
        let p = round_trip(&run);
        assert!(p.len() < 12, "{}", p.len());
        // quotes and hashes: the raw literal's delimiters
        round_trip(&"\"#\"##\"###".repeat(200));
    }

    #[test]
    fn layered_text_packs_small() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!(
                "N f32 s{i} fmm {} {} @0 \"`matmul` of `h{i}` in `fc{i}`\"\nC fc{i}.weight 64,64\n",
                2 * i,
                2 * i + 1
            ));
        }
        let p = round_trip(&text);
        // five numbers change in every 73-byte layer: zlib gets 1444 bytes, this 2858
        assert!(p.len() * 2 < text.len(), "{} of {}", p.len(), text.len());
    }

    #[test]
    fn unpack_is_a_const_fn() {
        use mithril_runtime::pack::{unpack, Unpacked};
        const TEXT: &str = "abcabcabcabc ~ abcabcabcabc";
        // the packed form of TEXT, checked against the packer below
        const B: Unpacked<{ TEXT.len() }> = unpack::<{ TEXT.len() }>(b"abc~)# ~! ~,/");
        const S: &str = Unpacked::as_str(&B);
        let s: &'static str = S;
        assert_eq!(pack(TEXT), b"abc~)# ~! ~,/");
        assert_eq!(s, TEXT);
    }

    /// Packed bytes: `~` then the numbers, after the literal `head`.
    fn packed(head: &str, refs: &[&[usize]]) -> Vec<u8> {
        let mut p = head.as_bytes().to_vec();
        for r in refs {
            p.push(MARK);
            for &n in r.iter() {
                put_number(&mut p, n);
            }
        }
        p
    }

    #[test]
    fn what_would_not_be_utf8_is_malformed() {
        use mithril_runtime::pack::unpack_string;
        let e_acute = 0xe9; // é: bytes c3 a9
                            // the well-formed forms unpack
        assert_eq!(unpack_string(&packed("", &[&[1, e_acute]])).unwrap(), "é");
        assert_eq!(
            unpack_string(&packed("a", &[&[1, e_acute], &[2, 2]])).unwrap(),
            "aéaé"
        );
        // a back reference starting inside a character
        assert!(unpack_string(&packed("", &[&[1, e_acute], &[2, 0]])).is_err());
        // ... ending inside one (`aaé` then 3 bytes 4 back: `aa` and the first byte of `é`)
        assert!(unpack_string(&packed("aa", &[&[1, e_acute], &[2, 3]])).is_err());
        // ... overlapping, cut inside one (`é` repeated for 3 bytes)
        assert!(unpack_string(&packed("", &[&[1, e_acute], &[2, 1]])).is_err());
        // a surrogate, a value past the last scalar value, a non-ASCII literal byte
        assert!(unpack_string(&packed("", &[&[1, 0xd800]])).is_err());
        assert!(unpack_string(&packed("", &[&[1, 0x11_0000]])).is_err());
        assert!(unpack_string(&[b'a', 0xc3, 0xa9]).is_err());
        // a reference before the start, a number cut short, too many digits
        assert!(unpack_string(&packed("ab", &[&[2, 2]])).is_err());
        assert!(unpack_string(b"abc~").is_err());
        assert!(unpack_string(b"abc~\x7e\x7e\x7e\x7e\x7e!").is_err());
    }

    #[test]
    fn str_const_is_plain_below_the_threshold() {
        assert_eq!(str_const("short").to_string(), "\"short\"");
        let long = "layer 1\n".repeat(400);
        let ts = str_const(&long).to_string();
        assert!(ts.contains("unpack"), "{ts}");
        assert!(ts.len() < long.len() / 4, "{}", ts.len());
        assert_eq!(
            runtime_text("short").to_string(),
            quote!(::mithril::rt::Result::<&'static str>::Ok("short")).to_string()
        );
        let ts = runtime_text(&long).to_string();
        assert!(ts.contains("Packed :: new"), "{ts}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_strings_round_trip(s in any::<String>()) {
            round_trip(&s);
        }

        #[test]
        fn repetitive_strings_round_trip(
            parts in proptest::collection::vec("[a-c~\"#\\n]{0,6}|é|\r|\u{7f}", 1..8),
            picks in proptest::collection::vec(0usize..8, 0..400),
        ) {
            let text: String = picks.iter().map(|&k| parts[k % parts.len()].as_str()).collect();
            round_trip(&text);
        }

        #[test]
        fn malformed_packed_texts_are_errors_not_panics(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = mithril_runtime::pack::unpack_string(&p);
            let mut out = [0u8; 32];
            let _ = mithril_runtime::pack::unpack_into(&p, &mut out);
        }
    }
}
