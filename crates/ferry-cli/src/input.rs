//! Reading the operator's files: bounded in size, and only from what can end. An inventory or
//! a rules file is a regular file (a FIFO nobody writes would block for good, a device may
//! never end); a domain XML may also come through a pipe (`--domain-xml /dev/stdin`).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

/// What a path may be, besides a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// A regular file only.
    File,
    /// A regular file, a pipe or a character device (read up to the bound).
    Stream,
}

fn kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The text of `p` (`what` names it in errors), at most `limit` bytes.
pub fn read_text(p: &Path, what: &str, limit: u64, accept: Accept) -> anyhow::Result<String> {
    use std::os::unix::fs::FileTypeExt;
    let cannot = || format!("cannot read the {what} {}", p.display());
    let t = std::fs::metadata(p).with_context(cannot)?.file_type();
    let stream = t.is_fifo() || t.is_char_device();
    if !(t.is_file() || stream && accept == Accept::Stream) {
        bail!(
            "the {what} {} is {}: give a regular file",
            p.display(),
            kind(t)
        );
    }
    let mut buf = Vec::new();
    std::fs::File::open(p)
        .with_context(cannot)?
        .take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(cannot)?;
    if buf.len() as u64 > limit {
        bail!(
            "the {what} {} is larger than {} MiB: Ferry reads no more",
            p.display(),
            limit >> 20
        );
    }
    String::from_utf8(buf).with_context(|| format!("the {what} {} is not UTF-8 text", p.display()))
}

/// An inventory or rules file: ten thousand hosts take about a megabyte.
pub const MAX_CONFIG: u64 = 16 << 20;
