//! Reading list files: UTF-8 text, LF or CRLF line endings, an optional BOM, blank lines skipped.

use std::path::{Path, PathBuf};

use crate::error::{DatasetError, Result};

/// A list file read into memory.
pub(crate) struct ListFile {
    /// Full path (for messages).
    pub path: PathBuf,
    /// Path relative to the dataset root (for [`crate::Listing::list_files`]).
    pub rel: String,
    text: String,
}

/// One non-blank line of a list file.
pub(crate) struct Line<'a> {
    /// 1-based line number in the file.
    pub no: usize,
    /// The line without its line ending.
    pub text: &'a str,
}

impl ListFile {
    /// Reads `root/rel`; a missing file is [`DatasetError::ListFileMissing`].
    pub fn read(kind: &'static str, root: &Path, rel: &str) -> Result<ListFile> {
        let path = root.join(rel);
        if !path.is_file() {
            return Err(DatasetError::ListFileMissing { kind, path });
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| DatasetError::io("reading", &path, e))?;
        Ok(ListFile {
            path,
            rel: rel.to_string(),
            text,
        })
    }

    /// The non-blank lines, CR and BOM stripped, numbered from 1.
    pub fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        let text = self.text.strip_prefix('\u{feff}').unwrap_or(&self.text);
        text.split('\n').enumerate().filter_map(|(i, l)| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            if l.trim().is_empty() {
                None
            } else {
                Some(Line { no: i + 1, text: l })
            }
        })
    }

    /// A [`DatasetError::ParseLine`] for `line`.
    pub fn parse_error(&self, line: &Line<'_>, reason: impl Into<String>) -> DatasetError {
        DatasetError::ParseLine {
            file: self.path.clone(),
            line_no: line.no,
            line: line.text.to_string(),
            reason: reason.into(),
        }
    }

    /// A [`DatasetError::BadClassId`] about this file.
    pub fn class_error(&self, reason: impl Into<String>) -> DatasetError {
        DatasetError::BadClassId {
            file: self.path.clone(),
            reason: reason.into(),
        }
    }
}

/// Splits a line on runs of ASCII whitespace (spaces, tabs).
pub(crate) fn fields(line: &str) -> Vec<&str> {
    line.split_ascii_whitespace().collect()
}

/// Parses a decimal unsigned integer field, or explains what it expected.
pub(crate) fn parse_u32(field: &str, what: &str) -> std::result::Result<u32, String> {
    field
        .parse::<u32>()
        .map_err(|_| format!("{what} `{field}` is not a non-negative integer"))
}

/// Normalises a path from a list file: `\` becomes `/`, a leading `./` is dropped.
pub(crate) fn normalize_rel(p: &str) -> String {
    let p = p.replace('\\', "/");
    p.strip_prefix("./").unwrap_or(&p).to_string()
}
