// Bad `backend_map` and `optimize_for` values are errors on the offending tokens.
mithril::mithril! {
    model Enc {
        input x: f32[B, 4];
        output h = relu(Linear(8)(x));
    }

    model Net {
        input x: f32[B, 4];
        let enc = Enc(x);
        output y = Linear(2)(enc);
    }

    compile UnknownBackend = Net { backend_map: { "enc": tpu } };
    compile NotABackend = Net { backend_map: { "enc": "cuda" } };
    compile NotAMap = Net { backend_map: ["enc"] };
    compile Empty = Net { backend_map: {} };
    compile Twice = Net { backend_map: { enc: cuda, "enc": cpu } };
    compile BadGoal = Net { optimize_for: speed };
}

fn main() {}
