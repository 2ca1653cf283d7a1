//! Using a trained network outside the pipeline: the jobs that `dml embed`, `dml search` and
//! `dml export` hand to the training worker (`dml-torch`, see [`crate::protocol`]), and the
//! table `dml embed` writes.
//!
//! `dml embed` embeds any image files with exactly the embed stage's preprocessing (decode,
//! resize to `image.resize`² with Pillow-compatible bilinear filtering, centre crop to
//! `image.crop`², the backbone's input scaling, f32) and the embed stage's batches (the
//! images that decode, `embed.batch_size` at a time, in order), so the embeddings of a
//! dataset's test images, given in the index's order (the same batches), equal the embed
//! stage's own output bit for bit on the CPU.
use crate::device::DeviceKind;
use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use dml_artifacts::{tables, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Column names of the table `dml embed` writes.
pub mod columns {
    /// The image's path, as given.
    pub const PATH: &str = "path";
    /// The class folder's name (null where the image is not in a class folder).
    pub const CLASS: &str = "class";
    /// The embedding (fixed-size list of f32).
    pub const EMBEDDING: &str = "embedding";
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UseError {
    /// An output file name whose format is not known.
    #[error("{path}: write embeddings to a `.parquet` or `.arrow` file (Arrow IPC; `.ipc` and `.feather` also work)")]
    OutputFormat {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing a table.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The columns do not fit together.
    #[error("{0}")]
    Shape(String),
}

/// The format of an embeddings file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// Parquet (snappy).
    Parquet,
    /// An Arrow IPC file.
    Arrow,
}

impl TableFormat {
    /// `.parquet` → Parquet; `.arrow`, `.ipc`, `.feather` → Arrow IPC; anything else is an
    /// error naming the file.
    pub fn of(path: &Path) -> Result<TableFormat, UseError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("parquet") | Some("pq") => Ok(TableFormat::Parquet),
            Some("arrow") | Some("ipc") | Some("feather") => Ok(TableFormat::Arrow),
            _ => Err(UseError::OutputFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// What the worker needs to embed image files (`dml embed`, the queries of `dml search`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedFilesJob {
    /// `image.resize` of the run (the decode stage's square size).
    pub resize: u32,
    /// `image.crop` of the run.
    pub crop: u32,
    /// `embed.batch_size` of the run.
    pub batch_size: u32,
    /// The embed stage's device kind.
    pub device: DeviceKind,
    /// `train.device` as written (`auto`, `cuda:1`…).
    pub device_spec: String,
    /// The files to read.
    pub images: Vec<PathBuf>,
    /// Each image's path as the table shows it.
    pub paths: Vec<String>,
    /// Each image's class folder name, if any.
    pub classes: Vec<Option<String>>,
    /// The table to write ([`TableFormat::of`] its name).
    pub out: PathBuf,
}

/// What the worker writes for `dml export` (into the request's `out_dir`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportJob {
    /// `image.crop`: the traced input's height and width.
    pub crop: u32,
    /// Write `model.pt` (TorchScript, traced).
    pub torchscript: bool,
    /// Write `model.safetensors` (backbone and head weights under torchvision names).
    pub safetensors: bool,
}

/// The notes the worker sends back after an [`EmbedFilesJob`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmbedFilesNotes {
    /// Rows written.
    pub rows: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Images that could not be read or decoded: (path as shown, why).
    pub failed: Vec<(String, String)>,
    /// Seconds spent from the first image read to the table written.
    pub seconds: f64,
}

/// The table of `dml embed`: `path`, `class` (nullable), `embedding` (fixed-size list of f32).
pub fn embedded_to_batch(
    paths: &[String],
    classes: &[Option<String>],
    dim: usize,
    values: Vec<f32>,
) -> Result<RecordBatch, UseError> {
    if paths.len() != classes.len() || values.len() != paths.len() * dim {
        return Err(UseError::Shape(format!(
            "{} paths, {} classes and {} values of dimension {dim} do not fit together",
            paths.len(),
            classes.len(),
            values.len()
        )));
    }
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = FixedSizeListArray::new(
        item.clone(),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new(columns::PATH, DataType::Utf8, false),
        Field::new(columns::CLASS, DataType::Utf8, true),
        Field::new(
            columns::EMBEDDING,
            DataType::FixedSizeList(item, dim as i32),
            false,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(paths.iter())),
        Arc::new(StringArray::from_iter(classes.iter().map(Option::as_deref))),
        Arc::new(list),
    ];
    RecordBatch::try_new(schema, cols).map_err(|e| UseError::Shape(e.to_string()))
}

/// Writes `batch` to `path` as Parquet or Arrow IPC, by its extension.
pub fn write_table(path: &Path, batch: &RecordBatch) -> Result<(), UseError> {
    match TableFormat::of(path)? {
        TableFormat::Parquet => tables::write_parquet(path, batch)?,
        TableFormat::Arrow => tables::write_ipc(path, batch)?,
    }
    Ok(())
}

/// A gallery read from an embeddings file: the vectors and what names each row.
#[derive(Debug, Clone)]
pub struct Gallery {
    /// Embedding dimension.
    pub dim: usize,
    /// Row-major values.
    pub values: Vec<f32>,
    /// Each row's path, where the file has a `path` column.
    pub paths: Option<Vec<String>>,
    /// Each row's class name: a `class`, `class_name` or `class_id` column.
    pub classes: Option<Vec<Option<String>>>,
    /// Each row's image id: an `image_id` column, else the row number.
    pub image_ids: Vec<u32>,
}

impl Gallery {
    /// Reads any embeddings file `dml eval` reads (Parquet or Arrow IPC, a list or
    /// fixed-size-list float column named `embedding_column`).
    pub fn read(path: &Path, embedding_column: &str) -> Result<Gallery, UseError> {
        let batch = tables::read_table(path)?;
        let (dim, values) = tables::column_as_matrix(
            tables::column(&batch, embedding_column, path)?,
            embedding_column,
            path,
        )?;
        let rows = values.len() / dim.max(1);
        let strings = |name: &str| -> Result<Option<Vec<Option<String>>>, UseError> {
            let Some(col) = batch.column_by_name(name) else {
                return Ok(None);
            };
            if let Ok(v) = tables::column_as_strings(col, name, path) {
                if col.null_count() == 0 {
                    return Ok(Some(v.into_iter().map(Some).collect()));
                }
            }
            let col = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| {
                UseError::Shape(format!(
                    "{}: column `{name}` cannot be read as text: {e}",
                    path.display()
                ))
            })?;
            let s = col
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8 gives strings");
            Ok(Some(s.iter().map(|v| v.map(str::to_string)).collect()))
        };
        let paths = strings(columns::PATH)?.map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, p)| p.unwrap_or_else(|| format!("row {i}")))
                .collect()
        });
        let classes = match strings(columns::CLASS)? {
            Some(c) => Some(c),
            None => match strings("class_name")? {
                Some(c) => Some(c),
                None => strings("class_id")?,
            },
        };
        let image_ids = match batch.column_by_name("image_id") {
            Some(c) => tables::column_as_labels(c, "image_id", path)?,
            None => (0..rows as u32).collect(),
        };
        Ok(Gallery {
            dim,
            values,
            paths,
            classes,
            image_ids,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.image_ids.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.image_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(
            TableFormat::of(Path::new("a/b.parquet")).unwrap(),
            TableFormat::Parquet
        );
        assert_eq!(
            TableFormat::of(Path::new("b.ARROW")).unwrap(),
            TableFormat::Arrow
        );
        let err = TableFormat::of(Path::new("emb.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("emb.csv") && err.contains(".parquet"), "{err}");
    }

    #[test]
    fn the_table_round_trips_as_a_gallery() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec!["a/x.jpg".to_string(), "y.png".to_string()];
        let classes = vec![Some("a".to_string()), None];
        let values = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        for name in ["e.parquet", "e.arrow"] {
            let path = dir.path().join(name);
            let batch = embedded_to_batch(&paths, &classes, 3, values.clone()).unwrap();
            write_table(&path, &batch).unwrap();
            let g = Gallery::read(&path, columns::EMBEDDING).unwrap();
            assert_eq!(g.dim, 3);
            assert_eq!(g.values, values);
            assert_eq!(g.paths.as_deref(), Some(&paths[..]));
            assert_eq!(g.classes.as_deref(), Some(&classes[..]));
            assert_eq!(g.image_ids, [0, 1]);
        }
        assert!(embedded_to_batch(&paths, &classes, 4, values).is_err());
    }
}
