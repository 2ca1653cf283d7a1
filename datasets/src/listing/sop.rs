//! Stanford Online Products: `Ebay_train.txt` and `Ebay_test.txt`, each with a header line.
//!
//! Format: first line `image_id class_id super_class_id path`, then one image per line,
//! fields separated by spaces, paths relative to the root (`bicycle_final/111085122871_0.JPG`).
//!
//! `class_id` is SOP's own class id (1–11,318 train, 11,319–22,634 test in the official
//! files); `class_name` is `<super class folder without _final>_<class_id>`
//! (`bicycle_11`). Records: all of `Ebay_train.txt`, then all of `Ebay_test.txt`, in
//! file order. A class listed in both files is an error.

use std::collections::HashMap;
use std::path::Path;

use super::text::{fields, normalize_rel, parse_u32, ListFile};
use super::{is_stray, Listing, Record, Split};
use crate::error::Result;

const KIND: &str = "sop";
const HEADER: [&str; 4] = ["image_id", "class_id", "super_class_id", "path"];

pub(crate) fn list(root: &Path) -> Result<Listing> {
    let mut records = Vec::new();
    let mut list_files = Vec::new();
    // class id -> (split, file name) of its first appearance
    let mut class_split: HashMap<u32, (Split, String)> = HashMap::new();
    for (rel, split) in [
        ("Ebay_train.txt", Split::Train),
        ("Ebay_test.txt", Split::Test),
    ] {
        let file = ListFile::read(KIND, root, rel)?;
        list_files.push(file.rel.clone());
        let mut lines = file.lines();
        match lines.next() {
            Some(h) if fields(h.text) == HEADER => {}
            Some(h) => {
                return Err(
                    file.parse_error(&h, format!("expected the header `{}`", HEADER.join(" ")))
                )
            }
            None => continue,
        }
        for line in lines {
            let f = fields(line.text);
            if f.len() != 4 {
                return Err(file.parse_error(
                    &line,
                    "expected 4 fields `image_id class_id super_class_id path`",
                ));
            }
            let image_id = parse_u32(f[0], "image_id").map_err(|r| file.parse_error(&line, r))?;
            let class_id = parse_u32(f[1], "class_id").map_err(|r| file.parse_error(&line, r))?;
            parse_u32(f[2], "super_class_id").map_err(|r| file.parse_error(&line, r))?;
            let path = normalize_rel(f[3]);
            if is_stray(&path) {
                continue;
            }
            match class_split.get(&class_id) {
                Some((s, first)) if *s != split => {
                    return Err(file.class_error(format!(
                        "line {}: class {class_id} is also listed in {first}; SOP's splits have disjoint classes",
                        line.no
                    )))
                }
                Some(_) => {}
                None => {
                    class_split.insert(class_id, (split, rel.to_string()));
                }
            }
            let super_dir = path.split('/').next().unwrap_or("");
            let super_name = super_dir.strip_suffix("_final").unwrap_or(super_dir);
            records.push(Record {
                class_name: format!("{super_name}_{class_id}"),
                path,
                class_id,
                split,
                dataset_id: Some(image_id),
            });
        }
    }
    Ok(Listing {
        records,
        list_files,
        unread_images: Vec::new(),
    })
}
