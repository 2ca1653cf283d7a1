//! Loading a configuration: preset or file, `--set` overrides, unknown-key
//! suggestions, `[sweep]` expansion, then the typed `ExperimentConfig`.
use anyhow::{anyhow, bail, Context, Result};
use dml_stages::config::ExperimentConfig;
use toml::Value;

/// One resolved experiment of a (possibly swept) configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Run name, with the sweep point appended for sweeps.
    pub name: String,
    /// The sweep point: (setting path, value) pairs, empty without a sweep.
    pub point: Vec<(String, String)>,
    /// The typed configuration.
    pub config: ExperimentConfig,
}

/// The whole request after loading: the base name, the experiments, the raw TOML.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration as resolved TOML (sweep table included), for run records.
    pub raw: Value,
    /// The experiments (one without a sweep).
    pub experiments: Vec<Resolved>,
    /// `[store]`: the remote cache (not part of any experiment or key).
    pub store: dml_remote::RemoteSettings,
}

/// Loads `file` (or `preset`, or the default synthetic preset), applies overrides.
pub fn load(
    file: Option<&std::path::Path>,
    preset: Option<&str>,
    sets: &[String],
) -> Result<Loaded> {
    let mut root = match (file, preset) {
        (_, Some(name)) => parse_preset(name)?,
        (None, None) => parse_preset(crate::presets::DEFAULT)?,
        (Some(_), None) => Value::Table(Default::default()),
    };
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config `{}`", path.display()))?;
        let v: Value = toml::from_str(&text)
            .with_context(|| format!("config `{}` is not valid TOML", path.display()))?;
        if let Some(p) = v.get("preset").and_then(Value::as_str) {
            root = parse_preset(p)?;
        }
        merge(&mut root, v);
    }
    if let Some(t) = root.as_table_mut() {
        t.remove("preset");
    }
    for set in sets {
        apply_set(&mut root, set)?;
    }
    resolve(root)
}

/// Validates and expands an already merged configuration (a run record's).
pub fn resolve(root: Value) -> Result<Loaded> {
    let (store, experiment_root) = crate::remote_cmds::split_store_table(&root)?;
    validate_keys(&experiment_root)?;
    let experiments = expand(&experiment_root)?;
    Ok(Loaded {
        raw: root,
        experiments,
        store,
    })
}

fn parse_preset(name: &str) -> Result<Value> {
    let text = crate::presets::find(name).ok_or_else(|| {
        let names: Vec<&str> = crate::presets::all().iter().map(|p| p.name).collect();
        let hint = nearest(name, names.iter().copied())
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        anyhow!("unknown preset `{name}`{hint}; `dml presets` lists them")
    })?;
    toml::from_str(text)
        .with_context(|| format!("built-in preset `{name}` is not valid TOML (a bug)"))
}

/// Deep-merges `over` into `base` (tables merge, everything else replaces).
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Applies `stage.key=value` (value as a TOML literal, else a string).
pub fn apply_set(root: &mut Value, set: &str) -> Result<()> {
    let (path, raw) = set.split_once('=').ok_or_else(|| {
        anyhow!("--set `{set}`: expected `stage.key=value`, e.g. --set train.lr=0.0001")
    })?;
    let path = path.trim();
    let raw = raw.trim();
    let value = parse_literal(raw);
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set `{set}`: `{path}` is not a setting path like `train.lr`");
    }
    // `sweep."train.loss"=[...]` style: the sweep table's keys are dotted paths themselves.
    if parts[0] == "sweep" && parts.len() > 1 {
        let table = root
            .as_table_mut()
            .ok_or_else(|| anyhow!("config root is not a table"))?
            .entry("sweep")
            .or_insert_with(|| Value::Table(Default::default()));
        if let Some(t) = table.as_table_mut() {
            t.insert(parts[1..].join("."), value);
        }
        return Ok(());
    }
    let mut cur = root;
    for part in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set `{set}`: `{part}` is not a table"))?;
        cur = table
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Default::default()));
    }
    cur.as_table_mut()
        .ok_or_else(|| anyhow!("--set `{set}`: parent of `{path}` is not a table"))?
        .insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_literal(raw: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct W {
        v: Value,
    }
    toml::from_str::<W>(&format!("v = {raw}"))
        .map(|w| w.v)
        .unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// The nearest known name, if any is close enough to be a likely typo.
pub fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Checks every key against the typed defaults; an unknown key names the nearest known one.
pub fn validate_keys(root: &Value) -> Result<()> {
    let known = known_keys()?;
    let Some(table) = root.as_table() else {
        bail!("the config must be a TOML table")
    };
    for (k, v) in table {
        if k == "sweep" {
            let Some(sweep) = v.as_table() else {
                bail!("[sweep] must be a table of `\"stage.key\" = [values]`")
            };
            for (axis, values) in sweep {
                let paths = axis_paths(axis)?;
                for path in &paths {
                    if TAGGED.iter().any(|t| path.starts_with(&format!("{t}."))) {
                        continue;
                    }
                    check_path(&known, path).with_context(|| format!("in [sweep]: `{path}`"))?;
                }
                let Some(values) = values.as_array() else {
                    bail!("[sweep] `{axis}` must be a list of values, e.g. `\"{axis}\" = [a, b]`");
                };
                if paths.len() > 1 {
                    let n = paths.len();
                    for (i, row) in values.iter().enumerate() {
                        if row.as_array().is_none_or(|r| r.len() != n) {
                            bail!(
                                "[sweep] `{axis}` moves {n} settings together: each value must be a list of {n} values in that order; value {} is `{row}`",
                                i + 1
                            );
                        }
                    }
                }
            }
            continue;
        }
        check_tree(&known, k, v)?;
    }
    Ok(())
}

/// The tree of known keys: the typed defaults, plus settings that default to
/// "unset" and so do not appear in them.
fn known_keys() -> Result<Value> {
    let mut known = Value::try_from(ExperimentConfig::default()).context("serialising defaults")?;
    for (table, key) in [
        ("model", "pretrained"),
        ("model", "input_scaling"),
        ("optimizer", "beta_learning_rate"),
    ] {
        if let Some(t) = known
            .get_mut("train")
            .and_then(|t| t.get_mut(table))
            .and_then(Value::as_table_mut)
        {
            t.insert(key.into(), Value::String(String::new()));
        }
    }
    Ok(known)
}

/// Tables whose fields depend on a tag (`train.loss.name`): serde checks them.
const TAGGED: [&str; 2] = ["train.loss", "train.optimizer.algorithm"];

fn check_tree(known: &Value, path: &str, v: &Value) -> Result<()> {
    if TAGGED.iter().any(|t| path.starts_with(&format!("{t}."))) {
        return Ok(());
    }
    check_path(known, path)?;
    if let Value::Table(t) = v {
        let kv = lookup(known, path);
        if kv.is_some_and(Value::is_table) {
            for (k, sub) in t {
                check_tree(known, &format!("{path}.{k}"), sub)?;
            }
        }
    }
    Ok(())
}

fn lookup<'a>(known: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(known, |cur, part| cur.get(part))
}

fn check_path(known: &Value, path: &str) -> Result<()> {
    let mut cur = known;
    let mut done = Vec::new();
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => {
                cur = next;
                done.push(part);
            }
            None => {
                let parent = if done.is_empty() {
                    String::new()
                } else {
                    format!("{}.", done.join("."))
                };
                let names: Vec<&str> = cur
                    .as_table()
                    .map(|t| t.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let hint = match nearest(part, names.iter().copied()) {
                    Some(n) => format!("; did you mean `{parent}{n}`?"),
                    None if names.is_empty() => String::new(),
                    None => format!("; known keys here: {}", names.join(", ")),
                };
                bail!("unknown setting `{parent}{part}`{hint}");
            }
        }
    }
    Ok(())
}

/// The setting paths of a sweep axis: `"plan.p"`, or several that move together,
/// comma separated (`"train.loss.name, plan.p, plan.k"`).
fn axis_paths(axis: &str) -> Result<Vec<String>> {
    let paths: Vec<String> = axis.split(',').map(|p| p.trim().to_string()).collect();
    if paths.iter().any(String::is_empty) {
        bail!("[sweep] `{axis}`: expected a setting path, or several separated by commas");
    }
    Ok(paths)
}

/// Expands `[sweep]` into the grid of experiments (first axis slowest). An axis of
/// several comma-separated paths is zipped: its values are rows, one value per path.
fn expand(root: &Value) -> Result<Vec<Resolved>> {
    let mut base = root.clone();
    let sweep = base.as_table_mut().and_then(|t| t.remove("sweep"));
    let mut axes: Vec<(String, Vec<String>, Vec<Vec<Value>>)> = Vec::new();
    if let Some(Value::Table(t)) = sweep {
        for (axis, v) in t {
            let paths = axis_paths(&axis)?;
            let values = v.as_array().cloned().unwrap_or_default();
            let rows = if paths.len() == 1 {
                values.into_iter().map(|v| vec![v]).collect()
            } else {
                values
                    .into_iter()
                    .map(|v| v.as_array().cloned().unwrap_or_default())
                    .collect()
            };
            axes.push((axis, paths, rows));
        }
    }
    if let Some((axis, ..)) = axes.iter().find(|(_, _, rows)| rows.is_empty()) {
        bail!("[sweep] `{axis}` has no values");
    }
    let base_cfg: ExperimentConfig = typed(&base)?;
    let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (_, paths, rows) in &axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                rows.iter().map(move |row| {
                    let mut q = p.clone();
                    q.extend(paths.iter().cloned().zip(row.iter().cloned()));
                    q
                })
            })
            .collect();
    }
    let mut out = Vec::new();
    for point in points {
        let mut v = base.clone();
        let mut shown = Vec::new();
        for (path, value) in &point {
            let literal = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            apply_set(&mut v, &format!("{path}={}", value_literal(value)))?;
            shown.push((path.clone(), literal));
        }
        let config: ExperimentConfig = typed(&v)?;
        let name = if shown.is_empty() {
            base_cfg.name.clone()
        } else {
            let parts: Vec<String> = shown.iter().map(|(p, v)| format!("{p}={v}")).collect();
            format!("{}[{}]", base_cfg.name, parts.join(","))
        };
        out.push(Resolved {
            name,
            point: shown,
            config,
        });
    }
    Ok(out)
}

fn value_literal(v: &Value) -> String {
    v.to_string()
}

fn typed(v: &Value) -> Result<ExperimentConfig> {
    let text = toml::to_string(v).context("re-serialising the config")?;
    let mut c: ExperimentConfig = toml::from_str(&text).map_err(|e| {
        anyhow!("invalid configuration: {}", e.message()).context(locate(&e, &text))
    })?;
    // Defaults that depend on another setting are filled before anything is hashed:
    // without an explicit `train.model.normalize`, the loss's recommended one (the seed's).
    let explicit = v
        .get("train")
        .and_then(|t| t.get("model"))
        .and_then(|m| m.get("normalize"))
        .is_some();
    if !explicit {
        c.train.model.normalize = c.train.loss.normalize_by_default();
    }
    Ok(c)
}

fn locate(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start].lines().count().max(1);
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("at `{snippet}`")
        }
        None => "in the configuration".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let err = load(None, None, &["plan.sepd=3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown setting `plan.sepd`; did you mean `plan.seed`?"),
            "{err}"
        );
        let err = load(None, None, &["plann.seed=3".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `plan`?"), "{err}");
    }

    #[test]
    fn sets_and_sweeps() {
        let l = load(
            None,
            None,
            &["plan.seed=7".into(), "sweep.plan.p=[4, 5]".into()],
        )
        .unwrap();
        assert_eq!(l.experiments.len(), 2);
        assert_eq!(l.experiments[0].config.plan.seed, 7);
        assert_eq!(l.experiments[1].config.plan.p, 5);
        assert!(
            l.experiments[1].name.ends_with("[plan.p=5]"),
            "{}",
            l.experiments[1].name
        );
    }

    #[test]
    fn zipped_axes_move_together() {
        let l = load(
            None,
            None,
            &[
                r#"train.loss={name = "hard_triplet"}"#.into(),
                r#"sweep.train.loss.name, plan.k=[["hard_triplet", 6], ["npairs", 2]]"#.into(),
                "sweep.plan.seed=[0, 1]".into(),
            ],
        )
        .unwrap();
        let got: Vec<(String, u32, u64)> = l
            .experiments
            .iter()
            .map(|e| {
                (
                    e.config.train.loss.name().to_string(),
                    e.config.plan.k,
                    e.config.plan.seed,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("hard_triplet".to_string(), 6, 0),
                ("npairs".to_string(), 2, 0),
                ("hard_triplet".to_string(), 6, 1),
                ("npairs".to_string(), 2, 1),
            ]
        );
        assert!(
            l.experiments[1]
                .name
                .ends_with("[plan.seed=0,train.loss.name=npairs,plan.k=2]"),
            "{}",
            l.experiments[1].name
        );
        // Each loss keeps its recommended normalisation.
        assert!(!l.experiments[0].config.train.model.normalize);
        let err = format!(
            "{:#}",
            load(None, None, &["sweep.plan.p, plan.k=[[4, 2], [5]]".into()]).unwrap_err()
        );
        assert!(err.contains("value 2 is `[5]`"), "{err}");
        let err = format!(
            "{:#}",
            load(None, None, &["sweep.plan.p, plan.kk=[[4, 2]]".into()]).unwrap_err()
        );
        assert!(err.contains("did you mean `plan.k`?"), "{err}");
    }

    #[test]
    fn bad_types_are_named() {
        let err = format!(
            "{:#}",
            load(None, None, &["plan.p=\"many\"".into()]).unwrap_err()
        );
        assert!(err.contains("invalid"), "{err}");
    }
}
