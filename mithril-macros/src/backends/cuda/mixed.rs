//! The device side of a mixed model (`backend_map`): the CPU generator (`crate::backends::cpu`)
//! holds one [`Mixed`] per graph, as a [`DeviceSide`] made by the driver, and asks it for the
//! nodes placed on cuda and the transfers.

use super::{kernel_text, p_name, Ctx, CudaGen, SUPPORTED};
use crate::backends::common::{v, CodegenInput, DeviceSide, ModuleParts};
use crate::ir::{Graph, NodeId, Op};
use crate::options::CudaOptions;
use crate::placement::Placed;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// The device side of one graph of a mixed model (`backend_map`): the CPU generator generates
/// the host code and asks this for every node placed on cuda (the lowering of [`CudaGen`],
/// unchanged), for the uploads of host values that a device op reads and for the downloads of
/// device values that a host op reads or that are returned. Host values are `vN`, device values
/// `dN`.
pub(crate) struct Mixed<'a> {
    cg: CudaGen<'a>,
    cx: Ctx<'a>,
    /// Where each node is computed and where its value exists.
    placed: Placed,
    /// The forward graph (`evaluate`): a node placed on cuda without a lowering is a compile
    /// error. In the forward+backward graph such a (gradient) node runs on the CPU instead.
    forward: bool,
    /// Forward graph: the params its device ops read (indices into `Graph::params`), which
    /// `M::prepare` uploads once; `evaluate` uploads them per call.
    prepared: Vec<usize>,
}

impl<'a> Mixed<'a> {
    /// The device side of `g`; `forward`: the graph of `evaluate` (kernels `f<id>`), else of
    /// `evaluate_gradients` (kernels `g<id>`).
    pub fn new(
        g: &'a Graph,
        inp: &'a CodegenInput<'a>,
        opts: &'a CudaOptions,
        forward: bool,
    ) -> Self {
        let prefix = if forward { "f" } else { "g" };
        let mut forced = vec![false; g.nodes.len()];
        if !forward {
            // a gradient op without a CUDA lowering runs on the CPU
            let mut scratch = CudaGen::new(g, None, inp, opts);
            let cx = scratch.ctx(g, prefix);
            for (id, f) in forced.iter_mut().enumerate() {
                if g.on_cuda(id) && !matches!(g.nodes[id].op, Op::Const(_)) {
                    *f = scratch.node(&cx, id).is_err();
                }
            }
        }
        let placed = Placed::new(g, &forced);
        let cg = CudaGen::new(g, None, inp, opts);
        let mut cx = cg.ctx(g, prefix);
        cx.dev_names = true;
        Mixed {
            cg,
            cx,
            placed,
            forward,
            prepared: Vec::new(),
        }
    }
}

impl<'a> DeviceSide<'a> for Mixed<'a> {
    fn placed(&self) -> &Placed {
        &self.placed
    }

    fn prepared(&self) -> &[usize] {
        &self.prepared
    }

    fn device_node(&mut self, id: NodeId, dest: Option<TokenStream>) -> TokenStream {
        let g = self.cx.g;
        match self.cg.node(&self.cx, id) {
            Ok(Some(val)) => {
                self.cx.owned[id] = true;
                let d = self.cx.name(id);
                let ty = self.cx.ty(id);
                let mut code = quote!(let #d: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;);
                if let Some(dest) = dest {
                    let vid = v(id);
                    let label = self.cx.label(id);
                    code.extend(quote! {
                        let #vid = ::mithril::rt::cuda::exec::download(&#d, #dest, #label)?;
                    });
                }
                code
            }
            Ok(None) => quote!(),
            Err(why) => {
                let what = p_name(&g.nodes[id].op);
                let model = self.cg.inp.name.to_string();
                let scope = &g.nodes[id].scope;
                let msg = if self.forward {
                    format!("`{model}` places this `{what}` (instance `{scope}`) on cuda with `backend_map`, which cannot lower it yet: {why}\nlowered on cuda: {SUPPORTED}")
                } else {
                    format!("internal: gradient op `{what}` kept on cuda without a lowering: {why}")
                };
                self.cg.errors.push(g.error_at(id, msg));
                quote!()
            }
        }
    }

    fn after_host(&mut self, id: NodeId) -> TokenStream {
        let d = self.cx.name(id);
        if let (true, true, Op::Param(i)) = (
            self.forward,
            self.placed.upload(id),
            &self.cx.g.nodes[id].op,
        ) {
            // `evaluate_prepared` reads the copy `prepare` made; `evaluate` uploads it
            let i = *i;
            if !self.prepared.contains(&i) {
                self.prepared.push(i);
            }
            let field = format_ident!("p{}", i);
            let tmp = format_ident!("__up{}", id);
            let vid = v(id);
            return quote! {
                let #tmp;
                let #d = match __prep {
                    ::std::option::Option::Some(p) => &p.#field,
                    ::std::option::Option::None => {
                        #tmp = ::mithril::rt::cuda::DeviceTensor::to_device(__dev, &#vid.view())?;
                        &#tmp
                    }
                };
            };
        }
        if self.placed.upload(id) {
            self.cx.owned[id] = true;
            let vid = v(id);
            return quote! {
                let #d = ::mithril::rt::cuda::DeviceTensor::to_device(__dev, &#vid.view())?;
            };
        }
        if self.placed.device_const(id) {
            if let Ok(Some(val)) = self.cg.node(&self.cx, id) {
                self.cx.owned[id] = true;
                let ty = self.cx.ty(id);
                return quote!(let #d: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;);
            }
        }
        quote!()
    }

    fn take_errors(&mut self) -> Vec<syn::Error> {
        std::mem::take(&mut self.cg.errors)
    }

    fn absorb(&mut self, other: Box<dyn DeviceSide<'a> + 'a>) {
        let other = other.into_parts();
        self.cg.kernels.extend(other.kernels);
        self.cg.entries.extend(other.entries);
        self.cg.errors.extend(other.errors);
    }

    fn into_parts(self: Box<Self>) -> ModuleParts {
        ModuleParts {
            kernels: self.cg.kernels,
            entries: self.cg.entries,
            errors: self.cg.errors,
        }
    }

    fn module(&self) -> (String, &[String]) {
        (
            kernel_text::fused_module(&self.cg.kernels),
            &self.cg.entries,
        )
    }
}
