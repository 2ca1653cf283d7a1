//! Where everything lives in a store, named once. Every path of the on-disk layout
//! (objects, staging, records, locks, caches, checkpoints, quarantine, `latest/`) is
//! spelled here and nowhere else, and the one file name that is read back (a key lock's)
//! is parsed here too.
//!
//! ```text
//! objects/<stage>/<key>/        finished artifacts (manifest.json last)
//! tmp/<stage>-<key>-<tag>/       staging; tmp/trash.* is an artifact being removed
//! runs/<stamp>-<name>.json       run records; runs/live/<pid>-<tag>.json live runs
//! locks/<stage>-<key>.lock       build locks; locks/gc.lock the gc fence
//! cache/<name>/                  caches that are not artifacts (stat, decode, …)
//! cache/checkpoints/<key>/       resume points of an unfinished train
//! quarantine/<stage>-<key>-<tag>/ artifacts that failed verification
//! latest/<run name>/<node>       links to the artifacts a run name used
//! claims/<stage>-<key>.json      Slurm: a stage submitted and not yet built
//! slurm/requests/, slurm/logs/   Slurm: what each job builds, and its log
//! ```
use std::path::{Path, PathBuf};

/// The paths of a store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// How an artifact moved into `tmp/` to be deleted is named (no stage name has a `.`,
/// so no staging directory starts so).
const TRASH_PREFIX: &str = "trash.";

/// The directories [`crate::ArtifactStore::open`] creates.
pub(crate) const CREATED: [&str; 5] = ["objects", "tmp", "runs", "locks", "cache"];

impl Layout {
    /// The layout of a store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `objects/`: every finished artifact.
    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// `objects/<stage>/<key>`: one finished artifact.
    pub fn object(&self, stage: &str, key: &str) -> PathBuf {
        self.objects().join(stage).join(key)
    }

    /// `objects/<stage>/<key>/manifest.json`, written last: its presence means finished.
    pub fn manifest(&self, stage: &str, key: &str) -> PathBuf {
        self.object(stage, key).join("manifest.json")
    }

    /// `tmp/`: staging directories and artifacts being removed.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `tmp/<stage>-<key>-<tag>`: where one build of a key writes before its commit.
    pub fn staging(&self, stage: &str, key: &str, tag: u64) -> PathBuf {
        self.tmp().join(format!("{stage}-{key}-{tag:016x}"))
    }

    /// The stage and key a staging directory's name (see [`Layout::staging`]) is for.
    pub fn parse_staging(file_name: &str) -> Option<(&str, &str)> {
        let mut parts = file_name.rsplitn(3, '-');
        let (_tag, key, stage) = (parts.next()?, parts.next()?, parts.next()?);
        Some((stage, key))
    }

    /// `tmp/trash.<stage>-<key>-<tag>`: an artifact moved out of `objects/` to be deleted.
    pub fn trash(&self, stage: &str, key: &str, tag: u64) -> PathBuf {
        self.tmp()
            .join(format!("{TRASH_PREFIX}{stage}-{key}-{tag:016x}"))
    }

    /// Whether a name in `tmp/` is an artifact being deleted (see [`Layout::trash`]).
    pub fn is_trash(file_name: &str) -> bool {
        file_name.starts_with(TRASH_PREFIX)
    }

    /// `runs/`: run records.
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// `runs/live/`: the registrations of runs in progress.
    pub fn live_runs(&self) -> PathBuf {
        self.runs().join("live")
    }

    /// `locks/`.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// `locks/<stage>-<key>.lock`: held while the key is built (or its resume point used).
    pub fn key_lock(&self, stage: &str, key: &str) -> PathBuf {
        self.locks().join(format!("{stage}-{key}.lock"))
    }

    /// `locks/gc.lock`: the fence between `dml gc` and runs resolving their plans.
    pub fn gc_lock(&self) -> PathBuf {
        self.locks().join("gc.lock")
    }

    /// The stage and key a lock file name (`<stage>-<key>.lock`) is for; `None` for
    /// `gc.lock` and anything else. Keys have no `-`, so the last one separates them.
    pub fn parse_key_lock(file_name: &str) -> Option<(&str, &str)> {
        let (stage, key) = file_name.strip_suffix(".lock")?.rsplit_once('-')?;
        (!stage.is_empty() && !key.is_empty()).then_some((stage, key))
    }

    /// `cache/<name>/`: a cache that is not an artifact.
    pub fn cache(&self, name: &str) -> PathBuf {
        self.root.join("cache").join(name)
    }

    /// `cache/checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.cache("checkpoints")
    }

    /// `cache/checkpoints/<key>/`: what an unfinished train of `key` resumes from.
    pub fn checkpoint(&self, key: &str) -> PathBuf {
        self.checkpoints().join(key)
    }

    /// `quarantine/`: artifacts that failed verification, until `dml gc`.
    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `quarantine/<stage>-<key>-<tag>`: one artifact moved aside.
    pub fn quarantined(&self, stage: &str, key: &str, tag: u64) -> PathBuf {
        self.quarantine().join(format!("{stage}-{key}-{tag:016x}"))
    }

    /// `latest/`: one folder of links per run name.
    pub fn latest(&self) -> PathBuf {
        self.root.join("latest")
    }

    /// `latest/<name>/`, for a run name already made file-safe.
    pub fn latest_run(&self, file_safe_name: &str) -> PathBuf {
        self.latest().join(file_safe_name)
    }

    /// `claims/`: the Slurm executor's claims, `<stage>-<key>.json` per stage submitted
    /// and not yet built.
    pub fn claims(&self) -> PathBuf {
        self.root.join("claims")
    }

    /// `claims/<stage>-<key>.json`.
    pub fn claim(&self, stage: &str, key: &str) -> PathBuf {
        self.claims().join(format!("{stage}-{key}.json"))
    }

    /// `slurm/requests/`: what each submitted job builds.
    pub fn slurm_requests(&self) -> PathBuf {
        self.root.join("slurm").join("requests")
    }

    /// `slurm/logs/`: the jobs' logs.
    pub fn slurm_logs(&self) -> PathBuf {
        self.root.join("slurm").join("logs")
    }

    /// `slurm/logs/<stage>-<key>-<job>.log` (`%j` as `job` gives sbatch's pattern).
    pub fn slurm_log(&self, stage: &str, key: &str, job: &str) -> PathBuf {
        self.slurm_logs().join(format!("{stage}-{key}-{job}.log"))
    }

    /// The target of a link in `latest/<name>/` to an artifact, relative to that folder.
    pub fn latest_target(stage: &str, key: &str) -> PathBuf {
        Path::new("../../objects").join(stage).join(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_are_read_back_as_written() {
        let l = Layout::new("/s");
        let key = "0123abcd".repeat(8);
        let path = l.key_lock("train", &key);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(Layout::parse_key_lock(name), Some(("train", key.as_str())));
        assert_eq!(Layout::parse_key_lock("gc.lock"), None);
        assert_eq!(Layout::parse_key_lock("-abc.lock"), None);
        assert_eq!(Layout::parse_key_lock("train-abc.json"), None);
    }

    #[test]
    fn staging_and_trash_names_are_read_back() {
        let l = Layout::new("/s");
        let staging = l.staging("embed", "abc", 7);
        let name = staging.file_name().unwrap().to_str().unwrap();
        assert_eq!(Layout::parse_staging(name), Some(("embed", "abc")));
        assert!(!Layout::is_trash(name));
        let trash = l.trash("embed", "abc", 7);
        assert!(Layout::is_trash(
            trash.file_name().unwrap().to_str().unwrap()
        ));
        assert_eq!(Layout::parse_staging("nodash"), None);
    }

    #[test]
    fn latest_links_resolve_to_the_object() {
        let l = Layout::new("/s");
        let link_dir = l.latest_run("cub");
        let resolved = link_dir.join(Layout::latest_target("embed", "k"));
        let normal: PathBuf = resolved.components().fold(PathBuf::new(), |mut p, c| {
            match c {
                std::path::Component::ParentDir => {
                    p.pop();
                }
                c => p.push(c),
            }
            p
        });
        assert_eq!(normal, l.object("embed", "k"));
    }
}
