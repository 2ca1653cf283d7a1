//! What the tables of the training settings share: the error of their checks, and serde's
//! defaults and skips.

/// A setting that cannot work, found before anything is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Results of the checks here.
pub type Result<T> = std::result::Result<T, ConfigError>;

// Serde defaults and skips.
pub(super) fn is_one(x: &f64) -> bool {
    *x == 1.0
}

pub(super) fn one() -> f64 {
    1.0
}

pub(super) fn is_zero_u64(x: &u64) -> bool {
    *x == 0
}

pub(super) fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn is_0_1(x: &f64) -> bool {
    *x == 0.1
}

pub(super) fn epsilon_0_1() -> f64 {
    0.1
}
