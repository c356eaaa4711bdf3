// Run-time control flow and `is_training` run on the CPU and on `backend: cuda`, not yet in a
// mixed (`backend_map`) model: a spanned error there.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input flag: bool[];
        let h = x;
        if flag {
            let h = h * 2.0;
        }
        output y = h;
    }

    model Dropish {
        input x: f32[B, 4];
        output y = where_(is_training, x * 2.0, x);
    }

    model Mixed {
        input x: f32[B, 4];
        input flag: bool[];
        let enc = Net();
        output y = enc(x, flag);
    }

    model MixedDrop {
        input x: f32[B, 4];
        let enc = Dropish();
        output y = enc(x);
    }

    compile NetGpu = Net { backend: cuda };
    compile DropGpu = Dropish { backend: cuda };
    compile NetMixed = Mixed { backend_map: { enc: cuda } };
    compile DropMixed = MixedDrop { backend_map: { enc: cuda } };
}

fn main() {}
