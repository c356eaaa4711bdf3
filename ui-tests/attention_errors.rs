// `attention`'s compile errors, each spanned on the call and naming the shapes or dtypes
// involved.
mithril::mithril! {
    model HeadsNotMultiple {
        input q: f32[1, 3, 4, 8];
        input k: f32[1, 2, 5, 8];
        output y = attention(q, k, k);
    }

    model HeadDim {
        input q: f32[1, 2, 4, 8];
        input k: f32[1, 2, 5, 6];
        output y = attention(q, k, k);
    }

    model BadMask {
        input q: f32[1, 2, 4, 8];
        input k: f32[1, 2, 5, 8];
        input m: f32[4, 4];
        output y = attention(q, k, k, m);
    }

    model IntMask {
        input q: f32[1, 2, 4, 8];
        input k: f32[1, 2, 5, 8];
        input m: i64[4, 5];
        output y = attention(q, k, k, mask = m);
    }

    model Ints {
        input q: i32[2, 4, 8];
        output y = attention(q, q, q);
    }

    model Rank2 {
        input q: f32[4, 8];
        output y = attention(q, q, q);
    }

    model BadDropout {
        input q: f32[1, 2, 4, 8];
        output y = attention(q, q, q, dropout = 1.5);
    }

    model DropOnCuda {
        input q: f32[1, 2, 4, 8];
        output y = attention(q, q, q, dropout = 0.1);
    }

    compile DropOnCudaGpu = DropOnCuda { backend: cuda };
}

fn main() {}
