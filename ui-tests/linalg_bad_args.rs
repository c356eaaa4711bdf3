// Attribute and dtype errors of `arange`, `eigvalsh` and `solve_triangular`.
mithril::mithril! {
    model Net {
        input k: i64[T, T];
        input f: f32[T, T];
        output r0 = arange(0, 4, 0);
        output r1 = arange(1, T);
        output r2 = arange(0, 4, dtype = bool);
        output e = eigvalsh(k);
        output x = solve_triangular(f, k);
        output y = solve_triangular(k, k);
    }
}

fn main() {}
