// `template_path`: a value that is no path, a missing file, a template with a Jinja error and
// a template whose output is not Rust are errors at the option, naming the line.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile NotAString = Net { template_path: doc_table };
    compile Empty = Net { template_path: "" };
    compile Missing = Net { template_path: "no/such/template.jinja" };
    // (relative paths are taken from the crate's Cargo.toml; trybuild's crate sits in
    // target/tests/trybuild/mithril)
    compile BadJinja = Net { template_path: "../../../../ui-tests/templates/broken_syntax.jinja" };
    compile BadRust = Net { template_path: "../../../../ui-tests/templates/broken_rust.jinja" };
}

fn main() {}
