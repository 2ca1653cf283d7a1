//! Assembling the stage DAG of one experiment, or of a sweep's grid, sharing
//! every node whose settings and inputs agree (one index, one plan per P×K…).
use crate::config::{DatasetKindName, ExperimentConfig};
use crate::data_stages::{IndexStage, PlanStage, SynthStage};
use dml_pipeline::{canonical_json, Graph, NodeId, Stage};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One experiment of a (possibly swept) configuration.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Run name.
    pub name: String,
    /// Sweep point (path, value), empty without a sweep.
    pub point: Vec<(String, String)>,
    /// Typed settings.
    pub config: ExperimentConfig,
}

struct Pending {
    stage: Arc<dyn Stage>,
    inputs: Vec<(String, usize)>,
    users: BTreeSet<usize>,
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Pending>,
    by_identity: HashMap<String, usize>,
}

impl Builder {
    fn add(&mut self, experiment: usize, stage: Arc<dyn Stage>, inputs: &[(&str, usize)]) -> usize {
        let identity = format!(
            "{}|{}|{:?}|{}",
            stage.name(),
            canonical_json(&stage.settings()),
            inputs,
            stage.identity()
        );
        let i = *self.by_identity.entry(identity).or_insert_with(|| {
            self.nodes.push(Pending {
                stage,
                inputs: inputs.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
                users: BTreeSet::new(),
            });
            self.nodes.len() - 1
        });
        self.nodes[i].users.insert(experiment);
        i
    }

    /// Names each node after its stage, plus the sweep values that all of its
    /// users share where not every experiment uses it (`train[train.loss=npairs]`).
    fn finish(self, experiments: &[Experiment]) -> Graph {
        let mut graph = Graph::new();
        let mut ids: Vec<NodeId> = Vec::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        for p in self.nodes {
            let mut id = p.stage.name().to_string();
            if p.users.len() < experiments.len() {
                let first = &experiments[*p.users.iter().next().expect("a node has a user")];
                let common: Vec<String> = first
                    .point
                    .iter()
                    .filter(|kv| p.users.iter().all(|&u| experiments[u].point.contains(kv)))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                id = format!("{id}[{}]", common.join(","));
            }
            let mut unique = id.clone();
            let mut n = 2;
            while !taken.insert(unique.clone()) {
                unique = format!("{id}#{n}");
                n += 1;
            }
            let inputs: Vec<(&str, NodeId)> = p
                .inputs
                .iter()
                .map(|(r, i)| (r.as_str(), ids[*i]))
                .collect();
            ids.push(graph.add(unique, p.stage, &inputs));
        }
        graph
    }
}

/// Builds the DAG for every experiment.
pub fn build(experiments: &[Experiment]) -> anyhow::Result<Graph> {
    let mut b = Builder::default();
    for (e, exp) in experiments.iter().enumerate() {
        let c = &exp.config;
        let synth = (c.dataset.kind == DatasetKindName::Synthetic)
            .then(|| b.add(e, Arc::new(SynthStage::new(c.synthetic.clone())), &[]));
        let index_inputs: Vec<(&str, usize)> =
            synth.map(|s| vec![("synth", s)]).unwrap_or_default();
        let index = b.add(e, Arc::new(IndexStage::new(c)?), &index_inputs);
        let _plan = b.add(
            e,
            Arc::new(PlanStage::new(c.plan.clone())),
            &[("index", index)],
        );
    }
    Ok(b.finish(experiments))
}
