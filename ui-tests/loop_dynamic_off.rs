// `dynamic_control_flow: false`: a `while` over a run-time condition, a `for` over a symbolic dim,
// a compile-time `while` that never ends, and (a `for` over a fixed dim unrolled) a `stack` that
// does not run once per step are errors.
mithril::mithril! {
    model Run {
        input x: f32[B, 4];
        input n: i64[];
        let h = x;
        let step = 0;
        while step < n {
            let h = h * 2.0;
            let step = step + 1;
        }
        output y = h;
    }

    model Scan {
        input xs: f32[B, T, 4];
        let h = xs[(.., 0)];
        for t in 0..T {
            let h = h + xs[(.., t)];
        }
        output y = h;
    }

    model Forever {
        input x: f32[B, 4];
        let k = 0;
        let h = x;
        while k < 3, max_steps = 8 {
            let h = h * 2.0;
        }
        output y = h;
    }

    // with `T` fixed the scan unrolls, and each `stack` must run once per step
    model StackSometimes {
        input xs: f32[B, T, 4];
        let h = xs[(.., 0)];
        for t in 0..T {
            let h = h + xs[(.., t)];
            if t > 1 {
                stack hs[(.., t)] = h;
            }
        }
        output y = hs;
    }

    compile RunStatic = Run { dynamic_control_flow: false };
    compile ScanStatic = Scan { dynamic_control_flow: false };
    compile ForeverStatic = Forever { dynamic_control_flow: false };
    compile StackSometimesStatic = StackSometimes { dynamic_control_flow: false, shapes: { xs: [_, 4, 4] } };
}

fn main() {}
