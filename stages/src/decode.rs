//! The `decode` stage: every indexed image resized once into a memory-mapped
//! cache (`images.u8` + its header) that train and embed read.
use crate::config::ImageSettings;
use crate::error::StageError;
use dml_artifacts::tables;
use dml_datasets as ds;
use dml_jobspec::roles;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The dataset root a stage reads images from: the synth artifact, or `dataset.root`.
#[derive(Debug, Clone)]
pub enum ImageRoot {
    /// `images/` of the synth input.
    Synth,
    /// An external directory (not part of the key: the index's fingerprint is).
    Dir(PathBuf),
}

impl ImageRoot {
    fn resolve(&self, ctx: &RunContext<'_>) -> Result<PathBuf, BoxError> {
        Ok(match self {
            ImageRoot::Synth => ctx.input(roles::SYNTH)?.join("images"),
            ImageRoot::Dir(p) => p.clone(),
        })
    }
}

/// Resizes every indexed image once into `images.u8` (+ its header).
pub struct DecodeStage {
    resize: u32,
    skip_bad: bool,
    root: ImageRoot,
}

impl DecodeStage {
    /// A decode stage.
    pub fn new(image: &ImageSettings, skip_bad: bool, root: ImageRoot) -> Arc<Self> {
        Arc::new(DecodeStage {
            resize: image.resize,
            skip_bad,
            root,
        })
    }
}

impl Stage for DecodeStage {
    fn name(&self) -> &'static str {
        "decode"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        #[derive(serde::Serialize)]
        struct Resize {
            resize: u32,
        }
        #[derive(serde::Serialize)]
        struct SkipBad {
            skip_bad_images: bool,
        }
        #[derive(serde::Serialize)]
        struct DecodeKey {
            image: Resize,
            index: SkipBad,
        }
        serde_json::to_value(DecodeKey {
            image: Resize {
                resize: self.resize,
            },
            index: SkipBad {
                skip_bad_images: self.skip_bad,
            },
        })
        .expect("the decode key serialises")
    }
    fn identity(&self) -> String {
        format!("{:?}", self.root)
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let root = self.root.resolve(ctx)?;
        let index = tables::read_index(&ctx.input(roles::INDEX)?.join("index.parquet"))?;
        let paths: Vec<String> = index.iter().map(|r| r.path.clone()).collect();
        let bar = ctx.progress(1, "{prefix:>10} decoding {msg}");
        bar.set_message(format!("{} images at {}²", paths.len(), self.resize));
        let started = Instant::now();
        let report =
            ds::DecodeCache::build(&root, &paths, self.resize, ctx.out_dir(), self.skip_bad)
                .map_err(|e| {
                    if !self.skip_bad && e.is_bad_image() {
                        StageError::Input(format!(
                    "{e}; fix or remove the image, or pass --skip-bad-images to go on without it"
                ))
                    } else {
                        StageError::Dataset(e)
                    }
                })?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            "decoded {} images in {secs:.1}s ({:.0} img/s)",
            paths.len(),
            paths.len() as f64 / secs
        );
        ctx.note("images", json!(paths.len()));
        ctx.note(
            "images_per_second",
            json!(paths.len() as f64 / secs.max(1e-9)),
        );
        ctx.note("skipped_images", json!(report.skipped));
        Ok(())
    }
}
