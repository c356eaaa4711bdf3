// Pooling, pad and upsample: static output dims below 1 and bad attributes are compile errors
// under the call, naming the input dims and the attributes.
mithril::mithril! {
    model Pools {
        input x: f32[2, 3, 4, 5];
        let a = max_pool2d(x, kernel_size = 6);
        let b = avg_pool2d(x, kernel_size = (2, 2), stride = 1, padding = 2);
        let c = pad(x, pad = (5, 0), mode = "reflect");
        let d = pad(x, pad = (1, 2, 3));
        let e = upsample(x, scale_factor = 2, mode = "cubic");
        let f = max_pool1d(x, kernel_size = 2, count_include_pad = false);
        let g = upsample(x, scale_factor = 0.1);
        output y = x;
    }
}

fn main() {}
