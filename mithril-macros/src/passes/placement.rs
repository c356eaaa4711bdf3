//! Mixed models (`backend_map`): on which backend each node is computed, where its value must
//! exist, and so where values cross between host and device.
//!
//! Rules: a node is computed where [`Graph::on_cuda`] puts it (its instance's backend), except
//! the nodes `cpu_forced` moves to the CPU (backward ops without a CUDA lowering). Inputs,
//! params and output-gradient seeds are host memory. A constant is made wherever it is read
//! (a host scalar and/or a device scalar, not counted as a transfer). A host value read by a device op
//! is uploaded once, right after it is computed; a device value read by a host op (or returned)
//! is downloaded once, right after it is computed.

use crate::ir::{Graph, NodeId, Op};

/// The placement of one graph's nodes.
pub struct Placed {
    /// Computed on the device.
    pub on_cuda: Vec<bool>,
    /// A host value exists (computed on the host, or downloaded).
    pub host: Vec<bool>,
    /// A device value exists (computed there, uploaded, or a device constant).
    pub dev: Vec<bool>,
    consts: Vec<bool>,
}

impl Placed {
    /// The placement of `g`; `cpu_forced[id]` (when given) keeps node `id` on the CPU.
    pub fn new(g: &Graph, cpu_forced: &[bool]) -> Placed {
        let n = g.nodes.len();
        let consts: Vec<bool> = g
            .nodes
            .iter()
            .map(|x| matches!(x.op, Op::Const(_)))
            .collect();
        let on_cuda: Vec<bool> = (0..n)
            .map(|id| g.on_cuda(id) && !consts[id] && !cpu_forced.get(id).copied().unwrap_or(false))
            .collect();
        let mut host = vec![false; n];
        let mut dev = vec![false; n];
        for (id, &cuda) in on_cuda.iter().enumerate() {
            if cuda {
                dev[id] = true;
            } else if !consts[id] {
                host[id] = true;
            }
        }
        for (id, node) in g.nodes.iter().enumerate() {
            for &a in &node.args {
                if on_cuda[id] {
                    dev[a] = true;
                } else {
                    host[a] = true;
                }
            }
        }
        for o in &g.outputs {
            host[o.node] = true;
        }
        Placed {
            on_cuda,
            host,
            dev,
            consts,
        }
    }

    /// A host value read on the device: copied host → device.
    pub fn upload(&self, id: NodeId) -> bool {
        !self.on_cuda[id] && !self.consts[id] && self.dev[id]
    }

    /// A device value read on the host or returned: copied device → host.
    pub fn download(&self, id: NodeId) -> bool {
        self.on_cuda[id] && self.host[id]
    }

    /// A constant made on the device.
    pub fn device_const(&self, id: NodeId) -> bool {
        self.consts[id] && self.dev[id]
    }

    /// A constant made on the host.
    pub fn host_const(&self, id: NodeId) -> bool {
        self.consts[id] && self.host[id]
    }

    /// The backend column of the summary for node `id`.
    pub fn column(&self, g: &Graph, id: NodeId) -> &'static str {
        let computes = matches!(
            g.nodes[id].op,
            Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }
        );
        if self.consts[id] {
            return match (self.host[id], self.dev[id]) {
                (true, true) => "cpu+cuda",
                (false, true) => "cuda",
                _ => "cpu",
            };
        }
        match (
            computes,
            self.on_cuda[id],
            self.upload(id),
            self.download(id),
        ) {
            (_, true, _, true) => "cuda -> cpu",
            (_, true, _, false) => "cuda",
            (true, false, true, _) => "cpu -> cuda",
            (true, false, false, _) => "cpu",
            (false, false, true, _) => "host -> cuda",
            (false, false, false, _) => "host",
        }
    }

    /// `(ops on cuda, ops on cpu)`.
    pub fn op_counts(&self, g: &Graph) -> (usize, usize) {
        let mut c = (0, 0);
        for (id, n) in g.nodes.iter().enumerate() {
            if matches!(n.op, Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }) {
                if self.on_cuda[id] {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
        }
        c
    }

    /// The uploaded and the downloaded nodes, by name (`x`, `enc.weight`, `enc.h`, or `%7`
    /// for a value without a name).
    pub fn transfers(&self, g: &Graph) -> (Vec<String>, Vec<String>) {
        let name = |id: NodeId| match g.nodes[id].op {
            Op::Input(i) => g.inputs[i].name.clone(),
            Op::Param(i) => g.params[i].dotted(),
            Op::Seed(i) => format!("d{}", g.outputs[i].name),
            _ => g.nodes[id]
                .label
                .clone()
                .filter(|l| !l.starts_with('#'))
                .unwrap_or_else(|| format!("%{id}")),
        };
        let up = (0..g.nodes.len())
            .filter(|&i| self.upload(i))
            .map(name)
            .collect();
        let down = (0..g.nodes.len())
            .filter(|&i| self.download(i))
            .map(name)
            .collect();
        (up, down)
    }

    /// The summary line: op counts per backend and the transfers of one call of `what`.
    pub fn line(&self, g: &Graph, what: &str) -> String {
        let (cu, cp) = self.op_counts(g);
        let (up, down) = self.transfers(g);
        let list = |v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!(": {}", v.join(", "))
            }
        };
        format!(
            "backends ({what}): {cu} ops on cuda, {cp} on cpu; transfers: {} ({} upload{}{}, {} download{}{})\n",
            up.len() + down.len(),
            up.len(),
            if up.len() == 1 { "" } else { "s" },
            list(&up),
            down.len(),
            if down.len() == 1 { "" } else { "s" },
            list(&down),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::Placement;

    fn p(default_cuda: bool, map: &[(&str, bool)]) -> Placement {
        Placement {
            default_cuda,
            map: map.iter().map(|(k, c)| (k.to_string(), *c)).collect(),
        }
    }

    #[test]
    fn an_instance_path_covers_the_instances_inside_it_and_the_longest_key_wins() {
        let m = p(false, &[("enc", true), ("enc.head", false)]);
        assert!(m.is_mixed());
        assert!(m.scope_on_cuda("enc"));
        assert!(m.scope_on_cuda("enc.fc"));
        assert!(m.scope_on_cuda("enc.fc.inner"));
        assert!(!m.scope_on_cuda("enc.head"));
        assert!(!m.scope_on_cuda("enc.head.fc"));
        // a prefix of the name is not an instance inside it
        assert!(!m.scope_on_cuda("encoder"));
        assert!(!m.scope_on_cuda(""));
        assert!(!m.scope_on_cuda("head"));
    }

    #[test]
    fn globs_match_what_they_match_and_the_default_is_the_models_backend() {
        let m = p(true, &[("block_*", false)]);
        assert!(m.scope_on_cuda(""));
        assert!(m.scope_on_cuda("enc"));
        assert!(!m.scope_on_cuda("block_0"));
        assert!(!m.scope_on_cuda("block_1.attn"));
        let g = p(false, &[("enc.*", true)]);
        assert!(g.scope_on_cuda("enc.fc"));
        assert!(!g.scope_on_cuda("enc"));
        // entries equal to the default make no mixed model
        assert!(!p(true, &[("enc", true)]).is_mixed());
        assert!(!p(false, &[]).is_mixed());
    }
}
