//! Built-in presets: the synthetic default and the seed's tables.
//!
//! Each preset is a TOML document, exactly what a user would write in a config
//! file, so `dml presets --show NAME` prints a starting point.

/// One preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// `dataset/loss` style name.
    pub name: &'static str,
    /// One line for `dml presets`.
    pub description: &'static str,
    /// The TOML.
    pub toml: &'static str,
}

/// What `dml run` uses with no config at all.
pub const DEFAULT: &str = "synthetic";

const SYNTHETIC: &str = r#"
name = "synthetic"
[dataset]
kind = "synthetic"
[image]
resize = 64
crop = 56
[plan]
p = 16
k = 4
steps = 400
[train]
device = "auto"
checkpoint_every = 100
[train.model]
backbone = "small_cnn"
head = "direct"
[train.loss]
name = "semi_hard_triplet"
margin = 0.2
[train.optimizer]
learning_rate = 0.001
[train.optimizer.algorithm]
name = "adam"
"#;

/// Every preset.
pub fn all() -> &'static [Preset] {
    &[Preset {
        name: "synthetic",
        description:
            "the built-in synthetic set, small CNN, semi-hard triplet, on the CPU in a few minutes",
        toml: SYNTHETIC,
    }]
}

/// A preset by name.
pub fn find(name: &str) -> Option<&'static str> {
    all().iter().find(|p| p.name == name).map(|p| p.toml)
}
