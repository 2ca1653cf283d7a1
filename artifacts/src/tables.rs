//! The artifacts' tables (index, plan, training log, embeddings) and Arrow IPC / Parquet I/O.
//!
//! Every table is a plain Arrow schema so pandas, polars, pyarrow and DuckDB open
//! it as is: Parquet for the index and plan, an Arrow IPC *file* for embeddings.
use crate::StoreError;
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
    UInt16Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
pub use dml_datasets::Split;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

fn table_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes a batch as a Parquet file (snappy).
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), StoreError> {
    let file = File::create(path).map_err(StoreError::io("create", path))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props))
        .map_err(|e| table_err(path, e))?;
    writer.write(batch).map_err(|e| table_err(path, e))?;
    writer.close().map_err(|e| table_err(path, e))?;
    Ok(())
}

/// Writes a batch as an Arrow IPC file.
pub fn write_ipc(path: &Path, batch: &RecordBatch) -> Result<(), StoreError> {
    let file = File::create(path).map_err(StoreError::io("create", path))?;
    let mut writer = arrow::ipc::writer::FileWriter::try_new(file, &batch.schema())
        .map_err(|e| table_err(path, e))?;
    writer.write(batch).map_err(|e| table_err(path, e))?;
    writer.finish().map_err(|e| table_err(path, e))?;
    Ok(())
}

/// Reads a Parquet or Arrow IPC file (told apart by their magic bytes) into one batch.
pub fn read_table(path: &Path) -> Result<RecordBatch, StoreError> {
    use std::io::Read;
    let mut magic = [0u8; 6];
    let mut file = File::open(path).map_err(StoreError::io("open", path))?;
    let n = file
        .read(&mut magic)
        .map_err(StoreError::io("read", path))?;
    if n == 0 {
        return Err(table_err(path, "the file is empty"));
    }
    let file = File::open(path).map_err(StoreError::io("open", path))?;
    let batches: Vec<RecordBatch> = if magic.starts_with(b"PAR1") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(1 << 16).build())
            .map_err(|e| table_err(path, e))?;
        reader
            .collect::<Result<_, _>>()
            .map_err(|e| table_err(path, e))?
    } else if magic == *b"ARROW1" {
        let reader =
            arrow::ipc::reader::FileReader::try_new(file, None).map_err(|e| table_err(path, e))?;
        reader
            .collect::<Result<_, _>>()
            .map_err(|e| table_err(path, e))?
    } else {
        let reader = arrow::ipc::reader::StreamReader::try_new(file, None).map_err(|_| {
            table_err(
                path,
                "not a Parquet or Arrow IPC file (expected PAR1 or ARROW1 magic bytes)",
            )
        })?;
        reader
            .collect::<Result<_, _>>()
            .map_err(|e| table_err(path, e))?
    };
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return Err(table_err(path, "the file holds no rows")),
    };
    if batches.len() == 1 {
        return Ok(batches.into_iter().next().expect("one batch"));
    }
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| table_err(path, e))
}

/// Finds a column by name, or an error listing the columns the file has.
pub fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a ArrayRef, StoreError> {
    batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        table_err(
            path,
            format!("no column `{name}`; the file has: {}", have.join(", ")),
        )
    })
}

/// A list / fixed-size-list column of floats as a dense row-major matrix `(rows, dim, values)`.
/// Unequal lengths, nulls, NaN and infinities are errors naming the first bad row.
pub fn column_as_matrix(
    array: &ArrayRef,
    name: &str,
    path: &Path,
) -> Result<(usize, Vec<f32>), StoreError> {
    let rows = array.len();
    let non_finite = |bad: usize, first: usize| {
        table_err(
            path,
            format!(
                "column `{name}` has NaN or infinite values in {bad} rows (first: row {first})"
            ),
        )
    };
    // The common case (what `dml` and pyarrow write): a fixed-size list of
    // float32 without nulls is one contiguous buffer, copied at once.
    if let DataType::FixedSizeList(_, d) = array.data_type() {
        let list = array.as_fixed_size_list();
        let d = usize::try_from(*d).unwrap_or(0);
        if rows > 0 && d > 0 && list.null_count() == 0 && list.value_type() == DataType::Float32 {
            let start = list.value_offset_at(0);
            let values = list.values().as_primitive::<Float32Type>().values()
                [start..start + rows * d]
                .to_vec();
            let mut bad = values
                .chunks(d)
                .enumerate()
                .filter(|(_, x)| !x.iter().all(|v| v.is_finite()))
                .map(|(i, _)| i);
            if let Some(first) = bad.next() {
                return Err(non_finite(1 + bad.count(), first));
            }
            return Ok((d, values));
        }
    }
    let mut dim: Option<usize> = None;
    let mut values = Vec::new();
    let mut bad = 0usize;
    let mut first_bad = None;
    for i in 0..rows {
        if array.is_null(i) {
            return Err(table_err(path, format!("column `{name}` row {i} is null")));
        }
        let row: ArrayRef = match array.data_type() {
            DataType::FixedSizeList(_, _) => array.as_fixed_size_list().value(i),
            DataType::List(_) => array.as_list::<i32>().value(i),
            DataType::LargeList(_) => array.as_list::<i64>().value(i),
            other => {
                return Err(table_err(
                    path,
                    format!("column `{name}` is {other}, expected a list of float32/float64"),
                ))
            }
        };
        let len = row.len();
        match dim {
            None => dim = Some(len),
            Some(d) if d != len => {
                return Err(table_err(
                    path,
                    format!("column `{name}`: row {i} has {len} values, row 0 has {d}; embeddings must have equal length"),
                ))
            }
            _ => {}
        }
        let before = values.len();
        match row.data_type() {
            DataType::Float32 => {
                values.extend(row.as_primitive::<Float32Type>().values().iter().copied())
            }
            DataType::Float64 => values.extend(
                row.as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as f32),
            ),
            other => {
                return Err(table_err(
                    path,
                    format!("column `{name}` holds {other} values, expected float32 or float64"),
                ))
            }
        }
        if values[before..].iter().any(|v| !v.is_finite()) {
            bad += 1;
            first_bad.get_or_insert(i);
        }
    }
    if let Some(first) = first_bad {
        return Err(non_finite(bad, first));
    }
    if rows == 0 {
        return Err(table_err(path, "the file holds no rows"));
    }
    Ok((dim.unwrap_or(0), values))
}

/// An integer or string label column as dense u32 labels (strings are numbered in
/// order of first appearance; integers are kept when they fit in u32).
pub fn column_as_labels(array: &ArrayRef, name: &str, path: &Path) -> Result<Vec<u32>, StoreError> {
    use arrow::datatypes::*;
    if array.null_count() > 0 {
        return Err(table_err(
            path,
            format!("label column `{name}` has {} nulls", array.null_count()),
        ));
    }
    macro_rules! ints {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .values()
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    u32::try_from(v as i128).map_err(|_| {
                        table_err(
                            path,
                            format!("label column `{name}` row {i}: {v} does not fit in u32"),
                        )
                    })
                })
                .collect()
        };
    }
    match array.data_type() {
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        // Categorical columns (pandas `category`, polars `Categorical`/`Enum`) and
        // dictionary-encoded Parquet strings: labels are the decoded values.
        DataType::Dictionary(_, value) => {
            let decoded = arrow::compute::cast(array, value)
                .map_err(|e| table_err(path, format!("label column `{name}` (dictionary): {e}")))?;
            column_as_labels(&decoded, name, path)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings =
                arrow::compute::cast(array, &DataType::Utf8).map_err(|e| table_err(path, e))?;
            let strings = strings.as_string::<i32>();
            let mut ids = std::collections::HashMap::new();
            Ok((0..strings.len())
                .map(|i| {
                    let next = ids.len() as u32;
                    *ids.entry(strings.value(i).to_string()).or_insert(next)
                })
                .collect())
        }
        other => Err(table_err(
            path,
            format!("label column `{name}` is {other}; expected an integer or string column"),
        )),
    }
}

/// A string column as owned strings.
pub fn column_as_strings(
    array: &ArrayRef,
    name: &str,
    path: &Path,
) -> Result<Vec<String>, StoreError> {
    // `cast` decodes dictionaries and reads large and view strings alike.
    let strings = arrow::compute::cast(array, &DataType::Utf8)
        .map_err(|e| table_err(path, format!("column `{name}`: {e}")))?;
    let strings = strings.as_string::<i32>();
    if strings.null_count() > 0 {
        return Err(table_err(
            path,
            format!("column `{name}` has {} nulls", strings.null_count()),
        ));
    }
    Ok((0..strings.len())
        .map(|i| strings.value(i).to_string())
        .collect())
}

/// A string column of split names (`train`, `test`, `query`, `gallery`, `holdout`) as
/// [`Split`]s; another value is an error naming the file, the row and the value.
pub fn column_as_splits(
    array: &ArrayRef,
    name: &str,
    path: &Path,
) -> Result<Vec<Split>, StoreError> {
    column_as_strings(array, name, path)?
        .iter()
        .enumerate()
        .map(|(row, v)| {
            Split::parse(v).ok_or_else(|| {
                let known: Vec<&str> = Split::ALL.iter().map(|s| s.as_str()).collect();
                table_err(
                    path,
                    format!(
                        "column `{name}`, row {row}: unknown split `{v}` (expected one of {})",
                        known.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// One row of `index.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    /// Dense id, 0-based, in listing order.
    pub image_id: u32,
    /// Path relative to the dataset root.
    pub path: String,
    /// Class id.
    pub class_id: u32,
    /// Class name.
    pub class_name: String,
    /// train / test / query / gallery (a UTF-8 column on disk).
    pub split: Split,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// File size.
    pub bytes: u64,
    /// blake3 of the file, hex.
    pub blake3: String,
    /// The dataset's own id of the image (CUB's 1-based ids, SOP's `image_id`),
    /// where its list files have one.
    pub dataset_image_id: Option<u32>,
}

/// The index table.
pub fn index_to_batch(rows: &[IndexRow]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("class_id", DataType::UInt32, false),
        Field::new("class_name", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("blake3", DataType::Utf8, false),
        Field::new("dataset_image_id", DataType::UInt32, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.image_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.path.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.class_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.class_name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.split.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.width))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.height))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.blake3.as_str()),
        )),
        Arc::new(UInt32Array::from_iter(
            rows.iter().map(|r| r.dataset_image_id),
        )),
    ];
    RecordBatch::try_new(schema, cols).expect("index columns match their schema")
}

/// Reads `index.parquet`.
pub fn read_index(path: &Path) -> Result<Vec<IndexRow>, StoreError> {
    let b = read_table(path)?;
    let u32s = |n: &str| -> Result<Vec<u32>, StoreError> {
        column_as_labels(column(&b, n, path)?, n, path)
    };
    let strs = |n: &str| -> Result<Vec<String>, StoreError> {
        column_as_strings(column(&b, n, path)?, n, path)
    };
    let (ids, paths, classes, names, splits, ws, hs, hashes) = (
        u32s("image_id")?,
        strs("path")?,
        u32s("class_id")?,
        strs("class_name")?,
        column_as_splits(column(&b, "split", path)?, "split", path)?,
        u32s("width")?,
        u32s("height")?,
        strs("blake3")?,
    );
    let bytes = column(&b, "bytes", path)?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| table_err(path, "column `bytes` is not uint64"))?;
    // Absent from indexes written before the column existed.
    let dataset_ids = b
        .column_by_name("dataset_image_id")
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
    Ok((0..b.num_rows())
        .map(|i| IndexRow {
            image_id: ids[i],
            path: paths[i].clone(),
            class_id: classes[i],
            class_name: names[i].clone(),
            split: splits[i],
            width: ws[i],
            height: hs[i],
            bytes: bytes.value(i),
            blake3: hashes[i].clone(),
            dataset_image_id: dataset_ids.and_then(|c| (!c.is_null(i)).then(|| c.value(i))),
        })
        .collect())
}

/// One row of `plan.parquet`: image `image_id` fills slot `slot` of step `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRow {
    /// Training step.
    pub step: u32,
    /// Position in the batch.
    pub slot: u16,
    /// Image.
    pub image_id: u32,
    /// Its class.
    pub class_id: u32,
}

/// The plan table.
pub fn plan_to_batch(rows: &[PlanRow]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt32, false),
        Field::new("slot", DataType::UInt16, false),
        Field::new("image_id", DataType::UInt32, false),
        Field::new("class_id", DataType::UInt32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.step))),
        Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.slot))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.image_id),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.class_id),
        )),
    ];
    RecordBatch::try_new(schema, cols).expect("plan columns match their schema")
}

/// Reads `plan.parquet`.
pub fn read_plan(path: &Path) -> Result<Vec<PlanRow>, StoreError> {
    let b = read_table(path)?;
    let u32s = |n: &str| -> Result<Vec<u32>, StoreError> {
        column_as_labels(column(&b, n, path)?, n, path)
    };
    let (steps, slots, ids, classes) = (
        u32s("step")?,
        u32s("slot")?,
        u32s("image_id")?,
        u32s("class_id")?,
    );
    Ok((0..b.num_rows())
        .map(|i| PlanRow {
            step: steps[i],
            slot: slots[i] as u16,
            image_id: ids[i],
            class_id: classes[i],
        })
        .collect())
}

/// The embeddings table: one row per embedded image.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Image ids.
    pub image_id: Vec<u32>,
    /// Class ids.
    pub class_id: Vec<u32>,
    /// Splits (a UTF-8 column on disk; `holdout` in the validation embeddings).
    pub split: Vec<Split>,
    /// Embedding dimension.
    pub dim: usize,
    /// Row-major `len × dim` values.
    pub values: Vec<f32>,
}

impl Embeddings {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.image_id.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.image_id.is_empty()
    }

    /// As an Arrow batch with `embedding: FixedSizeList<f32, dim>`.
    pub fn to_batch(&self) -> RecordBatch {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let list = FixedSizeListArray::new(
            item.clone(),
            self.dim as i32,
            Arc::new(Float32Array::from(self.values.clone())),
            None,
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("image_id", DataType::UInt32, false),
            Field::new("class_id", DataType::UInt32, false),
            Field::new("split", DataType::Utf8, false),
            Field::new(
                "embedding",
                DataType::FixedSizeList(item, self.dim as i32),
                false,
            ),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(self.image_id.clone())),
            Arc::new(UInt32Array::from(self.class_id.clone())),
            Arc::new(StringArray::from_iter_values(
                self.split.iter().map(|s| s.as_str()),
            )),
            Arc::new(list),
        ];
        RecordBatch::try_new(schema, cols).expect("embedding columns match their schema")
    }

    /// Reads an embeddings file written by [`Embeddings::to_batch`] + [`write_ipc`].
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let b = read_table(path)?;
        let (dim, values) = column_as_matrix(column(&b, "embedding", path)?, "embedding", path)?;
        Ok(Embeddings {
            image_id: column_as_labels(column(&b, "image_id", path)?, "image_id", path)?,
            class_id: column_as_labels(column(&b, "class_id", path)?, "class_id", path)?,
            split: column_as_splits(column(&b, "split", path)?, "split", path)?,
            dim,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_parquet_and_ipc() {
        let tmp = tempfile::tempdir().unwrap();
        let rows = vec![IndexRow {
            image_id: 0,
            path: "a/b.jpg".into(),
            class_id: 3,
            class_name: "a".into(),
            split: Split::Train,
            width: 10,
            height: 20,
            bytes: 30,
            blake3: "ff".into(),
            dataset_image_id: Some(1),
        }];
        let p = tmp.path().join("index.parquet");
        write_parquet(&p, &index_to_batch(&rows)).unwrap();
        assert_eq!(read_index(&p).unwrap(), rows);

        let plan = vec![PlanRow {
            step: 1,
            slot: 2,
            image_id: 3,
            class_id: 4,
        }];
        let p = tmp.path().join("plan.parquet");
        write_parquet(&p, &plan_to_batch(&plan)).unwrap();
        assert_eq!(read_plan(&p).unwrap(), plan);

        let e = Embeddings {
            image_id: vec![1, 2],
            class_id: vec![5, 5],
            split: vec![Split::Test, Split::Test],
            dim: 3,
            values: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.5],
        };
        let p = tmp.path().join("embeddings.arrow");
        write_ipc(&p, &e.to_batch()).unwrap();
        assert_eq!(Embeddings::read(&p).unwrap(), e);
        // And the same table through Parquet reads back identically.
        let p2 = tmp.path().join("embeddings.parquet");
        write_parquet(&p2, &e.to_batch()).unwrap();
        assert_eq!(Embeddings::read(&p2).unwrap(), e);
    }

    /// A split column holding a name that is not a split is an error naming the file,
    /// the row and the value, for the index and the embeddings alike.
    #[test]
    fn unknown_splits_are_errors_naming_file_and_value() {
        let tmp = tempfile::tempdir().unwrap();
        let e = Embeddings {
            image_id: vec![1, 2],
            class_id: vec![5, 5],
            split: vec![Split::Query, Split::Holdout],
            dim: 1,
            values: vec![0.0, 1.0],
        };
        let batch = e.to_batch();
        let with_split = |values: &[&str]| {
            let mut cols = batch.columns().to_vec();
            cols[2] = Arc::new(StringArray::from_iter_values(values.iter().copied()));
            RecordBatch::try_new(batch.schema(), cols).unwrap()
        };
        // On disk, the same strings as before the column was typed.
        let p = tmp.path().join("emb.arrow");
        write_ipc(&p, &with_split(&["query", "holdout"])).unwrap();
        assert_eq!(Embeddings::read(&p).unwrap(), e);
        write_ipc(&p, &with_split(&["query", "val"])).unwrap();
        let err = Embeddings::read(&p).unwrap_err().to_string();
        assert!(
            err.contains("emb.arrow")
                && err.contains("row 1: unknown split `val`")
                && err.contains("train, test, query, gallery, holdout"),
            "{err}"
        );

        let row = |split| IndexRow {
            image_id: 0,
            path: "a.jpg".into(),
            class_id: 0,
            class_name: "a".into(),
            split,
            width: 1,
            height: 1,
            bytes: 1,
            blake3: "ff".into(),
            dataset_image_id: None,
        };
        let batch = index_to_batch(&[row(Split::Train)]);
        let split_col = batch.schema().index_of("split").unwrap();
        let mut cols = batch.columns().to_vec();
        cols[split_col] = Arc::new(StringArray::from_iter_values(["Train"]));
        let p = tmp.path().join("index.parquet");
        write_parquet(&p, &RecordBatch::try_new(batch.schema(), cols).unwrap()).unwrap();
        let err = read_index(&p).unwrap_err().to_string();
        assert!(
            err.contains("index.parquet") && err.contains("row 0: unknown split `Train`"),
            "{err}"
        );
    }

    /// A fixed-size list (the contiguous fast path), sliced so that it starts
    /// at an offset, gives what the same rows as a variable-length list give,
    /// values and errors alike.
    #[test]
    fn fixed_size_lists_and_lists_read_the_same_matrix() {
        use arrow::array::{Array, FixedSizeListArray, Float32Array, ListArray};
        use arrow::buffer::OffsetBuffer;
        let matrix = |values: Vec<f32>| -> [ArrayRef; 2] {
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            let child: ArrayRef = Arc::new(Float32Array::from(values));
            let fixed = FixedSizeListArray::new(item.clone(), 3, child.clone(), None);
            let list = ListArray::new(item, OffsetBuffer::from_lengths([3; 5]), child, None);
            [Arc::new(fixed.slice(1, 3)), Arc::new(list.slice(1, 3))]
        };
        let p = Path::new("m.parquet");
        let values: Vec<f32> = (0..15).map(|v| v as f32).collect();
        for array in matrix(values.clone()) {
            let (dim, got) = column_as_matrix(&array, "emb", p).unwrap();
            assert_eq!(
                (dim, got),
                (3, values[3..12].to_vec()),
                "{}",
                array.data_type()
            );
        }
        let mut bad = values;
        bad[7] = f32::NAN; // row 2 of 5: row 1 of the slice
        bad[10] = f32::INFINITY; // row 3: row 2 of the slice
        bad[13] = f32::NAN; // row 4: outside the slice
        for array in matrix(bad) {
            let err = column_as_matrix(&array, "emb", p).unwrap_err().to_string();
            assert!(err.contains("in 2 rows (first: row 1)"), "{err}");
        }
    }

    #[test]
    fn bad_tables_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty.arrow");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_table(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = Embeddings {
            image_id: vec![1, 2],
            class_id: vec![5, 5],
            split: vec![Split::Test, Split::Test],
            dim: 2,
            values: vec![0.0, f32::NAN, 2.0, 3.0],
        };
        let p = tmp.path().join("nan.arrow");
        write_ipc(&p, &e.to_batch()).unwrap();
        let err = Embeddings::read(&p).unwrap_err().to_string();
        assert!(err.contains("NaN") && err.contains("row 0"), "{err}");
        let b = read_table(&p).unwrap();
        let err = column(&b, "emb", &p).unwrap_err().to_string();
        assert!(
            err.contains("image_id, class_id, split, embedding"),
            "{err}"
        );
    }
}

/// One row of `train_log.parquet`: one training step. The validation columns are null
/// except at the steps where `[train.validation]` evaluated.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainLogRow {
    /// Training step, from 0.
    pub step: u32,
    /// The loss value.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// Wall seconds since training began (validation included).
    pub seconds: f64,
    /// Fraction of triplets/pairs with non-zero loss.
    pub active_fraction: f64,
    /// Mean distance over positive pairs of the batch.
    pub mean_pos_dist: f64,
    /// Mean distance over negative pairs of the batch.
    pub mean_neg_dist: f64,
    /// Mean L2 norm of the embeddings.
    pub mean_norm: f64,
    /// Seconds the step waited for its batch (0 when the loader was ahead).
    #[serde(default)]
    pub data_wait_s: f64,
    /// Validation Recall@1 after this step, where evaluated.
    #[serde(default)]
    pub val_recall_at_1: Option<f64>,
    /// Validation MAP@R after this step, where evaluated.
    #[serde(default)]
    pub val_map_at_r: Option<f64>,
}

/// The training log table.
pub fn train_log_to_batch(rows: &[TrainLogRow]) -> RecordBatch {
    use arrow::array::Float64Array;
    let f = |name: &str, nullable: bool| Field::new(name, DataType::Float64, nullable);
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt32, false),
        f("loss", false),
        f("lr", false),
        f("seconds", false),
        f("active_fraction", false),
        f("mean_pos_dist", false),
        f("mean_neg_dist", false),
        f("mean_norm", false),
        f("data_wait_s", false),
        f("val_recall_at_1", true),
        f("val_map_at_r", true),
    ]));
    let col = |g: fn(&TrainLogRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(g)))
    };
    let opt = |g: fn(&TrainLogRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(g)))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.step))),
        col(|r| r.loss),
        col(|r| r.lr),
        col(|r| r.seconds),
        col(|r| r.active_fraction),
        col(|r| r.mean_pos_dist),
        col(|r| r.mean_neg_dist),
        col(|r| r.mean_norm),
        col(|r| r.data_wait_s),
        opt(|r| r.val_recall_at_1),
        opt(|r| r.val_map_at_r),
    ];
    RecordBatch::try_new(schema, cols).expect("train log columns match their schema")
}

/// Reads `train_log.parquet`; logs written before the validation columns existed read with
/// them null.
pub fn read_train_log(path: &Path) -> Result<Vec<TrainLogRow>, StoreError> {
    let b = read_table(path)?;
    let f64s = |n: &str| -> Result<Vec<Option<f64>>, StoreError> {
        let c = column(&b, n, path)?;
        let c = c
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| table_err(path, format!("column `{n}` is not float64")))?;
        Ok((0..c.len())
            .map(|i| (!c.is_null(i)).then(|| c.value(i)))
            .collect())
    };
    let optional = |n: &str| -> Result<Vec<Option<f64>>, StoreError> {
        if b.column_by_name(n).is_some() {
            f64s(n)
        } else {
            Ok(vec![None; b.num_rows()])
        }
    };
    let steps = column_as_labels(column(&b, "step", path)?, "step", path)?;
    let req = |n: &str| -> Result<Vec<f64>, StoreError> {
        f64s(n)?
            .into_iter()
            .map(|v| v.ok_or_else(|| table_err(path, format!("column `{n}` has a null"))))
            .collect()
    };
    let (loss, lr, seconds, active, pos, neg, norm) = (
        req("loss")?,
        req("lr")?,
        req("seconds")?,
        req("active_fraction")?,
        req("mean_pos_dist")?,
        req("mean_neg_dist")?,
        req("mean_norm")?,
    );
    let (r1, map) = (optional("val_recall_at_1")?, optional("val_map_at_r")?);
    let wait = optional("data_wait_s")?;
    Ok((0..b.num_rows())
        .map(|i| TrainLogRow {
            step: steps[i],
            loss: loss[i],
            lr: lr[i],
            seconds: seconds[i],
            active_fraction: active[i],
            mean_pos_dist: pos[i],
            mean_neg_dist: neg[i],
            mean_norm: norm[i],
            data_wait_s: wait[i].unwrap_or(0.0),
            val_recall_at_1: r1[i],
            val_map_at_r: map[i],
        })
        .collect())
}

/// `neighbors.parquet`: each query's nearest gallery items, rank 1 first.
pub fn neighbors_to_batch(
    query_image_id: Vec<u32>,
    rank: Vec<u32>,
    neighbor_image_id: Vec<u32>,
    distance: Vec<f32>,
) -> RecordBatch {
    use arrow::array::Float32Array;
    let schema = Arc::new(Schema::new(vec![
        Field::new("query_image_id", DataType::UInt32, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("neighbor_image_id", DataType::UInt32, false),
        Field::new("distance", DataType::Float32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(query_image_id)),
        Arc::new(UInt32Array::from(rank)),
        Arc::new(UInt32Array::from(neighbor_image_id)),
        Arc::new(Float32Array::from(distance)),
    ];
    RecordBatch::try_new(schema, cols).expect("neighbor columns match their schema")
}

/// `clusters.parquet`: the k-means cluster of each image.
pub fn clusters_to_batch(image_id: Vec<u32>, cluster: Vec<u32>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::UInt32, false),
        Field::new("cluster", DataType::UInt32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(image_id)),
        Arc::new(UInt32Array::from(cluster)),
    ];
    RecordBatch::try_new(schema, cols).expect("cluster columns match their schema")
}
