//! The tests' configuration files, built from one tiny synthetic experiment instead of each
//! written out in full: [`Config::tiny`] indexes and plans in moments, [`Config::train`] adds
//! a few steps of the small CNN and the embed stage, and [`Config::set`] changes the
//! settings a test is about. The text is what a user would write: one `[table]` per
//! table, in the order of [`TABLES`], keys in the order they were first set.
use std::fmt;
use std::path::{Path, PathBuf};

/// The order of the tables in the text (the top-level keys first).
const TABLES: [&str; 13] = [
    "",
    "dataset",
    "synthetic",
    "image",
    "plan",
    "train",
    "train.model",
    "train.loss",
    "train.optimizer",
    "train.optimizer.algorithm",
    "train.validation",
    "embed",
    "report",
];

/// A setting's value, written as TOML.
pub trait TomlValue {
    /// The TOML text.
    fn toml(&self) -> String;
}

impl TomlValue for &str {
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}

impl TomlValue for i64 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for i32 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for f64 {
    fn toml(&self) -> String {
        let s = self.to_string();
        // `60` would be read back as an integer.
        if s.contains(['.', 'e', 'i', 'N']) {
            s
        } else {
            format!("{s}.0")
        }
    }
}

impl TomlValue for bool {
    fn toml(&self) -> String {
        self.to_string()
    }
}

/// A configuration file under construction.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Table (`train.model`; `""` for the top level) → `(key, TOML value)`s.
    tables: Vec<(String, Vec<(String, String)>)>,
}

impl Config {
    /// A small synthetic experiment, quick to build: 12 classes × 4 images of 32 px, 10
    /// P×K = 4×2 steps, the run named `tiny`.
    pub fn tiny() -> Self {
        Config::default()
            .set("name", "tiny")
            .set("dataset.kind", "synthetic")
            .set("synthetic.classes", 12)
            .set("synthetic.images_per_class", 4)
            .set("synthetic.image_size", 32)
            .set("plan.p", 4)
            .set("plan.k", 2)
            .set("plan.steps", 10)
    }

    /// A tiny end-to-end experiment: 8 steps of the small CNN (16-d, hard triplets) on the
    /// CPU at 28 px, a checkpoint every 2 steps, embedded 16 images at a time.
    pub fn train(self) -> Self {
        self.set("image.resize", 32)
            .set("image.crop", 28)
            .set("plan.steps", 8)
            .set("train.device", "cpu")
            .set("train.checkpoint_every", 2)
            .set("train.model.backbone", "small_cnn")
            .set("train.model.head", "direct")
            .set("train.model.embedding_dim", 16)
            .set("train.loss.name", "hard_triplet")
            .set("embed.batch_size", 16)
    }

    /// The run's name.
    pub fn named(self, name: &str) -> Self {
        self.set("name", name)
    }

    /// Sets `path` (`plan.steps`; a top-level key without a dot) to `value`, in its place
    /// when it is already set.
    pub fn set(mut self, path: &str, value: impl TomlValue) -> Self {
        let (table, key) = path.rsplit_once('.').unwrap_or(("", path));
        assert!(
            TABLES.contains(&table),
            "`{path}`: add the table `{table}` to TABLES"
        );
        let value = value.toml();
        let at = match self.tables.iter().position(|(t, _)| t == table) {
            Some(at) => at,
            None => {
                self.tables.push((table.to_string(), Vec::new()));
                self.tables.len() - 1
            }
        };
        let keys = &mut self.tables[at].1;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => keys.push((key.to_string(), value)),
        }
        self
    }

    /// Leaves `path` unset (and its table out, once it holds nothing).
    pub fn unset(mut self, path: &str) -> Self {
        let (table, key) = path.rsplit_once('.').unwrap_or(("", path));
        for (t, keys) in &mut self.tables {
            if t == table {
                keys.retain(|(k, _)| k != key);
            }
        }
        self.tables.retain(|(_, keys)| !keys.is_empty());
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        self.to_string()
    }

    /// Writes `DIR/config.toml`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        super::write_config(dir, &self.to_toml())
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        for name in TABLES {
            let Some((_, keys)) = self.tables.iter().find(|(t, _)| t == name) else {
                continue;
            };
            if !name.is_empty() {
                writeln!(f, "[{name}]")?;
            }
            for (k, v) in keys {
                writeln!(f, "{k} = {v}")?;
            }
        }
        Ok(())
    }
}

/// `ARGS --set dataset.kind="folder" --set dataset.root=ROOT`, then each of `settings` as a
/// `--set`: a run over a folder-per-class dataset (see [`super::folder_dataset`]).
pub fn on_folder(args: &[&str], root: &Path, settings: &[&str]) -> Vec<String> {
    let kind = "dataset.kind=\"folder\"".to_string();
    let root = format!("dataset.root={}", root.display());
    let sets = [kind, root]
        .into_iter()
        .chain(settings.iter().map(|s| s.to_string()));
    args.iter()
        .map(|a| a.to_string())
        .chain(sets.flat_map(|s| ["--set".to_string(), s]))
        .collect()
}

/// Small plans of the folder dataset of 6 classes (3 to train on): no validation, since the
/// default preset's holdout would leave 1 of these 3 training classes.
pub const FOLDER_PLAN: [&str; 4] = [
    "plan.p=2",
    "plan.k=2",
    "plan.steps=5",
    "train.validation.every=0",
];
