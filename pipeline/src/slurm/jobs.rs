//! Slurm's commands (`sbatch`, `squeue`, `sacct`, `scancel`) and what they print, and
//! the arguments and batch script of one stage's job.
use super::error::SlurmError;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A job as `squeue` (or `sacct`) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`…
    pub state: String,
    /// Slurm's reason (`Dependency`, `DependencyNeverSatisfied`, `Resources`…).
    pub reason: String,
}

impl JobState {
    /// Queued or running (a claim held by such a job is alive).
    pub fn live(&self) -> bool {
        if self.reason == "DependencyNeverSatisfied" {
            return false;
        }
        matches!(
            self.state.as_str(),
            "PENDING"
                | "CONFIGURING"
                | "RUNNING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "RESV_DEL_HOLD"
                | "STOPPED"
        )
    }
}

/// Parses `squeue -h -o "%i|%T|%r"` lines.
fn parse_squeue(text: &str) -> BTreeMap<String, JobState> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '|');
            let id = parts.next()?.trim();
            let state = parts.next()?.trim();
            let reason = parts.next().unwrap_or("").trim();
            (!id.is_empty()).then(|| {
                (
                    id.to_string(),
                    JobState {
                        state: state.to_string(),
                        reason: reason.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// Parses `sacct -n -X -P -o JobID,State` lines (`CANCELLED by 0` → `CANCELLED`).
fn parse_sacct(text: &str) -> BTreeMap<String, JobState> {
    text.lines()
        .filter_map(|line| {
            let (id, state) = line.trim().split_once('|')?;
            let state = state.split_whitespace().next()?;
            Some((
                id.trim().to_string(),
                JobState {
                    state: state.to_string(),
                    reason: String::new(),
                },
            ))
        })
        .collect()
}

fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.stdin(Stdio::null());
    c
}

/// The state of each job Slurm still knows (`squeue`, then `sacct` for jobs
/// squeue has forgotten, where accounting exists). Unknown jobs are left out.
pub fn job_states(ids: &[String]) -> Result<BTreeMap<String, JobState>, SlurmError> {
    let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let list = ids.join(",");
    let out = tool("squeue")
        .args(["-h", "--states=all", "-o", "%i|%T|%r", "-j", &list])
        .output()
        .map_err(|source| SlurmError::MissingTool {
            tool: "squeue",
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut states = if out.status.success() {
        parse_squeue(&String::from_utf8_lossy(&out.stdout))
    } else if stderr.contains("Invalid job id") {
        // Every job of the list has left the controller's memory.
        BTreeMap::new()
    } else {
        return Err(SlurmError::Failed {
            command: format!("squeue -j {list}"),
            stderr: stderr.trim().to_string(),
        });
    };
    let forgotten: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !states.contains_key(*id))
        .collect();
    if !forgotten.is_empty() {
        // Accounting remembers jobs longer; without it (`accounting_storage/none`)
        // sacct fails, and those jobs stay unknown.
        if let Ok(out) = tool("sacct")
            .args([
                "-n",
                "-X",
                "-P",
                "-o",
                "JobID,State",
                "-j",
                &forgotten.join(","),
            ])
            .output()
        {
            if out.status.success() {
                for (id, st) in parse_sacct(&String::from_utf8_lossy(&out.stdout)) {
                    states.entry(id).or_insert(st);
                }
            }
        }
    }
    Ok(states)
}

/// Submits `script` (read by sbatch from stdin) and returns the job id.
pub fn sbatch(args: &[String], script: &str) -> Result<String, SlurmError> {
    let missing = |source| SlurmError::MissingTool {
        tool: "sbatch",
        source,
    };
    let mut child = tool("sbatch")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(missing)?;
    }
    let out = child.wait_with_output().map_err(missing)?;
    if !out.status.success() {
        return Err(SlurmError::Failed {
            command: format!("sbatch {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_parsable(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| SlurmError::NoJobId {
        args: args.join(" "),
    })
}

/// `sbatch --parsable` prints `jobid` or `jobid;cluster`.
fn parse_parsable(stdout: &str) -> Option<String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let id = line.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// Cancels jobs.
pub fn scancel(ids: &[String]) -> Result<(), SlurmError> {
    let out = tool("scancel")
        .args(ids)
        .output()
        .map_err(|source| SlurmError::MissingTool {
            tool: "scancel",
            source,
        })?;
    if !out.status.success() {
        return Err(SlurmError::Failed {
            command: format!("scancel {}", ids.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// One stage's job.

/// What a job asks Slurm for (the `[executor]` settings, minus `kind`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobResources {
    /// `--partition` (none when empty).
    pub partition: String,
    /// `--gres=gpu:N` for stages that use the accelerator (none when 0).
    pub gpus_per_job: u32,
    /// `--cpus-per-task` (none when 0).
    pub cpus_per_task: u32,
    /// `--mem` (none when empty).
    pub mem: String,
    /// `--time` (none when empty).
    pub time: String,
    /// Passed to `sbatch` as they are, last.
    pub extra_args: Vec<String>,
}

/// Quotes for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sbatch` arguments of one stage's job.
pub fn sbatch_args(
    settings: &JobResources,
    job_name: &str,
    log_pattern: &Path,
    workdir: &Path,
    uses_device: bool,
    deps: &[String],
) -> Vec<String> {
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name={job_name}"),
        format!("--output={}", log_pattern.display()),
        format!("--chdir={}", workdir.display()),
        // A job whose input failed can never run: Slurm cancels it.
        "--kill-on-invalid-dep=yes".to_string(),
    ];
    if !deps.is_empty() {
        a.push(format!("--dependency=afterok:{}", deps.join(":")));
    }
    if !settings.partition.is_empty() {
        a.push(format!("--partition={}", settings.partition));
    }
    if uses_device && settings.gpus_per_job > 0 {
        a.push(format!("--gres=gpu:{}", settings.gpus_per_job));
    }
    if settings.cpus_per_task > 0 {
        a.push(format!("--cpus-per-task={}", settings.cpus_per_task));
    }
    if !settings.mem.is_empty() {
        a.push(format!("--mem={}", settings.mem));
    }
    if !settings.time.is_empty() {
        a.push(format!("--time={}", settings.time));
    }
    a.extend(settings.extra_args.iter().cloned());
    a
}

/// The batch script: run this very binary on one node of the DAG.
pub fn job_script(exe: &Path, root: &Path, request: &Path, node: &str, key: &str) -> String {
    format!(
        "#!/bin/sh\n# dml: build `{}` ({}) from the shared store\nexec {} -v --store {} exec-stage --request {} --node {} --key {}\n",
        node.replace('\n', " "),
        &key[..key.len().min(12)],
        sh_quote(&exe.display().to_string()),
        sh_quote(&root.display().to_string()),
        sh_quote(&request.display().to_string()),
        sh_quote(node),
        sh_quote(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_and_sacct_lines_are_parsed() {
        let st = parse_squeue(
            "3|CANCELLED|None\n4|PENDING|DependencyNeverSatisfied\n5|RUNNING|None\n\n",
        );
        assert_eq!(st.len(), 3);
        assert!(!st["3"].live());
        assert!(!st["4"].live(), "a job whose input failed is not alive");
        assert!(st["5"].live());
        let st = parse_sacct("7|CANCELLED by 0\n8|COMPLETED\n");
        assert_eq!(st["7"].state, "CANCELLED");
        assert_eq!(st["8"].state, "COMPLETED");
    }

    #[test]
    fn parsable_output_gives_the_job_id() {
        assert_eq!(parse_parsable("123\n").as_deref(), Some("123"));
        assert_eq!(parse_parsable("123;cluster\n").as_deref(), Some("123"));
        assert_eq!(parse_parsable("Submitted batch job 1\n"), None);
        assert_eq!(parse_parsable(""), None);
    }

    #[test]
    fn sbatch_arguments_follow_the_settings() {
        let mut s = JobResources::default();
        let log = Path::new("/s/slurm/logs/train-k-%j.log");
        let a = sbatch_args(&s, "dml:train", log, Path::new("/s"), false, &[]);
        assert!(a.contains(&"--kill-on-invalid-dep=yes".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("--dependency")));
        assert!(!a.iter().any(|x| x.starts_with("--gres")), "{a:?}");
        s.partition = "gpu".into();
        s.gpus_per_job = 2;
        s.cpus_per_task = 8;
        s.mem = "32G".into();
        s.time = "1-00:00:00".into();
        s.extra_args = vec!["--account=lab".into()];
        let a = sbatch_args(
            &s,
            "dml:train",
            log,
            Path::new("/s"),
            true,
            &["4".into(), "5".into()],
        );
        for want in [
            "--dependency=afterok:4:5",
            "--partition=gpu",
            "--gres=gpu:2",
            "--cpus-per-task=8",
            "--mem=32G",
            "--time=1-00:00:00",
            "--account=lab",
            "--output=/s/slurm/logs/train-k-%j.log",
        ] {
            assert!(a.contains(&want.to_string()), "{want} not in {a:?}");
        }
        s.gpus_per_job = 0;
        let a = sbatch_args(&s, "dml:train", log, Path::new("/s"), true, &[]);
        assert!(!a.iter().any(|x| x.starts_with("--gres")), "{a:?}");
    }

    #[test]
    fn the_job_script_quotes_every_argument() {
        let s = job_script(
            Path::new("/opt/it's/dml"),
            Path::new("/shared/store"),
            Path::new("/shared/store/slurm/requests/r.json"),
            "train[train.loss.name=npairs,plan.k=2]",
            "abcdef0123456789",
        );
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(
            s.contains(r"exec '/opt/it'\''s/dml' -v --store '/shared/store' exec-stage"),
            "{s}"
        );
        assert!(
            s.contains("--node 'train[train.loss.name=npairs,plan.k=2]' --key 'abcdef0123456789'"),
            "{s}"
        );
    }
}
