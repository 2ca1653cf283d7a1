//! Assembling the stage DAG of one experiment, or of a sweep's grid, sharing
//! every node whose settings and inputs agree (one index, one plan per P×K…).
use crate::cluster::ClusterStage;
use crate::config::{DatasetKindName, ResolvedConfig};
use crate::decode::{DecodeStage, ImageRoot};
use crate::embed::EmbedStage;
use crate::index::IndexStage;
use crate::plan::PlanStage;
use crate::report::{ReportStage, RunLabel};
use crate::retrieve::RetrieveStage;
use crate::synth::SynthStage;
use crate::train::TrainStage;
use dml_jobspec::roles::{self, ReportRole};
use dml_jobspec::validation::ValidationPlan;
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
    pub config: ResolvedConfig,
}

struct Pending {
    stage: Arc<dyn Stage>,
    label: Option<&'static str>,
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
        self.add_labelled(experiment, None, stage, inputs)
    }

    fn add_labelled(
        &mut self,
        experiment: usize,
        label: Option<&'static str>,
        stage: Arc<dyn Stage>,
        inputs: &[(&str, usize)],
    ) -> usize {
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
                label,
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
    fn finish(self, experiments: &[Experiment]) -> Dag {
        let mut graph = Graph::new();
        let mut users = HashMap::new();
        let mut ids: Vec<NodeId> = Vec::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        for p in self.nodes {
            let mut id = match p.label {
                Some(l) => format!("{}:{l}", p.stage.name()),
                None => p.stage.name().to_string(),
            };
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
            users.insert(unique.clone(), p.users.iter().copied().collect());
            ids.push(graph.add(unique, p.stage, &inputs));
        }
        Dag { graph, users }
    }
}

/// The assembled DAG, and which experiments use each node.
pub struct Dag {
    /// The stage graph.
    pub graph: Graph,
    /// Node id → indices of the experiments that use it.
    pub users: HashMap<String, Vec<usize>>,
}

/// The name of every stage dml has, in pipeline order (what `remote_skip`
/// and other settings that name stages are checked against).
pub const STAGE_NAMES: [&str; 9] = [
    "synth", "index", "plan", "decode", "train", "embed", "retrieve", "cluster", "report",
];

/// [`build_dag`]'s graph alone.
pub fn build(experiments: &[Experiment]) -> crate::Result<Graph> {
    Ok(build_dag(experiments)?.graph)
}

/// Builds the DAG for every experiment: synth? → index → plan → decode → train
/// → embed → {retrieve, cluster} → one report over all experiments, plus the
/// untrained baseline's train → embed → {retrieve, cluster} when asked.
/// Every experiment's settings are checked first ([`crate::preflight`]).
pub fn build_dag(experiments: &[Experiment]) -> crate::Result<Dag> {
    for exp in experiments {
        crate::preflight::check_settings(&exp.config).map_err(|e| match experiments.len() {
            1 => e,
            _ => crate::StageError::SweepPoint {
                point: exp.name.clone(),
                source: Box::new(e),
            },
        })?;
    }
    let mut b = Builder::default();
    let mut report_inputs: Vec<(String, usize)> = Vec::new();
    let mut labels = Vec::new();
    for (e, exp) in experiments.iter().enumerate() {
        let c = &exp.config;
        let kind = c.dataset.kind;
        let synth = (kind == DatasetKindName::Synthetic)
            .then(|| b.add(e, Arc::new(SynthStage::new(c.synthetic)), &[]));
        let root = match synth {
            Some(_) => ImageRoot::Synth,
            None => ImageRoot::Dir(c.dataset.root.clone().into()),
        };
        let with_synth = |mut v: Vec<(&'static str, usize)>| {
            if let Some(s) = synth {
                v.push((roles::SYNTH, s));
            }
            v
        };
        let index = b.add(e, Arc::new(IndexStage::new(c)?), &with_synth(vec![]));
        let plan = b.add(
            e,
            Arc::new(PlanStage::new(
                c.plan.clone(),
                dml_jobspec::validation::Holdout::of(&c.train.validation),
            )),
            &[(roles::INDEX, index)],
        );
        let decode = b.add(
            e,
            DecodeStage::new(&c.image, c.index.skip_bad_images, root),
            &with_synth(vec![(roles::INDEX, index)]),
        );
        let train = b.add(
            e,
            TrainStage::new(
                &c.train,
                &c.image,
                c.plan.k,
                false,
                ValidationPlan::resolve(
                    &c.train.validation,
                    c.retrieve.protocol,
                    c.retrieve.distance,
                )?,
            )?,
            &[
                (roles::PLAN, plan),
                (roles::DECODE, decode),
                (roles::INDEX, index),
            ],
        );
        let embed = b.add(
            e,
            EmbedStage::new(&c.embed, &c.image, kind, &c.train.device)?,
            &[
                (roles::TRAIN, train),
                (roles::DECODE, decode),
                (roles::INDEX, index),
            ],
        );
        let retrieve = b.add(
            e,
            RetrieveStage::new(c.retrieve.clone()),
            &[(roles::EMBED, embed)],
        );
        let cluster = b.add(
            e,
            ClusterStage::new(c.cluster.clone(), &c.retrieve),
            &[(roles::EMBED, embed)],
        );
        report_inputs.push((ReportRole::Retrieve.of(e), retrieve));
        report_inputs.push((ReportRole::Cluster.of(e), cluster));
        report_inputs.push((ReportRole::Train.of(e), train));
        // report.html's thumbnails and class names.
        report_inputs.push((ReportRole::Index.of(e), index));
        report_inputs.push((ReportRole::Decode.of(e), decode));
        if c.report.untrained_baseline {
            let l = Some("untrained");
            let train0 = b.add_labelled(
                e,
                l,
                TrainStage::new(&c.train, &c.image, c.plan.k, true, None)?,
                &[],
            );
            let embed0 = b.add_labelled(
                e,
                l,
                EmbedStage::new(&c.embed, &c.image, kind, &c.train.device)?,
                &[
                    (roles::TRAIN, train0),
                    (roles::DECODE, decode),
                    (roles::INDEX, index),
                ],
            );
            let retrieve0 = b.add_labelled(
                e,
                l,
                RetrieveStage::new(c.retrieve.clone()),
                &[(roles::EMBED, embed0)],
            );
            let cluster0 = b.add_labelled(
                e,
                l,
                ClusterStage::new(c.cluster.clone(), &c.retrieve),
                &[(roles::EMBED, embed0)],
            );
            report_inputs.push((ReportRole::BaselineRetrieve.of(e), retrieve0));
            report_inputs.push((ReportRole::BaselineCluster.of(e), cluster0));
        }
        labels.push(RunLabel::new(&exp.name, &exp.point, c));
    }
    let inputs: Vec<(&str, usize)> = report_inputs
        .iter()
        .map(|(r, n)| (r.as_str(), *n))
        .collect();
    for (e, exp) in experiments.iter().enumerate() {
        b.add(
            e,
            Arc::new(ReportStage::new(labels.clone(), exp.config.report.clone())),
            &inputs,
        );
    }
    Ok(b.finish(experiments))
}
