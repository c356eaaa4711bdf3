// Run-time control flow and `is_training` run on the CPU only (for now): a spanned error for
// `backend: cuda`.
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

    compile NetGpu = Net { backend: cuda };
    compile DropGpu = Dropish { backend: cuda };
}

fn main() {}
