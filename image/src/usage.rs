//! Disk usage of a tree, counted the way `du` does: allocated blocks, each
//! inode once (hard-linked busybox applets are one file), symlinks not followed.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What ImageFsInfo reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// Walks `root` without following symlinks. Entries that vanish mid-walk are skipped.
pub fn disk_usage(root: &Path) -> FsUsage {
    let mut seen = HashSet::new();
    let mut usage = FsUsage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            usage.used_bytes += meta.blocks() * 512;
            usage.inodes_used += 1;
        }
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    usage
}
