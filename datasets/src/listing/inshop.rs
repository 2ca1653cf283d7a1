//! DeepFashion In-shop: `list_eval_partition.txt` with a count line, a header, and train/query/gallery rows.
//!
//! Format: line 1 the number of images (52712), line 2 the header
//! `image_name item_id evaluation_status`, then rows `img/…/x.jpg id_00000002 train`
//! whose fields are separated by runs of spaces. The file is looked for at the root,
//! then at `Eval/list_eval_partition.txt` (the archive's layout). Image paths are
//! relative to the root; if `img/` is not at the root but `Img/img/` is, paths are
//! prefixed with `Img/`.
//!
//! `class_id` is the number in the item id (`id_00000002` → 2), `class_name` the item id
//! itself. Records follow file order. The count line must match the number of rows, and
//! an item may not be both in train and in query/gallery.

use std::collections::HashMap;
use std::path::Path;

use super::text::{fields, normalize_rel, ListFile};
use super::{is_stray, Listing, Record, Split};
use crate::error::{DatasetError, Result};

const KIND: &str = "inshop";
const HEADER: [&str; 3] = ["image_name", "item_id", "evaluation_status"];

pub(crate) fn list(root: &Path) -> Result<Listing> {
    let rel = if root.join("list_eval_partition.txt").is_file() {
        "list_eval_partition.txt"
    } else if root.join("Eval/list_eval_partition.txt").is_file() {
        "Eval/list_eval_partition.txt"
    } else {
        return Err(DatasetError::ListFileMissing {
            kind: KIND,
            path: root.join("list_eval_partition.txt"),
        });
    };
    let file = ListFile::read(KIND, root, rel)?;
    let mut lines = file.lines();
    let Some(count_line) = lines.next() else {
        return Ok(Listing {
            records: Vec::new(),
            list_files: vec![file.rel.clone()],
            unread_images: Vec::new(),
        });
    };
    let declared: usize = count_line.text.trim().parse().map_err(|_| {
        file.parse_error(
            &count_line,
            "expected the number of images on the first line",
        )
    })?;
    match lines.next() {
        Some(h) if fields(h.text) == HEADER => {}
        Some(h) => {
            return Err(file.parse_error(&h, format!("expected the header `{}`", HEADER.join(" "))))
        }
        None => {
            return Err(file.parse_error(&count_line, "the header line is missing after the count"))
        }
    }

    let prefix = if !root.join("img").is_dir() && root.join("Img/img").is_dir() {
        "Img/"
    } else {
        ""
    };
    let mut records = Vec::new();
    let mut rows = 0usize;
    // item -> (is train, line number of first appearance)
    let mut item_side: HashMap<u32, (bool, usize)> = HashMap::new();
    for line in lines {
        rows += 1;
        let f = fields(line.text);
        if f.len() != 3 {
            return Err(file.parse_error(
                &line,
                "expected 3 fields `image_name item_id evaluation_status`",
            ));
        }
        let split = match f[2] {
            "train" => Split::Train,
            "query" => Split::Query,
            "gallery" => Split::Gallery,
            other => {
                return Err(file.parse_error(
                    &line,
                    format!("evaluation_status `{other}` is not train, query or gallery"),
                ))
            }
        };
        let class_id = f[1]
            .strip_prefix("id_")
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| {
                file.parse_error(
                    &line,
                    format!("item_id `{}` is not of the form id_<digits>", f[1]),
                )
            })?;
        let is_train = split == Split::Train;
        match item_side.get(&class_id) {
            Some(&(t, first)) if t != is_train => {
                return Err(file.class_error(format!(
                    "line {}: item {} is in the train split and in query/gallery (line {first}); their items must be disjoint",
                    line.no, f[1]
                )))
            }
            Some(_) => {}
            None => {
                item_side.insert(class_id, (is_train, line.no));
            }
        }
        let path = normalize_rel(f[0]);
        if is_stray(&path) {
            continue;
        }
        records.push(Record {
            path: format!("{prefix}{path}"),
            class_id,
            class_name: f[1].to_string(),
            split,
            dataset_id: None,
        });
    }
    if rows != declared {
        return Err(file.parse_error(
            &count_line,
            format!("the first line declares {declared} images but the file lists {rows}"),
        ));
    }
    Ok(Listing {
        records,
        list_files: vec![file.rel.clone()],
        unread_images: Vec::new(),
    })
}
