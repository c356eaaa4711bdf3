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
    // int8 (convolutions and linear layer; batch norms' buffers in f32): within 1 point
    let (dynamic, calibrated) = r.int8_accuracy;
    eprintln!(
        "digits CNN (3 epochs): held-out top-1 f32 {:.1}%, int8 dynamic {:.1}%, int8 calibrated {:.1}%",
        100.0 * r.test_accuracy,
        100.0 * dynamic,
        100.0 * calibrated
    );
    assert!(
        (dynamic - r.test_accuracy).abs() <= 0.01,
        "int8 dynamic {dynamic} vs f32 {}",
        r.test_accuracy
    );
    assert!(
        (calibrated - r.test_accuracy).abs() <= 0.01,
        "int8 calibrated {calibrated} vs f32 {}",
        r.test_accuracy
    );
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

#[path = "../../examples/train_gpt.rs"]
#[allow(dead_code)]
mod train_gpt;

#[test]
fn train_gpt_loss_falls_and_cache_decoding_is_the_full_greedy() {
    // a small budget (the example trains 1500 steps of 16 windows of 64)
    let r = train_gpt::train(40, 4, 32, false).unwrap();
    // from ln(64) ≈ 4.2 nats at the start, the character frequencies are learned first
    assert!(r.loss.1 < r.loss.0 - 0.5, "loss {:?}", r.loss);
    let prompt: Vec<i64> = [20i64, 40, 43, 10].to_vec();
    let mut g = train_gpt::Generator::new(&r.params).unwrap();
    let mut s = mithril::rt::sample::Sampler::new(1);
    let cached = g.generate(&prompt, 12, 0.0, 0, &mut s).unwrap();
    let full = train_gpt::greedy_full(&r.model, &r.params, &prompt, 12).unwrap();
    assert_eq!(cached, full);
    // sampling is deterministic for a seed
    let a = g
        .generate(
            &prompt,
            8,
            0.8,
            5,
            &mut mithril::rt::sample::Sampler::new(9),
        )
        .unwrap();
    let b = g
        .generate(
            &prompt,
            8,
            0.8,
            5,
            &mut mithril::rt::sample::Sampler::new(9),
        )
        .unwrap();
    assert_eq!(a, b);
}
