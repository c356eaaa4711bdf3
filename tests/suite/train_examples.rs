//! The training examples run in the test suite (they return `Err` when they miss their
//! targets: 95% held-out accuracy on the spirals, max error 0.05 on the sine; the recurrent
//! network's loss falls; the digits CNN learns).

#[path = "../../examples/train_mlp.rs"]
#[allow(dead_code)]
mod train_mlp;

#[path = "../../examples/sine_regression.rs"]
#[allow(dead_code)]
mod sine_regression;

#[path = "../../examples/recurrent.rs"]
#[allow(dead_code)]
mod recurrent;

#[path = "../../examples/train_cnn.rs"]
#[allow(dead_code)]
mod train_cnn;

#[test]
fn train_cnn_learns_the_digits() {
    // a smaller budget than the example's 15 epochs (which reach 97%+ held out)
    let r = train_cnn::train(3, false).unwrap();
    assert!(r.loss.1 < r.loss.0 / 3.0, "loss {:?}", r.loss);
    assert!(
        r.test_accuracy >= 0.93,
        "held-out accuracy {}",
        r.test_accuracy
    );
    // the reloaded params (running statistics included) give the same predictions
    assert_eq!(r.reloaded_accuracy, r.test_accuracy);
}

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
