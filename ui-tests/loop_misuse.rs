// A run-time loop's condition is a scalar bool; `output` and `stack` have their places; a
// run-time loop is CPU-only for now.
mithril::mithril! {
    model Cond {
        input x: f32[B, 4];
        let h = x;
        while h * 0.0, max_steps = 3 {
            let h = h * 2.0;
        }
        output y = h;
    }

    model Out {
        input xs: f32[B, T, 4];
        let h = xs[(.., 0)];
        for t in 0..T {
            let h = h + xs[(.., t)];
            output inner = h;
        }
        output y = h;
    }

    model Stacked {
        input x: f32[B, 4];
        input n: i64[];
        let step = 0;
        while step < n {
            stack ys[(.., step)] = x;
            let step = step + 1;
        }
        output y = x;
    }

    model Gpu {
        input xs: f32[B, T, 4];
        let h = xs[(.., 0)];
        for t in 0..T {
            let h = h + xs[(.., t)];
        }
        output y = h;
    }

    model GpuOuter {
        input xs: f32[B, T, 4];
        let enc = Gpu();
        output y = enc(xs);
    }

    // `backend: cuda` lowers run-time loops; a mixed model does not yet
    compile GpuLoop = Gpu { backend: cuda };
    compile MixedLoop = GpuOuter { backend_map: { enc: cuda } };
}

fn main() {}
