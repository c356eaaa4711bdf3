mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile A = Net { memory_planning: fast };
    compile B = Net { max_memory_gb: 0.0 };
    compile C = Net { gradient_checkpointing: { segments: 1 } };
    compile D = Net { gradient_checkpointing: { layers: 4 } };
}

fn main() {}
