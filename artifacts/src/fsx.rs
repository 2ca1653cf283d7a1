//! `std::fs` whose errors name the path: "writing out/report.md: No space left on
//! device" instead of a bare OS message, for every file a stage touches.
use std::io;
use std::path::Path;

fn named(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// [`std::fs::write`].
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    std::fs::write(path, contents).map_err(|e| named(e, "writing", path))
}

/// [`std::fs::read_to_string`].
pub fn read_to_string(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map_err(|e| named(e, "reading", path))
}

/// [`std::fs::File::create`].
pub fn create(path: &Path) -> io::Result<std::fs::File> {
    std::fs::File::create(path).map_err(|e| named(e, "creating", path))
}

/// [`std::fs::copy`], naming both files.
pub fn copy(from: &Path, to: &Path) -> io::Result<u64> {
    std::fs::copy(from, to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("copying {} to {}: {e}", from.display(), to.display()),
        )
    })
}

/// [`std::fs::create_dir_all`].
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| named(e, "creating", path))
}

/// [`std::fs::remove_dir_all`].
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(path).map_err(|e| named(e, "removing", path))
}

/// [`std::fs::rename`], naming both paths.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("renaming {} to {}: {e}", from.display(), to.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path_and_keep_the_kind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/file.txt");
        let e = write(&missing, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("writing "), "{e}");
        assert!(e.to_string().contains("no/such/file.txt"), "{e}");
        let e = copy(&missing, &dir.path().join("b")).unwrap_err();
        assert!(e.to_string().contains("file.txt to "), "{e}");
    }
}
