//! The names stages give their inputs (`ctx.input(roles::INDEX)`), in one place.

/// The synthetic dataset's images.
pub const SYNTH: &str = "synth";
/// `index.parquet`.
pub const INDEX: &str = "index";
/// `plan.parquet`.
pub const PLAN: &str = "plan";
/// The decode cache.
pub const DECODE: &str = "decode";
/// The trained network.
pub const TRAIN: &str = "train";
/// `embeddings.arrow`.
pub const EMBED: &str = "embed";
