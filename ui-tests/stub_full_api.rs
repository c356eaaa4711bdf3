// A model with an error still defines its whole API (as placeholders): user code that uses the
// consts, `names()`, `evaluate_gradients`, the params, grads and outputs fields and the trait
// impls shows no follow-up errors, only the model's own.
use mithril::prelude::*;

mithril! {
    model Net {
        input x: f32[B, 4];
        param w: f32[4, 3];
        let fc = Linear(3);
        output y = matmul(x, w) + fc(x) + x;
    }
}

fn main() -> mithril::Result<()> {
    let m = Net::new()?;
    println!("{} {} {} {}", Net::SUMMARY, Net::GRAPH_TEXT, Net::NUM_OPS, Net::SYMBOLS.len());
    println!("{} {} {:?}", Net::GRAPH_DOT, Net::GRAPH_JSON, m.memory_report());
    println!("{} {:?} {:?}", m.summary(), m.clone(), Net::default());
    let p = m.randomize_params(0);
    let names: Vec<String> = p.names();
    let w: &mithril::ndarray::Array2<f32> = &p.w;
    let fw = p.fc.weight.clone();
    println!("{names:?} {w:?} {fw:?} {}", p.num_elements());
    let x = mithril::ndarray::Array2::<f32>::zeros((2, 4));
    let out = m.evaluate(&p, NetInputs { x: x.view() })?;
    let (o, g) = m.evaluate_gradients(&p, NetInputs { x: x.view() }, out.clone())?;
    println!("{:?} {:?} {:?} {:?}", o.y.shape(), g.w, g.fc.bias, g.names());
    let _ = p.to_safetensors_bytes()?;
    let _ = m.memory_report_gradients();
    Ok(())
}
