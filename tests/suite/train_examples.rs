//! The training examples run in the test suite (they return `Err` when they miss their
//! targets: 95% held-out accuracy on the spirals, max error 0.05 on the sine; the recurrent
//! network's loss falls).

#[path = "../../examples/train_mlp.rs"]
#[allow(dead_code)]
mod train_mlp;

#[path = "../../examples/sine_regression.rs"]
#[allow(dead_code)]
mod sine_regression;

#[path = "../../examples/recurrent.rs"]
#[allow(dead_code)]
mod recurrent;

#[test]
fn recurrent_example_loss_falls() {
    // a shorter run than the example's 400 steps
    let (first, last) = recurrent::train(120, false).unwrap();
    assert!(last < first / 4.0, "loss {first} -> {last}");
}

#[test]
fn train_mlp_reaches_95_percent() {
    train_mlp::main().unwrap();
}

#[test]
fn sine_regression_fits() {
    sine_regression::main().unwrap();
}
