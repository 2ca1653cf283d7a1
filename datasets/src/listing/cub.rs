//! CUB-200-2011: `images.txt` + `image_class_labels.txt`, images under `images/`, classes 1–100 train, 101–200 test.
//!
//! Format (both files space separated, one image per line, LF or CRLF):
//! - `images.txt`: `<image id> <class dir>/<file>.jpg`, the path relative to `images/`;
//! - `image_class_labels.txt`: `<image id> <class 1..200>`.
//!
//! `class_id` is CUB's own class number (1–200), `class_name` the class directory
//! (`001.Black_footed_Albatross`). Records follow `images.txt` order. Stray `._*`
//! entries are skipped. `train_test_split.txt` is CUB's *classification* split and is
//! deliberately not read: metric learning splits by class.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::text::{fields, normalize_rel, parse_u32, ListFile};
use super::{is_stray, Listing, Record, Split};
use crate::error::Result;

const KIND: &str = "cub";
/// Classes 1..=TRAIN_LAST are train.
const TRAIN_LAST: u32 = 100;
const CLASSES: u32 = 200;

pub(crate) fn list(root: &Path) -> Result<Listing> {
    let images = ListFile::read(KIND, root, "images.txt")?;
    let labels = ListFile::read(KIND, root, "image_class_labels.txt")?;

    let mut label_of: HashMap<u32, u32> = HashMap::new();
    for line in labels.lines() {
        let f = fields(line.text);
        if f.len() != 2 {
            return Err(labels.parse_error(&line, "expected `<image id> <class id>`"));
        }
        let id = parse_u32(f[0], "image id").map_err(|r| labels.parse_error(&line, r))?;
        let class = parse_u32(f[1], "class id").map_err(|r| labels.parse_error(&line, r))?;
        if !(1..=CLASSES).contains(&class) {
            return Err(
                labels.parse_error(&line, format!("class id {class} is outside 1..={CLASSES}"))
            );
        }
        if label_of.insert(id, class).is_some() {
            return Err(labels.parse_error(&line, format!("image id {id} is labelled twice")));
        }
    }

    let mut records = Vec::new();
    let mut seen_ids: HashMap<u32, usize> = HashMap::new();
    let mut class_dir: BTreeMap<u32, String> = BTreeMap::new();
    for line in images.lines() {
        let f = fields(line.text);
        if f.len() != 2 {
            return Err(images.parse_error(&line, "expected `<image id> <class dir>/<file>`"));
        }
        let id = parse_u32(f[0], "image id").map_err(|r| images.parse_error(&line, r))?;
        if let Some(prev) = seen_ids.insert(id, line.no) {
            return Err(images.parse_error(
                &line,
                format!("image id {id} already listed on line {prev}"),
            ));
        }
        let rel = normalize_rel(f[1]);
        if is_stray(&rel) {
            continue;
        }
        let Some((dir, _file)) = rel.rsplit_once('/') else {
            return Err(images.parse_error(&line, "the path has no class directory"));
        };
        let Some(&class_id) = label_of.get(&id) else {
            return Err(labels.class_error(format!(
                "image id {id} (images.txt line {}) has no label; add `{id} <class>`",
                line.no
            )));
        };
        match class_dir.get(&class_id) {
            Some(d) if d != dir => {
                return Err(images.class_error(format!(
                    "line {}: class {class_id} is in directory `{dir}` but earlier images of it are in `{d}`",
                    line.no
                )))
            }
            Some(_) => {}
            None => {
                class_dir.insert(class_id, dir.to_string());
            }
        }
        let split = if class_id <= TRAIN_LAST {
            Split::Train
        } else {
            Split::Test
        };
        records.push(Record {
            path: format!("images/{rel}"),
            class_id,
            class_name: dir.to_string(),
            split,
            dataset_id: Some(id),
        });
    }
    Ok(Listing {
        records,
        list_files: vec![images.rel.clone(), labels.rel.clone()],
        unread_images: Vec::new(),
    })
}
