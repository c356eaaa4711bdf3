// Every bad `visualize` / `viz_options` value is an error on the offending tokens.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile NotBool = Net { visualize: "yes" };
    compile NotAMap = Net { visualize: true, viz_options: svg };
    compile BadFormat = Net { visualize: true, viz_options: { format: png } };
    compile BadShow = Net { visualize: true, viz_options: { show_shapes: 1 } };
    compile BadPath = Net { visualize: true, viz_options: { output_path: graph } };
    compile EmptyPath = Net { visualize: true, viz_options: { output_path: "" } };
    compile Unknown = Net { visualize: true, viz_options: { colors: true } };
    compile NoVisualize = Net { viz_options: { format: svg } };
}

fn main() {}
