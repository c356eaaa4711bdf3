use mithril::mithril;

mithril! {
    model Net {
        input x: f32[B, 4];
        input ids: i64[B];
        output y = Linear(2)(x);
    }
    compile NetT = Net { trainable: [ids] };
}

fn main() {}
