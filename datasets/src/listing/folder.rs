//! A folder per class: `root/<class>/<image>`; the split is chosen by class name.
//!
//! Classes are the sub-folders of the root (hidden ones skipped), sorted by name (byte
//! order); `class_id` is the 0-based position in that order, so it is stable as long as
//! the set of class folders is. Images are the files directly inside a class folder
//! whose extension is `jpg`, `jpeg` or `png` (any case); hidden and `._*` files,
//! other files and deeper folders are ignored. Records: class by class, files sorted by
//! name. Train classes are [`ListOptions::train_classes`] when given (each must exist),
//! otherwise the first half of the sorted class names (rounded up).

use std::path::Path;

use super::{ListOptions, Listing, Record, Split};
use crate::error::{DatasetError, Result};

/// Image extensions the folder adapters pick up (compared lowercase).
pub(crate) const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Image extensions of formats dml does not decode: listed as unread, with a warning.
pub(crate) const UNREAD_EXTENSIONS: [&str; 9] = [
    "bmp", "webp", "gif", "tif", "tiff", "heic", "heif", "avif", "jxl",
];

pub(crate) fn list(root: &Path, opts: &ListOptions) -> Result<Listing> {
    let classes = class_folders(root)?;
    if classes.is_empty() {
        return Err(DatasetError::EmptyDataset {
            root: root.to_path_buf(),
            reason: "no class folder; expected `<root>/<class>/<image>`".into(),
        });
    }
    let train: Vec<bool> = match &opts.train_classes {
        Some(names) => {
            for n in names {
                if !classes.iter().any(|c| c == n) {
                    return Err(DatasetError::InvalidSetting {
                        setting: "dataset.train_classes",
                        value: format!("{n:?}"),
                        reason: format!(
                            "there is no class folder `{n}` under `{}`",
                            root.display()
                        ),
                    });
                }
            }
            classes.iter().map(|c| names.contains(c)).collect()
        }
        None => {
            if classes.len() < 2 {
                return Err(DatasetError::EmptyDataset {
                    root: root.to_path_buf(),
                    reason: "only one class folder; the default class split needs at least two"
                        .into(),
                });
            }
            let n_train = classes.len().div_ceil(2);
            (0..classes.len()).map(|i| i < n_train).collect()
        }
    };
    let mut records = Vec::new();
    let mut unread_images = Vec::new();
    for (i, class) in classes.iter().enumerate() {
        let split = if train[i] { Split::Train } else { Split::Test };
        let (files, unread) = image_files_and_unread(&root.join(class))?;
        unread_images.extend(unread.into_iter().map(|f| format!("{class}/{f}")));
        for file in files {
            records.push(Record {
                path: format!("{class}/{file}"),
                class_id: i as u32,
                class_name: class.clone(),
                split,
                dataset_id: None,
            });
        }
    }
    Ok(Listing {
        records,
        list_files: Vec::new(),
        unread_images,
    })
}

/// Non-hidden sub-folder names of `dir`, sorted.
pub(crate) fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in read_dir(dir)? {
        let (name, is_dir) = entry;
        if is_dir && !name.starts_with('.') {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Image file names directly inside `dir`, sorted.
pub(crate) fn image_files(dir: &Path) -> Result<Vec<String>> {
    Ok(image_files_and_unread(dir)?.0)
}

/// The image files of `dir` dml reads, and those of formats it does not read, sorted.
pub(crate) fn image_files_and_unread(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut unread = Vec::new();
    for (name, is_dir) in read_dir(dir)? {
        if is_dir || name.starts_with('.') {
            continue;
        }
        let ext = name
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .unwrap_or_default();
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            out.push(name);
        } else if UNREAD_EXTENSIONS.contains(&ext.as_str()) {
            unread.push(name);
        }
    }
    out.sort();
    unread.sort();
    Ok((out, unread))
}

/// (name, is a directory) of each entry; symlinks are followed. Non-UTF-8 names are an error.
fn read_dir(dir: &Path) -> Result<Vec<(String, bool)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DatasetError::io("listing folder", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DatasetError::io("listing folder", dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(DatasetError::io(
                "reading the name of",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "file name is not UTF-8; rename it",
                ),
            ));
        };
        let ft = entry
            .file_type()
            .map_err(|e| DatasetError::io("reading metadata of", &path, e))?;
        let is_dir = if ft.is_symlink() {
            std::fs::metadata(&path)
                .map_err(|e| DatasetError::io("following the link", &path, e))?
                .is_dir()
        } else {
            ft.is_dir()
        };
        out.push((name, is_dir));
    }
    Ok(out)
}
