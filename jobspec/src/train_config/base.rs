//! What the tables of the training settings share: the error of their checks, and serde's
//! defaults and skips.

/// A setting that cannot work, found before anything is built: which setting, and the
/// whole message (the setting, its value, why it cannot work and what to set instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The setting at fault as a config file spells it (`train.optimizer.learning_rate`);
    /// `train.loss` for a parameter of the loss.
    pub setting: String,
    /// What the user reads.
    pub message: String,
}

impl ConfigError {
    /// The error of `setting`, told by `message`.
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// Results of the checks here.
pub type Result<T> = std::result::Result<T, ConfigError>;

// Serde defaults and skips.
pub(super) fn is_one(x: &f64) -> bool {
    *x == 1.0
}

pub(super) fn one() -> f64 {
    1.0
}

pub(crate) fn is_zero_u64(x: &u64) -> bool {
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
