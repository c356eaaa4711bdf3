use mithril::prelude::*;

mithril! {
    pub model Mlp {
        input x: f32[B, 784];
        let fc1 = Linear(256);
        let h = relu(fc1(x));
        let h = relu(Linear(dimension = 128)(h));
        output logits = Linear(10)(h);
    }
}

#[test]
fn mlp_runs() {
    let model = Mlp::new().unwrap();
    let params = model.randomize_params(42);
    let x = ndarray::Array2::<f32>::ones((8, 784));
    let out = model.evaluate(&params, MlpInputs { x: x.view() }).unwrap();
    assert_eq!(out.logits.shape(), &[8, 10]);
    println!("{}", Mlp::SUMMARY);
}
