//! `/proc/self/mountinfo`, parsed once for every backend that reads it.
//!
//! The kernel escapes space, tab, newline and backslash in the path fields
//! as `\ooo` (octal); [`parse`] undoes that, so a mount point compares with
//! a canonical path as is.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 3: the filesystem's `major:minor`.
    pub device: String,
    /// Field 4: the directory of the filesystem mounted here, unescaped.
    pub root: PathBuf,
    /// Field 5, unescaped.
    pub mount_point: PathBuf,
    /// Field 6: the per-mount options (`rw,relatime,idmapped`).
    pub mount_options: String,
    /// After ` - `: the filesystem type.
    pub fstype: String,
    /// After ` - `: the source, unescaped.
    pub source: String,
    /// After ` - `: the superblock options (`lowerdir=...` for overlay).
    pub super_options: String,
}

/// Undoes mountinfo's `\ooo` escapes.
pub fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Every well-formed line of `text`, in order (a later line is mounted on
/// top of an earlier one at the same point).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let fields: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            Some(MountEntry {
                device: fields.get(2)?.to_string(),
                root: PathBuf::from(unescape(fields.get(3)?)),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                mount_options: fields.get(5)?.to_string(),
                fstype: tail.next()?.to_string(),
                source: unescape(tail.next()?).to_string_lossy().into_owned(),
                super_options: tail.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// This process's mounts.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at `path` in `entries` (`path` as mountinfo shows
/// it: canonical).
pub fn top_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_fields_are_unescaped_and_the_top_mount_found() {
        let info = "\
22 1 8:1 / /b\\040x/rootfs rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:50 / /b\\040x/rootfs rw,relatime,idmapped - overlay overlay rw,lowerdir=/l/2:/l/1
41 22 0:51 / /tab\\011back\\134slash rw - tmpfs my\\040src rw
garbage
";
        let entries = parse(info);
        assert_eq!(entries.len(), 3);
        let top = top_at(&entries, Path::new("/b x/rootfs")).unwrap();
        assert_eq!(top.fstype, "overlay");
        assert!(top.mount_options.contains("idmapped"));
        assert_eq!(top.super_options, "rw,lowerdir=/l/2:/l/1");
        assert_eq!(entries[2].mount_point, Path::new("/tab\tback\\slash"));
        assert_eq!(entries[2].source, "my src");
        assert_eq!(
            (entries[1].device.as_str(), entries[1].root.as_path()),
            ("0:50", Path::new("/"))
        );
        assert_eq!(
            unescape("a\\04"),
            OsString::from("a\\04"),
            "a short escape is kept"
        );
    }
}
