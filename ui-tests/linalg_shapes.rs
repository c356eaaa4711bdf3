// Shape errors of the linear-algebra, triangle and stack primitives name the op and the shapes.
mithril::mithril! {
    model Net {
        input m: f32[B, 3, 4];
        input a: f32[3, 3];
        input b: f32[4, 2];
        input v: f32[3];
        output l = cholesky(m);
        output x = solve_triangular(a, b);
        output xv = solve_triangular(a, v);
        output t = tril(v);
        output s = stack(a, b);
    }
}

fn main() {}
