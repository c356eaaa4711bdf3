mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input z: f32[B, 8];
        let a = x + z;
        let b = undefined_thing * 2.0;
        let c = x.sum(axis = 3);
        output y = a;
    }

    compile NetFast = Net {
        optimisations: {},
    };
}

fn main() {}
