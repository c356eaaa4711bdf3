mithril::mithril! {
    model Lookup {
        input table: f32[100, 16];
        input idx: f32[B];
        output y = gather(table, idx, axis = 0);
    }
}

fn main() {}
