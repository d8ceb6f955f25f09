//! Bounded reads of configuration, certificate and token files.

use std::path::Path;

/// Largest configuration, certificate, key, CA bundle or token file read.
pub const MAX_FILE: u64 = 4 << 20;

/// Reads a regular file of at most [`MAX_FILE`] bytes (a path to a device
/// such as `/dev/zero` or a huge file is refused instead of read forever).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut out = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "larger than 4 MiB"));
    }
    Ok(out)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}
