// `backend_map` keys name submodel instances (as in the params' dotted names); an unknown one is
// an error on the key that lists the instances.
mithril::mithril! {
    model Enc {
        input x: f32[B, 4];
        let fc = Linear(8);
        output h = relu(fc(x));
    }

    model Net {
        input x: f32[B, 4];
        let enc = Enc(x);
        output y = Linear(2)(enc);
    }

    model Plain {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile Typo = Net { backend_map: { "encc": cuda } };
    compile Deep = Net { backend_map: { "enc.fc.weight": cuda } };
    compile NoGlobHit = Net { backend_map: { "dec.*": cuda } };
    compile NoInstances = Plain { backend_map: { "enc": cuda } };
}

fn main() {}
