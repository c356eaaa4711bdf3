use mithril::mithril;

mithril! {
    train Reg {
        input x: f32[B, 4];
        input y: f32[B, 2];
        loss squared_error(Linear(2)(x), y).mean();
        regularize l2(1e-4) on "*.kernel";
    }
}

fn main() {}
