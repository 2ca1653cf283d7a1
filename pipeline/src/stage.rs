//! The `Stage` trait and what a stage sees while it runs.
use dml_artifacts::{ArtifactStore, Manifest};
use indicatif::{HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// When the dataset fingerprint changed since the artifact `previous_key`: the
    /// first few files that differ, for the explanation (empty if it cannot tell).
    fn changed_files(&self, _env: &PlanEnv<'_>, _previous_key: &str) -> Vec<String> {
        Vec::new()
    }
    /// For a stage about to run under `key`: what an interrupted earlier build
    /// left to continue from (`resumes from the checkpoint at step 400`).
    fn resume_note(&self, _env: &PlanEnv<'_>, _key: &str) -> Option<String> {
        None
    }
    /// True if the stage runs on the accelerator: it then holds one device slot while it
    /// runs (at most one such stage per GPU) and reads it from [`RunContext::device_index`].
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
    pub(crate) device_index: Option<usize>,
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

    /// This artifact's key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The device slot the scheduler gave this stage (the GPU index to run on), for a stage
    /// whose [`Stage::uses_device`] is true; `None` otherwise. Never part of the key.
    pub fn device_index(&self) -> Option<usize> {
        self.device_index
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

    /// A progress bar on stderr. When stderr is not a terminal (nohup, Slurm, CI)
    /// the bar is hidden and its state is logged instead, one line every
    /// [`log_interval`] (position, the stage's message, rate and ETA).
    pub fn progress(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        let eta = std::sync::Arc::new(SteadyEta::default());
        if let Ok(style) = ProgressStyle::with_template(template) {
            let shown = eta.clone();
            bar.set_style(style.progress_chars("=> ").with_key(
                "eta",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let eta = shown
                        .eta(s.pos(), s.len().unwrap_or(0), s.elapsed())
                        .or_else(|| (s.pos() > 0).then(|| s.eta()));
                    let _ = match eta {
                        Some(d) => write!(w, "{}", HumanDuration(d)),
                        None => write!(w, "…"),
                    };
                },
            ));
        }
        let bar = self.progress.add(bar);
        bar.set_prefix(self.node.to_string());
        if !std::io::stderr().is_terminal() {
            log_progress(&bar, self.node.to_string(), eta);
        }
        bar
    }
}

/// How often a hidden progress bar is logged: `DML_LOG_INTERVAL` seconds, default 10.
pub fn log_interval() -> Duration {
    std::env::var("DML_LOG_INTERVAL")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(10), Duration::from_secs_f64)
}

/// A time-left estimate that does not jump: the mean time per unit since the first
/// position seen (a resumed run's start, or the first step), times the units left.
/// indicatif's own estimate weighs the last ~15 s, so a slow step every few minutes
/// (a checkpoint, a validation pass, a first CPU step of 30 s) swung it between "6 days"
/// and "7 weeks" on a CPU run; the mean over the run moves slowly and only with the rate.
#[derive(Debug, Default)]
pub struct SteadyEta {
    /// (position, elapsed) when the first position above 0 was seen.
    origin: std::sync::Mutex<Option<(u64, Duration)>>,
}

impl SteadyEta {
    /// The time left at `pos` of `len` after `elapsed`, once two positions were seen.
    pub fn eta(&self, pos: u64, len: u64, elapsed: Duration) -> Option<Duration> {
        let mut origin = self.origin.lock().unwrap_or_else(|p| p.into_inner());
        if pos == 0 {
            return None;
        }
        let (p0, e0) = match *origin {
            // A position below the origin: the bar was reset, start again.
            Some((p0, _)) if pos < p0 => {
                *origin = Some((pos, elapsed));
                return None;
            }
            Some(o) => o,
            None => {
                *origin = Some((pos, elapsed));
                return None;
            }
        };
        if pos == p0 || elapsed <= e0 {
            return None;
        }
        let per_unit = (elapsed - e0).as_secs_f64() / (pos - p0) as f64;
        Some(Duration::from_secs_f64(
            per_unit * len.saturating_sub(pos) as f64,
        ))
    }
}

/// Logs a bar's state every [`log_interval`] until it finishes or is dropped (a hidden bar
/// where stderr is no terminal; also for the commands that draw bars outside a stage).
pub fn log_progress(bar: &ProgressBar, node: String, steady: std::sync::Arc<SteadyEta>) {
    let weak = bar.downgrade();
    let every = log_interval();
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        let Some(bar) = weak.upgrade() else { return };
        if bar.is_finished() {
            return;
        }
        let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
        if pos == 0 {
            continue;
        }
        let percent = (100 * pos).checked_div(len).unwrap_or(0);
        // Until two positions were seen, indicatif's own estimate.
        let eta = match steady
            .eta(pos, len, bar.elapsed())
            .or_else(|| Some(bar.eta()))
        {
            Some(d) if len > pos => format!(", ETA {}", HumanDuration(d)),
            _ => String::new(),
        };
        tracing::info!(
            "{node}: {pos}/{len} ({percent}%) {}, {:.1}/s, {} elapsed{eta}",
            bar.message(),
            bar.per_sec(),
            HumanDuration(bar.elapsed()),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_eta_is_the_mean_rate_since_the_first_position() {
        let eta = SteadyEta::default();
        let s = Duration::from_secs;
        // A resumed run: the first position seen is its start (step 300 of 1000).
        assert_eq!(eta.eta(300, 1000, s(1)), None);
        assert_eq!(eta.eta(300, 1000, s(5)), None);
        // 10 steps in 20 s: 2 s a step, 690 steps left.
        assert_eq!(eta.eta(310, 1000, s(21)), Some(s(1380)));
        // One slow step (a checkpoint: 60 s) raises it by its share of the mean only.
        let after = eta.eta(311, 1000, s(81)).unwrap().as_secs_f64();
        let before = 1380.0;
        assert!(after > before && after < before * 6.0, "{after}");
        let steady = eta.eta(400, 1000, s(81 + 89 * 2)).unwrap().as_secs_f64();
        assert!((steady - 600.0 * 258.0 / 100.0).abs() < 1.0, "{steady}");
        // Done: nothing left.
        assert_eq!(eta.eta(1000, 1000, s(2000)), Some(s(0)));
        // A reset bar starts over.
        assert_eq!(eta.eta(5, 1000, s(2001)), None);
    }
}
