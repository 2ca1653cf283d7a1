//! The DAG: nodes are stages, edges are named input roles.
use crate::Stage;
use std::sync::Arc;

/// A node's index in its graph.
pub type NodeId = usize;

/// One node: a stage instance and the nodes it reads.
pub struct Node {
    /// Unique id shown to users: the stage name, plus the sweep point if any.
    pub id: String,
    /// The stage.
    pub stage: Arc<dyn Stage>,
    /// (role, upstream node).
    pub inputs: Vec<(String, NodeId)>,
}

/// A DAG built in topological order: a node's inputs are always added before it.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<Node>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node reading `inputs` (which must already be in the graph).
    pub fn add(
        &mut self,
        id: impl Into<String>,
        stage: Arc<dyn Stage>,
        inputs: &[(&str, NodeId)],
    ) -> NodeId {
        let id = id.into();
        for (_, input) in inputs {
            assert!(*input < self.nodes.len(), "input of `{id}` added after it");
        }
        self.nodes.push(Node {
            id,
            stage,
            inputs: inputs.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        });
        self.nodes.len() - 1
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Keeps only the nodes for which `keep` is true and everything they read
    /// (`--until STAGE`).
    pub fn prune_to(self, keep: impl Fn(&Node) -> bool) -> Graph {
        let mut needed = vec![false; self.nodes.len()];
        for i in (0..self.nodes.len()).rev() {
            if keep(&self.nodes[i]) {
                needed[i] = true;
            }
            if needed[i] {
                for (_, input) in &self.nodes[i].inputs {
                    needed[*input] = true;
                }
            }
        }
        let mut remap = vec![usize::MAX; self.nodes.len()];
        let mut out = Graph::new();
        for (i, node) in self.nodes.into_iter().enumerate() {
            if needed[i] {
                let inputs: Vec<(String, NodeId)> = node
                    .inputs
                    .into_iter()
                    .map(|(r, n)| (r, remap[n]))
                    .collect();
                out.nodes.push(Node {
                    id: node.id,
                    stage: node.stage,
                    inputs,
                });
                remap[i] = out.nodes.len() - 1;
            }
        }
        out
    }
}
