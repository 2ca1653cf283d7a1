//! The `Stage` trait and what a stage sees while it runs.
use dml_artifacts::{ArtifactStore, Manifest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The error a stage returns (anyhow errors and thiserror enums both convert).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A pure function from (settings, input artifacts) to an output artifact.
pub trait Stage: Send + Sync {
    /// The stage's name: its folder in the store and its table in the config.
    fn name(&self) -> &'static str;
    /// Bumped by hand whenever the output changes for the same inputs.
    fn version(&self) -> u32;
    /// The canonical settings this stage reads, as `{"table": {"key": value}}`
    /// with every default filled in. Only what changes the output belongs here.
    fn settings(&self) -> serde_json::Value;
    /// Extra key material read from outside the store (a dataset fingerprint).
    fn fingerprint(&self, _env: &PlanEnv<'_>) -> Result<Option<String>, BoxError> {
        Ok(None)
    }
    /// What, besides settings and inputs, makes two instances distinct without
    /// being part of the key (a dataset root, whose content the fingerprint covers).
    /// Used only to share identical nodes between the experiments of a sweep.
    fn identity(&self) -> String {
        String::new()
    }
    /// True if the stage runs on the accelerator: two such stages never run at once.
    fn uses_device(&self) -> bool {
        false
    }
    /// Reads inputs from `ctx`, writes output files into `ctx.out_dir()`.
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError>;
}

/// What a stage may look at while keys are being computed.
pub struct PlanEnv<'a> {
    /// The store (for caches such as the dataset stat cache).
    pub store: &'a ArtifactStore,
}

/// What a running stage sees.
pub struct RunContext<'a> {
    pub(crate) out_dir: &'a Path,
    pub(crate) inputs: BTreeMap<String, (PathBuf, Manifest)>,
    pub(crate) key: &'a str,
    pub(crate) node: &'a str,
    pub(crate) store: &'a ArtifactStore,
    pub(crate) notes: serde_json::Map<String, serde_json::Value>,
    pub(crate) progress: &'a MultiProgress,
    /// Per-key cache directories handed out, removed once the artifact is committed.
    pub(crate) key_dirs: Vec<PathBuf>,
}

impl<'a> RunContext<'a> {
    /// The directory to write outputs into (renamed into the store on success).
    pub fn out_dir(&self) -> &Path {
        self.out_dir
    }

    /// The directory of an input artifact, by role.
    pub fn input(&self, role: &str) -> Result<&Path, BoxError> {
        self.inputs
            .get(role)
            .map(|(p, _)| p.as_path())
            .ok_or_else(|| {
                format!(
                    "stage `{}` has no input `{role}` (a DAG assembly bug)",
                    self.node
                )
                .into()
            })
    }

    /// The manifest of an input artifact, by role.
    pub fn input_manifest(&self, role: &str) -> Option<&Manifest> {
        self.inputs.get(role).map(|(_, m)| m)
    }

    /// True if the stage has an input with this role.
    pub fn has_input(&self, role: &str) -> bool {
        self.inputs.contains_key(role)
    }

    /// This artifact's key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The node id (e.g. `train` or `train[loss=npairs]`).
    pub fn node(&self) -> &str {
        self.node
    }

    /// A cache directory outside the objects (checkpoints, stat caches).
    pub fn cache_dir(&self, name: &str) -> Result<PathBuf, BoxError> {
        Ok(self.store.cache_dir(name)?)
    }

    /// A cache directory for this key only, `cache/<name>/<key>/` (created if needed),
    /// for state that outlives a failed or killed attempt (resumable checkpoints).
    /// The engine removes it once the artifact is committed, never before.
    pub fn key_cache_dir(&mut self, name: &str) -> Result<PathBuf, BoxError> {
        let dir = self.store.cache_dir(name)?.join(self.key);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating `{}`: {e}", dir.display()))?;
        if !self.key_dirs.contains(&dir) {
            self.key_dirs.push(dir.clone());
        }
        Ok(dir)
    }

    /// Records a note in the manifest (not part of the key).
    pub fn note(&mut self, key: &str, value: serde_json::Value) {
        self.notes.insert(key.to_string(), value);
    }

    /// A progress bar on stderr, hidden when stderr is not a terminal.
    pub fn progress(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let bar = self.progress.add(bar);
        bar.set_prefix(self.node.to_string());
        bar
    }
}
