//! `dml config --defaults`: every setting, its built-in default, and which stage keys it
//! enters — generated from the code (the typed defaults and each stage's key settings),
//! so the table in the README cannot drift from what `dml run` does (a test compares them).
use anyhow::{Context, Result};
use dml_stages::config::ExperimentConfig;
use dml_stages::dag::{build_dag, Experiment};
use std::collections::{BTreeMap, BTreeSet};
use toml::Value;

/// Settings that enter a key only in some configurations, and when.
const CONDITIONS: [(&str, &str); 4] = [
    ("train.validation.", "when train.validation.every > 0"),
    (
        "image.random_resized_",
        "when image.train_crop = \"random_resized\"",
    ),
    ("image.", "when not the default"),
    ("train.", "when not the default"),
];

/// The stages whose key settings hold each setting path, for one configuration.
fn key_paths(config: ExperimentConfig) -> Result<BTreeMap<String, BTreeSet<&'static str>>> {
    let experiment = Experiment {
        name: config.name.clone(),
        point: Vec::new(),
        config: config.resolve(),
    };
    let dag = build_dag(&[experiment])?;
    let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for node in dag.graph.nodes() {
        for path in dml_pipeline::flatten_settings(&node.stage.settings()).into_keys() {
            // The report keys on what report.html shows under `html`: the `[report]` settings.
            let path = match path.strip_prefix("report.html.") {
                Some(setting) => format!("report.{setting}"),
                None => path,
            };
            out.entry(path).or_default().insert(node.stage.name());
        }
    }
    Ok(out)
}

/// The defaults with every optional part of a key switched on: validation, the
/// random-resized crop, no flips, deterministic cuDNN.
fn everything_on() -> ExperimentConfig {
    let mut c = ExperimentConfig::default();
    c.train.validation.every = 50;
    c.image.train_crop = serde_json::from_str("\"random_resized\"").expect("a train_crop word");
    c.image.flip = false;
    c.train.deterministic = true;
    // The recipes' settings, each off by default.
    c.train.freeze_backbone_steps = 1;
    c.train.model.freeze_bn = true;
    let o = &mut c.train.optimizer;
    o.head_lr_multiplier = 2.0;
    o.decay_every = 1;
    o.decay_gamma = 0.5;
    o.warmup_steps = 1;
    o.clip_grad_norm = Some(1.0);
    // Uniform batches need a loss that accepts them.
    c.plan.sampler = serde_json::from_str("\"random\"").expect("a sampler word");
    c.plan.batch_size = 8;
    c.train.loss =
        dml_jobspec::train_config::Loss::with_defaults("multi_similarity").expect("a loss name");
    c
}

/// The transformer settings on (they cannot be on with the CNN settings above: a ViT has
/// no batch norms to freeze).
fn transformer_on() -> ExperimentConfig {
    let mut c = ExperimentConfig::default();
    c.train.model.backbone = dml_jobspec::train_config::Backbone::VitS16;
    c.train.model.pool = dml_jobspec::train_config::Pool::Mean;
    c.train.optimizer.timm_weight_decay = true;
    c.train.optimizer.layer_decay = 0.75;
    c
}

fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Table(t) => {
            for (k, sub) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&path, sub, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, part| cur.get(part))
}

/// The table, as Markdown.
pub fn table() -> Result<String> {
    let known = crate::config::known_keys()?;
    let defaults = Value::try_from(ExperimentConfig::default()).context("the defaults as TOML")?;
    let always = key_paths(ExperimentConfig::default())?;
    let mut sometimes = key_paths(everything_on())?;
    for (path, stages) in key_paths(transformer_on())? {
        sometimes.entry(path).or_default().extend(stages);
    }
    let mut rows = Vec::new();
    let mut all = Vec::new();
    leaves("", &known, &mut all);
    for (path, _) in all {
        let default = match lookup(&defaults, &path) {
            Some(v) => v.to_string(),
            None if crate::config::HIDDEN_DEFAULTS
                .iter()
                .any(|(p, _)| *p == path) =>
            {
                crate::config::hidden_default(&path).to_string()
            }
            None if path == "train.model.normalize" => "unset: the loss's recommendation".into(),
            None => "unset".into(),
        };
        let stages = |m: &BTreeMap<String, BTreeSet<&'static str>>| -> BTreeSet<&'static str> {
            m.iter()
                .filter(|(k, _)| *k == &path || k.starts_with(&format!("{path}.")))
                .flat_map(|(_, s)| s.iter().copied())
                .collect()
        };
        let (now, on) = (stages(&always), stages(&sometimes));
        let keys = if !now.is_empty() {
            now.into_iter().collect::<Vec<_>>().join(", ")
        } else if !on.is_empty() {
            let when = CONDITIONS
                .iter()
                .find(|(p, _)| path.starts_with(p))
                .map(|(_, w)| *w)
                .unwrap_or("when not the default");
            format!("{} ({when})", on.into_iter().collect::<Vec<_>>().join(", "))
        } else {
            "—".into()
        };
        rows.push((path, default, keys));
    }
    let store = Value::try_from(dml_remote::RemoteSettings::default())
        .context("the [store] defaults as TOML")?;
    rows.push(("store.remote".into(), "unset".into(), "—".into()));
    let mut store_rows = Vec::new();
    leaves("store", &store, &mut store_rows);
    for (path, v) in store_rows {
        rows.push((path, v.to_string(), "—".into()));
    }
    let mut out = String::from("| setting | default | in the key of |\n| --- | --- | --- |\n");
    for (path, default, keys) in rows {
        out.push_str(&format!(
            "| `{path}` | `{}` | {keys} |\n",
            default.replace('|', "\\|")
        ));
    }
    out.push_str(
        "\nEach loss takes its own parameters (`train.loss.margin`, …), with its own defaults: `dml presets --show NAME` and the Training section show them; they are in the train key. `sweep` and `store` are not settings of a stage.",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_which_settings_enter_which_keys() {
        let t = table().unwrap();
        let row = |path: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("| `{path}` |")))
                .unwrap_or_else(|| panic!("no row for {path} in\n{t}"))
                .to_string()
        };
        assert!(
            row("plan.p").ends_with("| `20` | plan |"),
            "{}",
            row("plan.p")
        );
        assert!(
            row("image.crop").contains("embed, train"),
            "{}",
            row("image.crop")
        );
        assert!(
            row("image.resize").contains("decode"),
            "{}",
            row("image.resize")
        );
        assert!(row("name").ends_with("| — |"), "{}", row("name"));
        assert!(row("train.checkpoint_every").ends_with("| — |"));
        assert!(row("train.validation.every").contains("when train.validation.every > 0"));
        assert!(row("train.model.pretrained").contains("| `unset` |"));
        assert!(row("executor.kind").ends_with("| — |"));
        assert!(row("store.remote_skip").contains("[\"decode\"]"));
    }
}
