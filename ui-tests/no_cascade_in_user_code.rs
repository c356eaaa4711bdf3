// A physical model that fails to compile still defines its items (as placeholders), so the
// user's code naming them adds no "cannot find type" errors: only the model's own errors show.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input z: f32[B, 8];
        output y = x + z;
    }

    model Good {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile GoodStatic = Good {
        static_shapes: maybe,
    };
}

fn main() -> mithril::Result<()> {
    let model = Net::new()?;
    let params = model.randomize_params(0);
    let x = mithril::ndarray::Array2::<f32>::zeros((2, 4));
    let z = mithril::ndarray::Array2::<f32>::zeros((2, 8));
    let out = model.evaluate(
        &params,
        NetInputs {
            x: x.view(),
            z: z.view(),
        },
    )?;
    assert_eq!(out.y.shape(), &[2, 4]);
    let _: Option<NetParams> = None;
    let _: Option<NetOutputs> = None;

    let good = GoodStatic::new()?;
    let p = good.randomize_params(1);
    let out = good.evaluate(&p, GoodStaticInputs { x: x.view() })?;
    println!("{:?}", out.y);
    Ok(())
}
