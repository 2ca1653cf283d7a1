//! The `synth` stage: the built-in generated dataset, written into the store.
use crate::config::SyntheticSettings;
use dml_datasets as ds;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;

/// Generates the synthetic set into the store.
pub struct SynthStage {
    settings: SyntheticSettings,
}

impl SynthStage {
    /// A synth stage.
    pub fn new(settings: SyntheticSettings) -> Self {
        SynthStage { settings }
    }
}

impl Stage for SynthStage {
    fn name(&self) -> &'static str {
        "synth"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        json!({ "synthetic": self.settings })
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        ds::generate(&self.settings, &ctx.out_dir().join("images"))?;
        Ok(())
    }
}
