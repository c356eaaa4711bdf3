// Convolution mistakes are compile errors on the call, naming the shapes and the attributes.
mithril::mithril! {
    // the output would have (4 + 0 - 2·(3 - 1) - 1) / 1 + 1 = 0 positions
    model TooShort {
        input x: f32[B, 3, 4, 8];
        param w: f32[2, 3, 3, 3];
        output y = conv2d(x, w, dilation = 2);
    }

    // 4 input channels against a weight made for 2 groups of 3
    model Channels {
        input x: f32[B, 4, 8, 8];
        param w: f32[6, 3, 3, 3];
        output y = conv2d(x, w, groups = 2);
    }

    // "same" needs stride 1
    model SameStride {
        input x: f32[B, 3, 8];
        param w: f32[2, 3, 3];
        output y = conv1d(x, w, padding = "same", stride = 2);
    }

    // a 2-D convolution of a rank-3 input
    model Rank {
        input x: f32[B, 3, 8];
        param w: f32[2, 3, 3, 3];
        output y = conv2d(x, w);
    }

    // integers are not supported (every float type is)
    model Ints {
        input x: i32[B, 3, 8];
        input w: i32[2, 3, 3];
        output y = conv1d(x, w);
    }

    // output padding must stay below the stride
    model OutPad {
        input x: f32[B, 3, 8];
        param w: f32[3, 2, 3];
        output y = conv_transpose1d(x, w, stride = 2, output_padding = 2);
    }

    // a library `Conv2d` whose kernel_size is neither an int nor a pair (`pair`'s error)
    model TripleKernel {
        input x: f32[B, 3, 8, 8];
        output y = Conv2d(4, (3, 3, 3))(x);
    }
}

fn main() {}
