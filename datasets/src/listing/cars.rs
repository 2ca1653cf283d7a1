//! Stanford Cars196: `cars_annos.txt` (`<relpath> <class 1..196>`) or a folder per class; classes 1–98 train, 99–196 test.
//!
//! The official annotations ship as MATLAB `cars_annos.mat`, which this crate does not
//! parse. Two plain forms are accepted instead, tried in this order:
//!
//! 1. **`cars_annos.txt`** at the root: one image per line, `<relpath> <class>` separated
//!    by whitespace or a single comma (CSV), `<class>` in 1..=196, paths relative to the
//!    root (`car_ims/000001.jpg`); lines starting with `#` are comments. If
//!    `class_names.txt` exists beside it, its n-th non-blank line names class n;
//!    otherwise classes are named `class_001` … `class_196`. Converting the official
//!    file once:
//!    ```text
//!    python3 -c "import scipy.io as s; a=s.loadmat('cars_annos.mat')['annotations'][0]; print('\n'.join(f'{x[0][0]} {x[5][0][0]}' for x in a))" > cars_annos.txt
//!    python3 -c "import scipy.io as s; print('\n'.join(c[0] for c in s.loadmat('cars_annos.mat')['class_names'][0]))" > class_names.txt
//!    ```
//!    `class_id` is the file's class number; records follow file order.
//! 2. **A folder per class** (`root/<class>/<image>`, images as in the folder adapter):
//!    there must be exactly 196 class folders; sorted by name they get `class_id` 1–196
//!    (zero-pad numeric prefixes, e.g. `001_AM General Hummer SUV 2000`, so that sorting
//!    keeps the official order). `class_name` is the folder name.

use std::path::Path;

use super::folder::{class_folders, image_files};
use super::text::{normalize_rel, parse_u32, ListFile};
use super::{is_stray, Listing, Record, Split};
use crate::error::{DatasetError, Result};

const KIND: &str = "cars196";
const CLASSES: u32 = 196;
/// Classes 1..=TRAIN_LAST are train.
const TRAIN_LAST: u32 = 98;

fn split_of(class_id: u32) -> Split {
    if class_id <= TRAIN_LAST {
        Split::Train
    } else {
        Split::Test
    }
}

/// The conversion of the official `cars_annos.mat` to the plain files this adapter reads.
pub const CONVERSION: &str = r#"  cd DATASET_ROOT
  python3 -c "import scipy.io as s; a=s.loadmat('cars_annos.mat')['annotations'][0]; print('\n'.join(f'{x[0][0]} {x[5][0][0]}' for x in a))" > cars_annos.txt
  python3 -c "import scipy.io as s; print('\n'.join(c[0] for c in s.loadmat('cars_annos.mat')['class_names'][0]))" > class_names.txt"#;

pub(crate) fn list(root: &Path) -> Result<Listing> {
    if root.join("cars_annos.txt").is_file() {
        list_annotations(root)
    } else if root.join("cars_annos.mat").is_file() {
        Err(DatasetError::NeedsConversion {
            path: root.join("cars_annos.mat"),
            reason: "the official MATLAB annotations are not read directly; the cars196 adapter reads cars_annos.txt (and class_names.txt) beside it".into(),
            how: CONVERSION.replace("DATASET_ROOT", &root.display().to_string()),
        })
    } else {
        list_folders(root)
    }
}

fn list_annotations(root: &Path) -> Result<Listing> {
    let annos = ListFile::read(KIND, root, "cars_annos.txt")?;
    let mut list_files = vec![annos.rel.clone()];
    let names: Option<Vec<String>> = if root.join("class_names.txt").is_file() {
        let f = ListFile::read(KIND, root, "class_names.txt")?;
        list_files.push(f.rel.clone());
        Some(f.lines().map(|l| l.text.trim().to_string()).collect())
    } else {
        None
    };
    if let Some(n) = &names {
        if n.len() != CLASSES as usize {
            return Err(DatasetError::BadClassId {
                file: root.join("class_names.txt"),
                reason: format!("it names {} classes; Cars196 has {CLASSES}", n.len()),
            });
        }
    }
    let mut records = Vec::new();
    for line in annos.lines() {
        if line.text.trim_start().starts_with('#') {
            continue;
        }
        let f: Vec<&str> = if line.text.contains(',') {
            line.text.split(',').map(str::trim).collect()
        } else {
            line.text.split_ascii_whitespace().collect()
        };
        if f.len() != 2 || f[0].is_empty() {
            return Err(
                annos.parse_error(&line, "expected `<relpath> <class>` or `<relpath>,<class>`")
            );
        }
        let class_id = parse_u32(f[1], "class").map_err(|r| annos.parse_error(&line, r))?;
        if !(1..=CLASSES).contains(&class_id) {
            return Err(
                annos.parse_error(&line, format!("class {class_id} is outside 1..={CLASSES}"))
            );
        }
        let path = normalize_rel(f[0]);
        if is_stray(&path) {
            continue;
        }
        let class_name = match &names {
            Some(n) => n[class_id as usize - 1].clone(),
            None => format!("class_{class_id:03}"),
        };
        records.push(Record {
            path,
            class_id,
            class_name,
            split: split_of(class_id),
            dataset_id: None,
        });
    }
    Ok(Listing {
        records,
        list_files,
        unread_images: Vec::new(),
    })
}

fn list_folders(root: &Path) -> Result<Listing> {
    let classes = class_folders(root)?;
    if classes.is_empty() {
        return Err(DatasetError::ListFileMissing {
            kind: KIND,
            path: root.join("cars_annos.txt"),
        });
    }
    if classes.len() != CLASSES as usize {
        return Err(DatasetError::BadClassId {
            file: root.to_path_buf(),
            reason: format!(
                "found {} class folders and no cars_annos.txt; Cars196 needs {CLASSES} folders or a cars_annos.txt",
                classes.len()
            ),
        });
    }
    let mut records = Vec::new();
    for (i, class) in classes.iter().enumerate() {
        let class_id = i as u32 + 1;
        for file in image_files(&root.join(class))? {
            records.push(Record {
                path: format!("{class}/{file}"),
                class_id,
                class_name: class.clone(),
                split: split_of(class_id),
                dataset_id: None,
            });
        }
    }
    Ok(Listing {
        records,
        list_files: Vec::new(),
        unread_images: Vec::new(),
    })
}
