//! Loading a configuration: preset or file, `--set` overrides, unknown-key
//! suggestions, `[sweep]` expansion, then the typed `ExperimentConfig`.
use anyhow::{anyhow, bail, Context, Result};
use dml_stages::config::{ExperimentConfig, ResolvedConfig};
use toml::Value;

/// One resolved experiment of a (possibly swept) configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Run name, with the sweep point appended for sweeps.
    pub name: String,
    /// The sweep point: (setting path, value) pairs, empty without a sweep.
    pub point: Vec<(String, String)>,
    /// The typed configuration, resolved.
    pub config: ResolvedConfig,
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
    /// The config file, when it names no preset (so every setting it leaves out is a
    /// built-in default, which the run says).
    pub without_preset: Option<std::path::PathBuf>,
    /// Where each setting came from, to say so in an error about it.
    origins: Origins,
}

/// Where the settings of a run came from: the user's file, `--set`s, a preset.
#[derive(Debug, Clone, Default)]
struct Origins {
    source: Option<ConfigSource>,
    sets: Vec<String>,
    preset: Option<String>,
}

impl Origins {
    /// Where `path` was set: `--set …`, `file:line`, the preset, or `None` (a default).
    fn of(&self, path: &str) -> Option<String> {
        if let Some(set) = self.sets.iter().rev().find(|s| {
            s.split_once('=').is_some_and(|(p, _)| {
                p.trim() == path || path.starts_with(&format!("{}.", p.trim()))
            })
        }) {
            return Some(format!("from --set `{set}`"));
        }
        if let Some(src) = &self.source {
            if let Some(line) = line_of_key(&src.text, path) {
                return Some(format!("set at {}:{line}", src.path.display()));
            }
        }
        let preset = self.preset.as_deref()?;
        let text = crate::presets::find(preset)?;
        Some(match line_of_key(text, path) {
            Some(_) => format!("from preset `{preset}`"),
            None => "a built-in default".to_string(),
        })
    }
}

impl Loaded {
    /// An error about settings, with where the first setting it names came from
    /// (`from --set …`, `config.toml:12`, a preset), so the user knows what to edit.
    pub fn locate_error(&self, e: anyhow::Error) -> anyhow::Error {
        let text = format!("{e:#}");
        let known = known_keys().ok();
        let path = setting_paths(&text).into_iter().find(|p| {
            known
                .as_ref()
                .is_some_and(|k| lookup(k, p).is_some() || TAGGED.iter().any(|t| p.starts_with(t)))
        });
        match path.and_then(|p| self.origins.of(&p).map(|o| (p, o))) {
            Some((p, origin)) => anyhow!("{text} (`{p}` {origin})"),
            None => e,
        }
    }

    /// The experiments as the DAG builder takes them.
    pub fn dag_experiments(&self) -> Vec<dml_stages::dag::Experiment> {
        self.experiments
            .iter()
            .map(|e| dml_stages::dag::Experiment {
                name: e.name.clone(),
                point: e.point.clone(),
                config: e.config.clone(),
            })
            .collect()
    }
}

/// Settings that a flag of `dml run` sets, typed (not `--set` strings): applied after the
/// file, the preset and the `--set`s, and recorded in the run's config like them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlagSettings {
    /// `--skip-bad-images`: `index.skip_bad_images = true`.
    pub skip_bad_images: bool,
}

impl FlagSettings {
    /// Writes the flags' settings into a config tree.
    pub fn apply(&self, root: &mut Value) -> Result<()> {
        if self.skip_bad_images {
            let table = root
                .as_table_mut()
                .ok_or_else(|| anyhow!("config root is not a table"))?
                .entry("index")
                .or_insert_with(|| Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| anyhow!("`index` in the config is not a table"))?;
            table.insert("skip_bad_images".into(), Value::Boolean(true));
        }
        Ok(())
    }
}

/// Loads a run's configuration: the file (or a preset; the default preset without
/// either), then the `--set`s.
pub fn load(
    file: Option<&std::path::Path>,
    preset: Option<&str>,
    sets: &[String],
) -> Result<Loaded> {
    load_with_flags(file, preset, sets, FlagSettings::default())
}

/// [`load`], then the settings of `dml run`'s flags.
pub fn load_with_flags(
    file: Option<&std::path::Path>,
    preset: Option<&str>,
    sets: &[String],
    flags: FlagSettings,
) -> Result<Loaded> {
    let mut root = match (file, preset) {
        (_, Some(name)) => parse_preset(name)?,
        (None, None) => parse_preset(crate::presets::DEFAULT)?,
        (Some(_), None) => Value::Table(Default::default()),
    };
    let mut source = None;
    let mut without_preset = None;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config `{}`", path.display()))?;
        let mut v: Value = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "config `{}` is not valid TOML{}: {}",
                path.display(),
                e.span()
                    .map(|s| format!(" (line {})", line_of(&text, s.start)))
                    .unwrap_or_default(),
                e.message()
            )
        })?;
        let named = v.get("preset").and_then(Value::as_str).map(str::to_string);
        match v.get("preset") {
            Some(Value::String(p)) => root = parse_preset(p)?,
            Some(other) => bail!(
                "{}: `preset` must be a preset's name as a string, e.g. preset = \"synthetic\" (`dml presets` lists them), not `{other}`",
                path.display()
            ),
            None if preset.is_none() => without_preset = Some(path.to_path_buf()),
            None => {}
        }
        normalize_shorthands(&mut v);
        merge(&mut root, v);
        source = Some(ConfigSource {
            path: path.to_path_buf(),
            text,
            preset: named,
        });
    }
    if let Some(t) = root.as_table_mut() {
        t.remove("preset");
    }
    apply_sets(&mut root, sets)?;
    flags.apply(&mut root)?;
    let mut loaded = resolve_with(root, source.as_ref(), sets)?;
    loaded.without_preset = without_preset;
    loaded.origins = Origins {
        preset: match (&source, preset) {
            (Some(src), _) if src.preset.is_some() => src.preset.clone(),
            (_, Some(p)) => Some(p.to_string()),
            (None, None) => Some(crate::presets::DEFAULT.to_string()),
            (Some(_), None) => None,
        },
        source,
        sets: sets.to_vec(),
    };
    Ok(loaded)
}

/// `dml run --show-config`: every experiment's resolved configuration as TOML (every
/// setting, defaults filled in and "decide later" settings decided).
pub fn show_config(loaded: &Loaded) -> Result<String> {
    let mut out = String::new();
    for e in &loaded.experiments {
        if loaded.experiments.len() > 1 {
            out.push_str(&format!("# sweep point {}\n", e.name));
        }
        let value = Value::try_from(&*e.config).context("the configuration as TOML")?;
        out.push_str(&toml::to_string_pretty(&value).context("the configuration as TOML")?);
        out.push('\n');
    }
    Ok(out.trim_end().to_string())
}

/// The user's config file, kept to say on which line a bad value stands.
#[derive(Debug, Clone)]
struct ConfigSource {
    path: std::path::PathBuf,
    text: String,
    /// The preset its `preset = …` line names.
    preset: Option<String>,
}

impl ConfigSource {
    /// `msg` prefixed with the `file:line` that sets `path`, and that line shown.
    fn at_line(&self, path: &str, msg: &str) -> Option<String> {
        let line = line_of_key(&self.text, path)?;
        let shown = self.text.lines().nth(line - 1).unwrap_or("").trim();
        Some(format!(
            "{}:{line}: {msg}\n  {line} | {shown}",
            self.path.display()
        ))
    }
}

/// The dotted setting paths a message names (`train.optimizer.learning_rate`), in order.
fn setting_paths(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .map(|w| w.trim_matches('.'))
        .filter(|w| {
            w.contains('.')
                && w.split('.')
                    .all(|p| !p.is_empty() && p.starts_with(|c: char| c.is_ascii_lowercase()))
        })
        .map(str::to_string)
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Validates and expands an already merged configuration (a run record's).
pub fn resolve(root: Value) -> Result<Loaded> {
    resolve_with(root, None, &[])
}

fn resolve_with(mut root: Value, source: Option<&ConfigSource>, sets: &[String]) -> Result<Loaded> {
    normalize_shorthands(&mut root);
    let (store, experiment_root) = crate::remote_cmds::split_store_table(&root)?;
    validate_keys(&experiment_root).map_err(|e| {
        if e.chain().count() > 1 {
            return e; // `in [sweep]: …` keeps its context
        }
        match e.downcast::<UnknownSetting>() {
            Ok(u) => anyhow!(u.located(source, sets)),
            Err(e) => e,
        }
    })?;
    let experiments = expand(&experiment_root).map_err(|e| match e.downcast::<TypeError>() {
        Ok(te) => anyhow!(te.located(source, sets)),
        Err(e) => e,
    })?;
    Ok(Loaded {
        raw: root,
        experiments,
        store,
        without_preset: None,
        origins: Origins::default(),
    })
}

fn parse_preset(name: &str) -> Result<Value> {
    let text = crate::presets::find(name).ok_or_else(|| crate::presets::unknown(name))?;
    toml::from_str(text)
        .with_context(|| format!("built-in preset `{name}` is not valid TOML (a bug)"))
}

/// Deep-merges `over` into `base` (tables merge, everything else replaces). A
/// tagged table (`train.loss`) whose `name` changes is replaced, not merged: the
/// new loss starts from its own defaults, never from the old loss's parameters.
pub fn merge(base: &mut Value, over: Value) {
    merge_at(base, over, "")
}

fn merge_at(base: &mut Value, over: Value, path: &str) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get_mut(&k) {
                    Some(slot)
                        if slot.is_table() && v.is_table() && !tag_changes(&sub, slot, &v) =>
                    {
                        merge_at(slot, v, &sub)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// True if `path` is a tagged table and `over` names another variant than `base`.
fn tag_changes(path: &str, base: &Value, over: &Value) -> bool {
    TAGGED.contains(&path)
        && over
            .get("name")
            .is_some_and(|new| base.get("name") != Some(new))
}

/// `train.loss = "npairs"` is short for `[train.loss] name = "npairs"` (same for
/// `train.optimizer.algorithm`), in files, `--set` and sweep axes alike.
fn normalize_shorthands(root: &mut Value) {
    for tagged in TAGGED {
        let mut cur = Some(&mut *root);
        for part in tagged.split('.') {
            cur = cur.and_then(|c| c.get_mut(part));
        }
        if let Some(slot) = cur {
            if let Value::String(name) = slot {
                let mut t = toml::map::Map::new();
                t.insert("name".into(), Value::String(name.clone()));
                *slot = Value::Table(t);
            }
        }
    }
}

/// Applies `--set`s in order, except that switching a tagged table's variant
/// (`train.loss.name=npairs` or `train.loss=npairs`) comes first, so the new loss
/// starts from its defaults and parameters given in the same command apply on top.
pub fn apply_sets(root: &mut Value, sets: &[String]) -> Result<()> {
    let (switches, rest): (Vec<&String>, Vec<&String>) = sets.iter().partition(|s| {
        s.split_once('=')
            .is_some_and(|(p, _)| tag_switch(p.trim()).is_some())
    });
    for set in switches.into_iter().chain(rest) {
        apply_set(root, set)?;
    }
    Ok(())
}

/// The tagged table a path switches (`train.loss` for `train.loss.name` or `train.loss`).
fn tag_switch(path: &str) -> Option<&'static str> {
    TAGGED
        .iter()
        .copied()
        .find(|t| path == *t || path.strip_prefix(t) == Some(".name"))
}

/// Applies `stage.key=value` (value as a TOML literal, read as the setting's type:
/// `name=2024` stays a string, `retrieve.ks=1,5` is a list).
pub fn apply_set(root: &mut Value, set: &str) -> Result<()> {
    let (path, raw) = set.split_once('=').ok_or_else(|| {
        anyhow!(
            "--set `{set}`: expected `stage.key=value`, e.g. --set train.optimizer.learning_rate=0.0001"
        )
    })?;
    let path = path.trim();
    let raw = raw.trim();
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set `{set}`: `{path}` is not a setting path like `plan.seed`");
    }
    // `sweep."train.loss"=[...]` style: the sweep table's keys are dotted paths themselves.
    if parts[0] == "sweep" && parts.len() > 1 {
        let table = root
            .as_table_mut()
            .ok_or_else(|| anyhow!("config root is not a table"))?
            .entry("sweep")
            .or_insert_with(|| Value::Table(Default::default()));
        if let Some(t) = table.as_table_mut() {
            t.insert(parts[1..].join("."), parse_literal(raw));
        }
        return Ok(());
    }
    let value = coerce(path, raw, parse_literal(raw));
    apply_value(root, path, value).with_context(|| format!("--set `{set}`"))
}

/// `--sweep PATH=V1,V2,…` as the `--set` of a `[sweep]` axis: each value read as a TOML
/// literal (`0.1`, `true`) or else as text (`npairs`).
pub fn sweep_arg(arg: &str) -> Result<String> {
    let (path, raw) = arg.split_once('=').ok_or_else(|| {
        anyhow!("--sweep `{arg}`: expected `stage.key=value1,value2`, e.g. --sweep train.loss.name=npairs,angular")
    })?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        bail!("--sweep `{arg}`: `{path}` is not a setting path like `plan.seed`");
    }
    let values: Vec<Value> = raw
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(parse_literal)
        .collect();
    if values.is_empty() {
        bail!("--sweep `{arg}` gives no values; e.g. --sweep {path}=a,b");
    }
    Ok(format!("sweep.{path}={}", Value::Array(values)))
}

/// Reads a `--set` value as the type the setting has in the defaults: text for a
/// string setting whatever it looks like, comma-separated items for a list.
fn coerce(path: &str, raw: &str, parsed: Value) -> Value {
    let Ok(known) = known_keys() else {
        return parsed;
    };
    match (lookup(&known, path), &parsed) {
        (Some(Value::String(_)), v) if !v.is_str() && tag_switch(path).is_none() => {
            Value::String(raw.to_string())
        }
        (Some(Value::Array(_)), v) if !v.is_array() => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(parse_literal)
                .collect(),
        ),
        _ => parsed,
    }
}

/// Sets one setting. Switching a tagged table's variant replaces the table with
/// `{name = ...}` (the new variant's defaults) unless the name is unchanged.
fn apply_value(root: &mut Value, path: &str, value: Value) -> Result<()> {
    if let Some(tagged) = tag_switch(path) {
        if let Value::String(name) = &value {
            let mut cur = &mut *root;
            for part in tagged.split('.') {
                cur = cur
                    .as_table_mut()
                    .ok_or_else(|| anyhow!("`{part}` is not a table"))?
                    .entry(part.to_string())
                    .or_insert_with(|| Value::Table(Default::default()));
            }
            if cur.get("name").and_then(Value::as_str) != Some(name.as_str()) {
                let mut t = toml::map::Map::new();
                t.insert("name".into(), value);
                *cur = Value::Table(t);
            }
            return Ok(());
        }
    }
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for part in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| anyhow!("`{part}` is not a table"))?;
        cur = table
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Default::default()));
    }
    cur.as_table_mut()
        .ok_or_else(|| anyhow!("the parent of `{path}` is not a table"))?
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
pub(crate) fn known_keys() -> Result<Value> {
    let mut known = Value::try_from(ExperimentConfig::default()).context("serialising defaults")?;
    for (table, key, value) in [
        ("model", "normalize", Value::Boolean(false)),
        ("model", "pretrained", Value::String(String::new())),
        ("model", "input_scaling", Value::String(String::new())),
        ("optimizer", "beta_learning_rate", Value::Float(0.0)),
        ("optimizer", "clip_grad_norm", Value::Float(0.0)),
    ] {
        if let Some(t) = known
            .get_mut("train")
            .and_then(|t| t.get_mut(table))
            .and_then(Value::as_table_mut)
        {
            t.insert(key.into(), value);
        }
    }
    for (path, _) in HIDDEN_DEFAULTS {
        let (table, key) = path.rsplit_once('.').expect("a table and a key");
        let t = table
            .split('.')
            .try_fold(&mut known, |cur, part| cur.get_mut(part))
            .and_then(Value::as_table_mut);
        if let Some(t) = t {
            t.entry(key).or_insert_with(|| hidden_default(path));
        }
    }
    Ok(known)
}

/// Settings left out of the serialised defaults while they hold their default (so that
/// the stage keys of existing runs stay the same), with that default in TOML.
pub(crate) const HIDDEN_DEFAULTS: [(&str, &str); 11] = [
    ("train.model.freeze_bn", "false"),
    ("train.model.pool", "\"token\""),
    ("train.optimizer.timm_weight_decay", "false"),
    ("train.optimizer.layer_decay", "1.0"),
    ("train.optimizer.head_lr_multiplier", "1.0"),
    ("train.optimizer.decay_every", "0"),
    ("train.optimizer.decay_gamma", "0.1"),
    ("train.optimizer.warmup_steps", "0"),
    ("train.freeze_backbone_steps", "0"),
    ("plan.sampler", "\"pk\""),
    ("plan.batch_size", "0"),
];

/// The default of a [`HIDDEN_DEFAULTS`] setting as a TOML value.
pub(crate) fn hidden_default(path: &str) -> Value {
    let text = HIDDEN_DEFAULTS
        .iter()
        .find(|(p, _)| *p == path)
        .map_or("\"\"", |(_, v)| *v);
    parse_literal(text)
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
                let hint = match crate::suggest::nearest(part, names.iter().copied()) {
                    Some(n) => format!("; did you mean `{parent}{n}`?"),
                    None if names.is_empty() => String::new(),
                    None => format!("; known keys here: {}", names.join(", ")),
                };
                return Err(UnknownSetting {
                    path: format!("{parent}{part}"),
                    hint,
                }
                .into());
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
    let base_cfg = typed(&base)?;
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
        // Variant switches first, so a zipped `train.loss.margin` lands on the new loss.
        let (switches, rest): (Vec<_>, Vec<_>) =
            point.iter().partition(|(p, _)| tag_switch(p).is_some());
        for (path, value) in switches.into_iter().chain(rest) {
            apply_value(&mut v, path, value.clone())
                .with_context(|| format!("in [sweep]: `{path}`"))?;
        }
        for (path, value) in &point {
            let literal = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            shown.push((path.clone(), literal));
        }
        let config = typed(&v)?;
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

/// The typed, resolved configuration of a merged TOML tree, deserialised from the
/// tree itself; a bad value's error names its setting path.
fn typed(v: &Value) -> Result<ResolvedConfig> {
    let c: ExperimentConfig = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let message = e.inner().message().trim().to_string();
        // `train.loss.margin`, not `retrieve.ks[0]` (the file has the list, not the item).
        let shown = e.path().to_string();
        let mut path = Some(
            shown
                .split(['[', '?'])
                .next()
                .unwrap_or("")
                .trim_end_matches('.'),
        )
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string);
        // serde points an unknown field at its table: name the field itself.
        if let (Some(p), Some(field)) = (
            &mut path,
            message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next()),
        ) {
            if !p.ends_with(&format!(".{field}")) {
                p.push('.');
                p.push_str(field);
            }
        }
        // A miner, memory or multiplier given to a loss without one: which losses take it.
        let loss = v
            .get("train")
            .and_then(|t| t.get("loss"))
            .and_then(|l| l.get("name"))
            .and_then(Value::as_str);
        let field = path.as_deref().and_then(|p| p.strip_prefix("train.loss."));
        let message = match (loss, field) {
            (Some(loss), Some(field)) if message.starts_with("unknown field") => {
                dml_jobspec::train_config::misplaced_loss_setting(loss, field).unwrap_or(message)
            }
            _ => message,
        };
        TypeError { path, message }
    })?;
    Ok(c.resolve())
}

/// A setting no table has, with the nearest known one.
#[derive(Debug)]
struct UnknownSetting {
    path: String,
    hint: String,
}

impl std::fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown setting `{}`{}", self.path, self.hint)
    }
}

impl std::error::Error for UnknownSetting {}

impl UnknownSetting {
    /// With the line of the user's file (or the `--set`) that gives it.
    fn located(self, source: Option<&ConfigSource>, sets: &[String]) -> String {
        let msg = self.to_string();
        if let Some(set) = sets.iter().rev().find(|s| {
            s.split_once('=')
                .is_some_and(|(p, _)| p.trim() == self.path)
        }) {
            return format!("{msg} (from --set `{set}`)");
        }
        if let Some(at) = source.and_then(|src| src.at_line(&self.path, &msg)) {
            return at;
        }
        msg
    }
}

/// A value of the wrong type (or a variant's unknown field), with the setting it is at.
#[derive(Debug)]
struct TypeError {
    path: Option<String>,
    message: String,
}

impl std::fmt::Display for TypeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(
                f,
                "invalid setting `{p}`: {}",
                plain_message(p, &self.message)
            ),
            None => write!(f, "invalid configuration: {}", self.message),
        }
    }
}

impl std::error::Error for TypeError {}

/// serde's message without the Rust names: `expected struct PlanSettings` says that
/// `plan` is a table of settings, and which one to give instead.
fn plain_message(path: &str, message: &str) -> String {
    match message.split_once(", expected struct ") {
        Some((got, _)) => format!(
            "{got}, but `{path}` is a table of settings: give one of them, e.g. `--set {path}.<setting>=…` or a `[{path}]` table (`dml config --defaults` lists them)"
        ),
        None => message.to_string(),
    }
}

impl TypeError {
    /// Says where the bad value came from: a line of the config file, a `--set`,
    /// or a preset; and, for a variant's field, which fields that variant takes.
    fn located(self, source: Option<&ConfigSource>, sets: &[String]) -> String {
        let mut msg = self.to_string();
        if let Some(hint) = self.path.as_deref().and_then(variant_hint) {
            msg.push_str(&hint);
        }
        let Some(path) = self.path.as_deref() else {
            return msg;
        };
        let table = path.rsplit_once('.').map(|(t, _)| t).unwrap_or("");
        let from_set = sets.iter().rev().find(|s| {
            s.split_once('=').is_some_and(|(p, _)| {
                let p = p.trim();
                p == path || p == table || tag_switch(p).is_some_and(|t| t == table)
            })
        });
        if let Some(set) = from_set {
            return format!("{msg} (from --set `{set}`)");
        }
        if let Some(at) = source.and_then(|src| src.at_line(path, &msg)) {
            return at;
        }
        msg
    }
}

/// For a field of a tagged table, the fields its variant takes.
fn variant_hint(path: &str) -> Option<String> {
    let (table, _) = path.rsplit_once('.')?;
    TAGGED.contains(&table).then(|| {
        format!("; a `{table}` takes `name` and that variant's own parameters (see `dml presets --show` or the README)")
    })
}

/// The 1-based line of a user's file where `path` is set (`[a] b = …`, `a.b = …`).
fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let mut header = String::new();
    let mut table_line = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            header = h.trim().replace(['"', ' '], "");
            if header == path {
                table_line = Some(i + 1);
            }
            continue;
        }
        if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().replace(['"', ' '], "");
            let full = if header.is_empty() {
                k
            } else {
                format!("{header}.{k}")
            };
            if full == path {
                return Some(i + 1);
            }
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of loading the defaults with `sets`.
    fn load_error(sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", load(None, None, &sets).unwrap_err())
    }

    #[test]
    fn sweeps_of_the_wrong_shape_say_what_a_sweep_is() {
        assert!(
            load_error(&["sweep=3"])
                .contains("[sweep] must be a table of `\"stage.key\" = [values]`"),
            "{}",
            load_error(&["sweep=3"])
        );
        let e = load_error(&["sweep.plan.seed=3"]);
        assert!(
            e.contains(
                "[sweep] `plan.seed` must be a list of values, e.g. `\"plan.seed\" = [a, b]`"
            ),
            "{e}"
        );
        let e = load_error(&["sweep.plan.seed=[]"]);
        assert!(e.contains("[sweep] `plan.seed` has no values"), "{e}");
        let e = load_error(&["sweep.plan.sed=[1, 2]"]);
        assert!(e.contains("did you mean `plan.seed`?"), "{e}");
    }

    #[test]
    fn sweep_flags_name_what_is_missing() {
        assert_eq!(
            sweep_arg("plan.seed=0, 1").unwrap(),
            "sweep.plan.seed=[0, 1]"
        );
        assert_eq!(
            sweep_arg("plan.seed").unwrap_err().to_string(),
            "--sweep `plan.seed`: expected `stage.key=value1,value2`, e.g. --sweep train.loss.name=npairs,angular"
        );
        assert_eq!(
            sweep_arg("plan..seed=1").unwrap_err().to_string(),
            "--sweep `plan..seed=1`: `plan..seed` is not a setting path like `plan.seed`"
        );
        assert_eq!(
            sweep_arg("plan.seed=,").unwrap_err().to_string(),
            "--sweep `plan.seed=,` gives no values; e.g. --sweep plan.seed=a,b"
        );
    }

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
    fn messages_name_the_setting_and_where_it_was_set_without_rust_names() {
        // A table given a value: no `expected struct PlanSettings`.
        let err = load(None, None, &["plan=3".into()])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("struct"), "{err}");
        assert!(err.contains("`plan` is a table of settings"), "{err}");
        // An unknown key in a file: its file and line.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mine.toml");
        std::fs::write(&file, "name = \"x\"\n[plan]\nsteps = 3\nstepz = 4\n").unwrap();
        let err = format!("{:#}", load(Some(&file), None, &[]).unwrap_err());
        assert!(err.contains("mine.toml:4:"), "{err}");
        assert!(err.contains("did you mean `plan.steps`?"), "{err}");
        // A value refused when the DAG is built: the setting and where it came from.
        let loaded = load(Some(&file), None, &["plan.stepz=4".into()]);
        assert!(loaded.is_err());
        std::fs::write(
            &file,
            "name = \"x\"\n[train.optimizer]\nlearning_rate = -1.0\n",
        )
        .unwrap();
        let loaded = load(Some(&file), None, &[]).unwrap();
        let e = anyhow!(
            "invalid [train] settings: train.optimizer.learning_rate = -1 must be finite and > 0"
        );
        let located = loaded.locate_error(e).to_string();
        assert!(located.contains("set at "), "{located}");
        assert!(located.contains("mine.toml:3"), "{located}");
        let loaded = load(None, None, &["train.optimizer.learning_rate=-1".into()]).unwrap();
        let e = anyhow!("train.optimizer.learning_rate = -1 must be finite and > 0");
        let located = loaded.locate_error(e).to_string();
        assert!(
            located.contains("from --set `train.optimizer.learning_rate=-1`"),
            "{located}"
        );
        let e = anyhow!("plan.steps = 0: nothing to train");
        let located = loaded.locate_error(e).to_string();
        assert!(located.contains("from preset `synthetic`"), "{located}");
        // A preset family is listed, not guessed.
        let err = load(None, Some("cub"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("pick one") && err.contains("cub/margin"),
            "{err}"
        );
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
        // Each loss keeps its recommended normalisation, decided when resolved.
        assert_eq!(l.experiments[0].config.train.model.normalize, Some(false));
        assert_eq!(l.experiments[1].config.train.model.normalize, Some(false));
        let semi_hard = load(None, None, &[]).unwrap();
        assert_eq!(
            semi_hard.experiments[0].config.train.loss.name(),
            "semi_hard_triplet"
        );
        assert_eq!(
            semi_hard.experiments[0].config.train.model.normalize,
            Some(true)
        );
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

    #[test]
    fn switching_the_loss_starts_from_its_defaults() {
        use dml_jobspec::train_config::{Loss, Margin};
        // The default preset's semi-hard triplet has margin 0.2; npairs takes no margin.
        let l = load(
            None,
            None,
            &["train.loss.name=npairs".into(), "plan.k=2".into()],
        )
        .unwrap();
        assert_eq!(l.experiments[0].config.train.loss.name(), "npairs");
        // hard_triplet gets its own margin 1.0, not the preset's 0.2.
        let l = load(None, None, &["train.loss.name=hard_triplet".into()]).unwrap();
        assert_eq!(
            l.experiments[0].config.train.loss,
            Loss::HardTriplet {
                margin: Margin::Value(1.0)
            }
        );
        // A parameter given in the same command applies, whatever the order.
        let l = load(
            None,
            None,
            &[
                "train.loss.margin=0.5".into(),
                "train.loss.name=hard_triplet".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            l.experiments[0].config.train.loss,
            Loss::HardTriplet {
                margin: Margin::Value(0.5)
            }
        );
        // The shorthand, on the command line and as a sweep axis.
        let l = load(None, None, &["train.loss=contrastive".into()]).unwrap();
        assert_eq!(l.experiments[0].config.train.loss.name(), "contrastive");
        let l = load(
            None,
            None,
            &[r#"sweep.train.loss=["hard_triplet", "npairs"]"#.into()],
        )
        .unwrap();
        let names: Vec<&str> = l
            .experiments
            .iter()
            .map(|e| e.config.train.loss.name())
            .collect();
        assert_eq!(names, ["hard_triplet", "npairs"]);
        // The same name keeps the parameters already set.
        let l = load(
            None,
            None,
            &[
                "train.loss.margin=0.3".into(),
                "train.loss.name=semi_hard_triplet".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            l.experiments[0].config.train.loss,
            Loss::SemiHardTriplet {
                margin: Margin::Value(0.3)
            }
        );
    }

    #[test]
    fn a_file_switching_the_loss_replaces_the_presets_loss_table() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("exp.toml");
        std::fs::write(
            &f,
            "preset = \"synthetic\"\n[train]\nloss = \"lifted_structure\"\n",
        )
        .unwrap();
        let l = load(Some(&f), None, &[]).unwrap();
        assert_eq!(
            l.experiments[0].config.train.loss.name(),
            "lifted_structure"
        );
        std::fs::write(&f, "[train.loss]\nname = \"npairs\"\n").unwrap();
        let l = load(Some(&f), Some("synthetic"), &[]).unwrap();
        assert_eq!(l.experiments[0].config.train.loss.name(), "npairs");
    }

    #[test]
    fn set_values_take_the_settings_type() {
        // Settings that are unset by default take their own type too.
        let l = load(
            None,
            None,
            &[
                "train.model.normalize=false".into(),
                "train.optimizer.beta_learning_rate=0.001".into(),
            ],
        )
        .unwrap();
        let c = &l.experiments[0].config;
        assert_eq!(c.train.model.normalize, Some(false));
        assert_eq!(c.train.optimizer.beta_learning_rate, Some(0.001));
        let l = load(None, None, &["name=2024".into(), "retrieve.ks=1,5".into()]).unwrap();
        assert_eq!(l.experiments[0].config.name, "2024");
        assert_eq!(l.experiments[0].config.retrieve.ks, [1, 5]);
        let l = load(None, None, &["retrieve.ks=[2, 4]".into()]).unwrap();
        assert_eq!(l.experiments[0].config.retrieve.ks, [2, 4]);
    }

    #[test]
    fn a_wrong_type_in_a_file_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("exp.toml");
        std::fs::write(&f, "name = \"x\"\n\n[plan]\nseed = 1\np = \"many\"\n").unwrap();
        let err = format!("{:#}", load(Some(&f), None, &[]).unwrap_err());
        assert!(err.contains("exp.toml:5:"), "{err}");
        assert!(err.contains("`plan.p`"), "{err}");
        assert!(err.contains("p = \"many\""), "{err}");
        // A variant's unknown field names the setting, not "an empty location".
        std::fs::write(&f, "[train.loss]\nname = \"npairs\"\nmargin = 0.2\n").unwrap();
        let err = format!("{:#}", load(Some(&f), None, &[]).unwrap_err());
        assert!(err.contains("train.loss.margin"), "{err}");
        assert!(err.contains("exp.toml:3:"), "{err}");
        let err = format!(
            "{:#}",
            load(None, None, &["plan.p=\"many\"".into()]).unwrap_err()
        );
        assert!(err.contains("from --set `plan.p=\"many\"`"), "{err}");
    }

    #[test]
    fn the_executor_table_is_typed_and_checked() {
        let l = load(
            None,
            None,
            &[
                r#"executor.kind="slurm""#.into(),
                "executor.gpus_per_job=2".into(),
                r#"executor.extra_args=["--account=lab"]"#.into(),
            ],
        )
        .unwrap();
        let e = &l.experiments[0].config.executor;
        assert_eq!(e.kind, dml_stages::config::ExecutorKind::Slurm);
        assert_eq!(e.gpus_per_job, 2);
        assert_eq!(e.extra_args, ["--account=lab"]);
        let err = load(None, None, &["executor.partiton=gpu".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `executor.partition`?"), "{err}");
        let err = load_error(&[r#"executor.kind="pbs""#]);
        assert!(err.contains("local") && err.contains("slurm"), "{err}");
    }
}
