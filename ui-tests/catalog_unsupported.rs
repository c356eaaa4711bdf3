// Mithril's catalog: the forms the DSL cannot express are compile errors at the call.
mithril::mithril! {
    model Embed {
        input d: f64[5, 5];
        input norm: f64[];
        input p: f64[5, 5];
        let a = TSNE(2, calculate_p_joint = true)(d, norm, p);
        let b = MDS(2, input_type = "pointz")(d, norm);
        output y = d;
    }

    model Features {
        input x: f64[3, 2];
        output y = polynomial_features(x);
    }
}

fn main() {}
