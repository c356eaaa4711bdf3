mithril::mithril! {
    model Net {
        input s: f32[];
        output y = Linear(4)(s);
    }

    // `[N, C, ...]` (BatchNorm1d, GroupNorm): rank 2 or more, and a known rank
    model ShortRank {
        input x: f32[N];
        output y = BatchNorm1d()(x);
    }

    model OpenRank {
        input x: f32[..., 3];
        output y = GroupNorm(num_groups = 1)(x);
    }

    // `...` in the middle: only in a submodel's input (such a model has no physical model of
    // its own), once
    model Inner {
        input x: f32[N, ..., 3];
        output y = x;
    }

    compile InnerOwn = Inner {};

    model Twice(k: int) {
        input x: [N, ..., C, ...];
        output y = x * k;
    }

    model UseTwice {
        input x: f32[2, 3, 4];
        output y = Twice(1)(x);
    }
}

fn main() {}
