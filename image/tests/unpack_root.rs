//! Unpacking real layers as root and checking what the kernel shows: overlay
//! whiteouts, owners, modes, times, xattrs, device nodes, links, later entries
//! replacing earlier ones, sparse and > 8 GiB files, and diff-id checks.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use caisson_image::layers::LayerStore;
use caisson_image::unpack::unpack_layer;
use caisson_image::{Digest, ImageError};
use caisson_tests::fixtures::{gzip, LayerBuilder, FIXED_MTIME};
use caisson_tests::require;
use tar::EntryType;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Unpacks `layer` into `<tempdir>/fs` with `unpack_layer`.
fn unpack(layer: &[u8]) -> (tempfile::TempDir, PathBuf) {
    require::root("layers carry owners, device nodes and trusted.* xattrs");
    let dir = tempfile::tempdir().unwrap();
    let fs_dir = dir.path().join("fs");
    fs::create_dir(&fs_dir).unwrap();
    unpack_layer(layer, &fs_dir).unwrap_or_else(|e| panic!("unpacking the layer: {e}"));
    (dir, fs_dir)
}

fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The value of xattr `name` on `path` itself (symlinks not followed).
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated path and name, a buffer with its length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENODATA),
            "getxattr {name} on {}: {err}",
            path.display()
        );
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("reading {} at {offset}: {e}", path.display()));
    buf
}

/// One entry of a hand-built layer, for what `LayerBuilder` does not cover
/// (owners of symlinks, per-entry mtimes, PAX xattrs on directories).
#[derive(Clone, Copy)]
struct E<'a> {
    path: &'a str,
    kind: EntryType,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    link: &'a str,
    data: &'a [u8],
    xattrs: &'a [(&'a str, &'a [u8])],
}

const E0: E<'static> = E {
    path: "",
    kind: EntryType::Regular,
    mode: 0o644,
    owner: (0, 0),
    mtime: FIXED_MTIME,
    link: "",
    data: b"",
    xattrs: &[],
};

fn layer_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if matches!(e.kind, EntryType::Symlink | EntryType::Link) {
            b.append_link(&mut h, e.path, e.link).unwrap();
        } else {
            b.append_data(&mut h, e.path, e.data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_aufs_metadata_is_skipped() {
    let layer = LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc/passwd")
        .whiteout("gone")
        .file("replaced", b"earlier in this layer", 0o644)
        .whiteout("replaced")
        .dir("opaque", 0o755)
        .opaque("opaque")
        .file("opaque/kept", b"kept", 0o644)
        .dir(".wh..wh.plnk", 0o700)
        .dir(".wh..wh.orph", 0o700)
        .file(".wh..wh.aufs", b"", 0o600)
        .build();
    let (_tmp, root) = unpack(&layer);

    enum Want {
        Whiteout,
        OpaqueDir,
        PlainDir,
        File(&'static [u8]),
    }
    let cases = [
        ("etc/passwd", Want::Whiteout),
        ("gone", Want::Whiteout),
        ("replaced", Want::Whiteout),
        ("opaque", Want::OpaqueDir),
        ("etc", Want::PlainDir),
        ("opaque/kept", Want::File(b"kept")),
    ];
    for (path, want) in cases {
        let p = root.join(path);
        let st = lstat(&p);
        match want {
            Want::Whiteout => {
                assert!(st.file_type().is_char_device(), "{path}: {st:?}");
                assert_eq!(st.rdev(), 0, "{path}: overlay whiteouts are 0/0");
            }
            Want::OpaqueDir => {
                assert!(st.is_dir(), "{path}");
                assert_eq!(
                    xattr(&p, "trusted.overlay.opaque").as_deref(),
                    Some(&b"y"[..])
                );
            }
            Want::PlainDir => {
                assert!(st.is_dir(), "{path}");
                assert_eq!(xattr(&p, "trusted.overlay.opaque"), None, "{path}");
            }
            Want::File(data) => assert_eq!(fs::read(&p).unwrap(), data, "{path}"),
        }
    }
    // Whiteout files themselves and aufs bookkeeping leave no trace.
    assert_eq!(names(&root), ["etc", "gone", "opaque", "replaced"]);
    assert_eq!(names(&root.join("etc")), ["passwd"]);
    assert_eq!(names(&root.join("opaque")), ["kept"]);
}

#[test]
fn links_symlinks_and_device_nodes() {
    let layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", b"#!busybox", 0o755)
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("ls", "./bin/busybox")
        .symlink("abs", "/etc/shadow")
        .symlink("dangling", "no/such/target")
        .symlink("up", "../../../outside")
        .hardlink("abs-again", "abs")
        .node("dev/null", EntryType::Char, 0o666, 1, 3)
        .node("dev/sda9", EntryType::Block, 0o640, 8, 9)
        .node("run/initctl", EntryType::Fifo, 0o600, 0, 0)
        .build();
    let (tmp, root) = unpack(&layer);

    let busybox = lstat(&root.join("bin/busybox"));
    for link in ["bin/sh", "ls"] {
        let st = lstat(&root.join(link));
        assert_eq!(st.ino(), busybox.ino(), "{link} shares busybox's inode");
    }
    assert_eq!(busybox.nlink(), 3);

    for (path, target) in [
        ("abs", "/etc/shadow"),
        ("dangling", "no/such/target"),
        ("up", "../../../outside"),
        ("abs-again", "/etc/shadow"),
    ] {
        let p = root.join(path);
        assert!(lstat(&p).file_type().is_symlink(), "{path}");
        assert_eq!(fs::read_link(&p).unwrap(), Path::new(target), "{path}");
    }
    // A hard link to a symlink links the symlink itself, not what it names.
    assert_eq!(
        lstat(&root.join("abs-again")).ino(),
        lstat(&root.join("abs")).ino()
    );
    assert!(!exists(&tmp.path().join("outside")));

    let nodes = [
        ("dev/null", 'c', 0o666, (1, 3)),
        ("dev/sda9", 'b', 0o640, (8, 9)),
        ("run/initctl", 'p', 0o600, (0, 0)),
    ];
    for (path, kind, mode, (major, minor)) in nodes {
        let st = lstat(&root.join(path));
        let ft = st.file_type();
        let got = if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            '?'
        };
        assert_eq!(got, kind, "{path}");
        assert_eq!(st.mode() & 0o7777, mode, "{path}");
        let rdev = st.rdev();
        assert_eq!(
            (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)),
            (major, minor),
            "{path}"
        );
    }
}

#[test]
fn owners_modes_and_times_are_applied() {
    const T_ROOT: u64 = 1_000_000_000;
    const T_D: u64 = 1_100_000_000;
    const T_SUB: u64 = 1_200_000_000;
    const T_FILE: u64 = 1_300_000_000;
    const T_LINK: u64 = 1_400_000_000;
    let d = |path, mode, owner, mtime| E {
        path,
        kind: EntryType::Directory,
        mode,
        owner,
        mtime,
        ..E0
    };
    let f = |path, mode, owner, mtime| E {
        path,
        mode,
        owner,
        mtime,
        data: b"data",
        ..E0
    };
    let layer = layer_of(&[
        d("./", 0o751, (0, 0), T_ROOT),
        d("d", 0o750, (1000, 1001), T_D),
        d("d/sub", 0o1777, (0, 0), T_SUB),
        f("d/sub/f", 0o640, (1002, 1003), T_FILE),
        f("d/su", 0o4755, (0, 0), T_FILE),
        // set-id bits on a file owned by someone else: chown after chmod
        // would clear them.
        f("d/sg", 0o6711, (1000, 50), T_FILE),
        E {
            path: "d/link",
            kind: EntryType::Symlink,
            mode: 0o777,
            owner: (1004, 1005),
            mtime: T_LINK,
            link: "sub/f",
            ..E0
        },
        // Children written after their directory's entry change its mtime;
        // the header's mtime must still win.
        f("d/late", 0o600, (0, 0), T_FILE),
        f("d/sub/late", 0o600, (0, 0), T_FILE),
        f("new-parent/child", 0o644, (0, 0), T_FILE),
    ]);
    let (_tmp, root) = unpack(&layer);

    // (path, type, mode, (uid, gid), mtime)
    type Expect = (&'static str, char, u32, (u32, u32), u64);
    let cases: &[Expect] = &[
        ("", 'd', 0o751, (0, 0), T_ROOT),
        ("d", 'd', 0o750, (1000, 1001), T_D),
        ("d/sub", 'd', 0o1777, (0, 0), T_SUB),
        ("d/sub/f", 'f', 0o640, (1002, 1003), T_FILE),
        ("d/su", 'f', 0o4755, (0, 0), T_FILE),
        ("d/sg", 'f', 0o6711, (1000, 50), T_FILE),
        ("d/link", 'l', 0o777, (1004, 1005), T_LINK),
        ("d/late", 'f', 0o600, (0, 0), T_FILE),
    ];
    for &(path, kind, mode, (uid, gid), mtime) in cases {
        let st = lstat(&root.join(path));
        let ft = st.file_type();
        let got = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            '?'
        };
        assert_eq!(got, kind, "{path:?} type");
        assert_eq!(st.mode() & 0o7777, mode, "{path:?} mode");
        assert_eq!((st.uid(), st.gid()), (uid, gid), "{path:?} owner");
        assert_eq!(st.mtime() as u64, mtime, "{path:?} mtime");
    }
    // A parent no entry named is made like tar makes it.
    let implicit = lstat(&root.join("new-parent"));
    assert!(implicit.is_dir());
    assert_eq!((implicit.uid(), implicit.gid()), (0, 0));
}

/// `security.capability` v2 granting cap_net_bind_service (bit 10), effective.
fn file_capability() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

#[test]
fn xattrs_are_applied_except_overlay_ones() {
    let cap = file_capability();
    let layer = layer_of(&[
        E {
            path: "bin/ping",
            mode: 0o755,
            data: b"ping",
            xattrs: &[
                ("user.caisson", b"hello"),
                ("security.capability", &cap),
                ("trusted.overlay.opaque", b"y"),
                ("trusted.overlay.redirect", b"/etc"),
            ],
            ..E0
        },
        E {
            path: "forged-opaque",
            kind: EntryType::Directory,
            mode: 0o755,
            xattrs: &[("trusted.overlay.opaque", b"y"), ("user.dir", b"yes")],
            ..E0
        },
        E {
            path: "forged-opaque/child",
            ..E0
        },
    ]);
    let (_tmp, root) = unpack(&layer);

    let ping = root.join("bin/ping");
    let dir = root.join("forged-opaque");
    let cases: &[(&Path, &str, Option<&[u8]>)] = &[
        (&ping, "user.caisson", Some(b"hello")),
        // Set after the chown, which would have cleared it.
        (&ping, "security.capability", Some(&cap)),
        (&ping, "trusted.overlay.opaque", None),
        (&ping, "trusted.overlay.redirect", None),
        (&dir, "user.dir", Some(b"yes")),
        (&dir, "trusted.overlay.opaque", None),
    ];
    for &(path, name, want) in cases {
        assert_eq!(
            xattr(path, name).as_deref(),
            want,
            "{name} on {}",
            path.display()
        );
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    enum Want {
        File(&'static [u8], u32),
        Dir(&'static [&'static str], u32),
        Symlink(&'static str),
    }
    let cases: Vec<(&str, LayerBuilder, Want, &[&str])> = vec![
        (
            "file over file",
            LayerBuilder::new()
                .file("a", b"one", 0o600)
                .file("a", b"two", 0o644),
            Want::File(b"two", 0o644),
            &[],
        ),
        (
            "file over dir",
            LayerBuilder::new()
                .dir("a", 0o755)
                .file("a/child", b"c", 0o644)
                .file("a", b"file", 0o640),
            Want::File(b"file", 0o640),
            &[],
        ),
        (
            "dir over file",
            LayerBuilder::new()
                .file("a", b"file", 0o644)
                .dir("a", 0o750)
                .file("a/child", b"c", 0o644),
            Want::Dir(&["child"], 0o750),
            &[],
        ),
        (
            "dir over dir keeps children, later metadata wins",
            LayerBuilder::new()
                .dir("a", 0o700)
                .file("a/child", b"c", 0o644)
                .dir("a", 0o755),
            Want::Dir(&["child"], 0o755),
            &[],
        ),
        (
            "symlink over dir",
            LayerBuilder::new()
                .dir("a", 0o755)
                .file("a/child", b"c", 0o644)
                .symlink("a", "elsewhere"),
            Want::Symlink("elsewhere"),
            &["elsewhere"],
        ),
        (
            "file over symlink is not written through it",
            LayerBuilder::new()
                .symlink("a", "victim")
                .file("a", b"mine", 0o644),
            Want::File(b"mine", 0o644),
            &["victim"],
        ),
        (
            "dir over symlink is not made through it",
            LayerBuilder::new()
                .symlink("a", "victim")
                .dir("a", 0o755)
                .file("a/child", b"c", 0o644),
            Want::Dir(&["child"], 0o755),
            &["victim"],
        ),
        (
            "hard link over file",
            LayerBuilder::new()
                .file("a", b"one", 0o644)
                .file("b", b"two", 0o644)
                .hardlink("a", "b"),
            Want::File(b"two", 0o644),
            &[],
        ),
    ];
    for (name, layer, want, absent) in cases {
        let (_tmp, root) = unpack(&layer.build());
        let a = root.join("a");
        let st = lstat(&a);
        match want {
            Want::File(data, mode) => {
                assert!(st.is_file(), "{name}: {st:?}");
                assert_eq!(fs::read(&a).unwrap(), data, "{name}");
                assert_eq!(st.mode() & 0o7777, mode, "{name}");
            }
            Want::Dir(children, mode) => {
                assert!(st.is_dir(), "{name}: {st:?}");
                assert_eq!(names(&a), children, "{name}");
                assert_eq!(st.mode() & 0o7777, mode, "{name}");
            }
            Want::Symlink(target) => {
                assert!(st.file_type().is_symlink(), "{name}: {st:?}");
                assert_eq!(fs::read_link(&a).unwrap(), Path::new(target), "{name}");
            }
        }
        for path in absent {
            assert!(!exists(&root.join(path)), "{name}: {path} must not exist");
        }
    }
}

#[test]
fn entries_under_a_symlinked_parent_inside_the_layer_land_at_its_target() {
    let layer = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .file("lib/x", b"x", 0o644)
        .dir("a", 0o755)
        .symlink("a/b", "../usr")
        .file("a/b/lib/y", b"y", 0o644)
        .symlink("lib64", "lib")
        .file("lib64/z", b"z", 0o644)
        .dir("lib/newdir", 0o700)
        .hardlink("lib/x-again", "lib64/x")
        // The same directory by its real path: the later entry's mode wins.
        .dir("usr/lib/newdir", 0o711)
        .build();
    let (_tmp, root) = unpack(&layer);

    for (path, data) in [
        ("usr/lib/x", &b"x"[..]),
        ("usr/lib/y", b"y"),
        ("usr/lib/z", b"z"),
        ("usr/lib/x-again", b"x"),
    ] {
        assert_eq!(fs::read(root.join(path)).unwrap(), data, "{path}");
    }
    assert_eq!(
        lstat(&root.join("usr/lib/x-again")).ino(),
        lstat(&root.join("usr/lib/x")).ino()
    );
    let newdir = lstat(&root.join("usr/lib/newdir"));
    assert!(newdir.is_dir());
    assert_eq!(newdir.mode() & 0o7777, 0o711);
    for (link, target) in [("lib", "usr/lib"), ("a/b", "../usr"), ("lib64", "lib")] {
        assert!(lstat(&root.join(link)).file_type().is_symlink(), "{link}");
        assert_eq!(fs::read_link(root.join(link)).unwrap(), Path::new(target));
    }
}

/// A layer made by GNU tar (`--format=gnu -S`) of one sparse file with `chunks`
/// of data at their offsets and length `size`.
fn gnu_sparse_layer(dir: &Path, size: u64, chunks: &[(u64, &[u8])]) -> Vec<u8> {
    let tar = require::program("tar", "tar");
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    let file = fs::File::create(src.join("sparse")).unwrap();
    file.set_len(size).unwrap();
    for (offset, data) in chunks {
        file.write_all_at(data, *offset).unwrap();
    }
    drop(file);
    let out = dir.join("layer.tar");
    let status = Command::new(tar)
        .args([
            "--format=gnu",
            "-S",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
        ])
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("sparse")
        .status()
        .unwrap();
    assert!(status.success(), "GNU tar failed: {status}");
    let layer = fs::read(&out).unwrap();
    assert!(
        layer.len() < MIB as usize,
        "GNU tar did not store the file sparsely ({} bytes)",
        layer.len()
    );
    assert_eq!(layer[156], b'S', "GNU tar did not write a GNU sparse entry");
    layer
}

fn assert_sparse_file(path: &Path, size: u64, chunks: &[(u64, &[u8])], zeros_at: &[u64]) {
    let st = lstat(path);
    assert_eq!(st.len(), size);
    assert!(
        st.blocks() * 512 < MIB,
        "holes were filled: {} bytes allocated for {size}",
        st.blocks() * 512
    );
    for (offset, data) in chunks {
        assert_eq!(read_at(path, *offset, data.len()), *data, "at {offset}");
    }
    for &offset in zeros_at {
        assert_eq!(read_at(path, offset, 4096), vec![0u8; 4096], "at {offset}");
    }
}

#[test]
fn gnu_sparse_file_keeps_its_holes() {
    require::root("unpacking sets owners");
    let tmp = tempfile::tempdir().unwrap();
    let size = 64 * MIB + 8;
    let chunks: &[(u64, &[u8])] = &[(0, b"head"), (64 * MIB + 4, b"tail")];
    let layer = gnu_sparse_layer(tmp.path(), size, chunks);
    let (_out, root) = unpack(&layer);
    assert_sparse_file(&root.join("sparse"), size, chunks, &[4096, 32 * MIB]);
}

#[test]
fn file_over_8_gib_unpacks_with_its_length_and_content() {
    require::root("unpacking sets owners");
    let tmp = tempfile::tempdir().unwrap();
    // Past 8 GiB the size no longer fits the 11 octal digits of a ustar
    // header: GNU tar writes it base-256.
    let size = 9 * GIB + 777;
    let chunks: &[(u64, &[u8])] = &[
        (0, b"start"),
        (4 * GIB + 12_345, b"middle"),
        (8 * GIB + 1, b"past 8 GiB"),
        (size - 4, b"end!"),
    ];
    let layer = gnu_sparse_layer(tmp.path(), size, chunks);
    assert_eq!(
        layer[483] & 0x80,
        0x80,
        "the GNU real-size field is not base-256 encoded"
    );
    let started = Instant::now();
    let (_out, root) = unpack(&layer);
    eprintln!(
        "unpacking a {size}-byte sparse file took {:?}",
        started.elapsed()
    );
    assert_sparse_file(
        &root.join("sparse"),
        size,
        chunks,
        &[4096, 2 * GIB, 8 * GIB - 4096, 9 * GIB - 4096],
    );
}

#[test]
fn layer_store_checks_the_diff_id_and_leaves_no_temp_dir() {
    require::root("layers carry root-owned files");
    let layer = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"caisson\n", 0o644)
        .build();
    let right = Digest::of(&layer);
    let wrong = Digest::of(b"some other layer");
    let cases = [
        ("plain, right diff id", false, &right, true),
        ("gzip, right diff id", true, &right, true),
        ("plain, wrong diff id", false, &wrong, false),
        ("gzip, wrong diff id", true, &wrong, false),
    ];
    for (name, gzipped, diff_id, ok) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::open(&tmp.path().join("layers")).unwrap();
        let blob = if gzipped { gzip(&layer) } else { layer.clone() };
        let result = store.unpack(&blob[..], diff_id, "layer under test");
        if ok {
            let unpacked = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(unpacked.stats.entries, 2, "{name}");
            assert!(store.commit(unpacked, &right).unwrap(), "{name}");
            assert_eq!(
                store.list().unwrap(),
                std::slice::from_ref(&right),
                "{name}"
            );
            let hostname = store.fs_dir(&right).join("etc/hostname");
            assert_eq!(fs::read(hostname).unwrap(), b"caisson\n", "{name}");
        } else {
            match result {
                Err(ImageError::DigestMismatch {
                    what,
                    expected,
                    actual,
                }) => {
                    assert!(what.contains("layer under test"), "{name}: {what}");
                    assert_eq!(expected, wrong.to_string(), "{name}");
                    assert_eq!(actual, right.to_string(), "{name}");
                }
                Err(e) => panic!("{name}: expected a digest mismatch, got {e}"),
                Ok(_) => panic!("{name}: a layer with the wrong diff id was accepted"),
            }
            assert!(store.list().unwrap().is_empty(), "{name}");
        }
        assert!(
            names(&tmp.path().join("layers"))
                .iter()
                .all(|n| !n.starts_with(".tmp-")),
            "{name}: temp dir left in the layers root"
        );
    }
}

#[test]
fn unpack_stats_count_entries_and_bytes() {
    let layer = LayerBuilder::new()
        .dir("d", 0o755)
        .file("d/a", &[7u8; 1000], 0o644)
        .file("d/b", b"12345", 0o644)
        .symlink("d/c", "a")
        .build();
    require::root("unpacking sets owners");
    let tmp = tempfile::tempdir().unwrap();
    let stats = unpack_layer(&layer[..], tmp.path()).unwrap();
    assert_eq!((stats.entries, stats.file_bytes), (4, 1005));
}

/// A gzip bomb: one tar entry declared 1 TiB, its zeros as the same 1 MiB
/// gzip member over and over (MultiGzDecoder reads members in turn), so a
/// few MiB of blob unpack to as much as the reader asks for. The store cuts
/// it at its limit in bounded time and leaves no temp dir, and a layer of
/// exactly the limit still unpacks.
#[test]
fn a_gzip_bomb_is_cut_at_the_unpacked_size_limit_and_leaves_nothing() {
    require::root("layers carry root-owned files");
    let limit = 16 * MIB;
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb").unwrap();
    header.set_size(1 << 40);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(FIXED_MTIME);
    header.set_entry_type(EntryType::Regular);
    header.set_cksum();
    let zeros = gzip(&vec![0u8; MIB as usize]);
    let mut blob = gzip(header.as_bytes());
    for _ in 0..1024 {
        blob.extend_from_slice(&zeros);
    }
    assert!(blob.len() < 8 * MIB as usize, "{} bytes", blob.len());

    let tmp = tempfile::tempdir().unwrap();
    let mut store = LayerStore::open(&tmp.path().join("layers")).unwrap();
    store.set_max_unpacked(limit);
    let started = Instant::now();
    let result = store.unpack(&blob[..], &Digest::of(b"never reached"), "layer bomb");
    let elapsed = started.elapsed();
    match result {
        Err(ImageError::LayerTooLarge { what, limit: l }) => {
            assert_eq!((what.as_str(), l), ("layer bomb", limit));
        }
        Err(e) => panic!("expected LayerTooLarge, got {e}"),
        Ok(_) => panic!("a 1 TiB layer was accepted under a {limit}-byte limit"),
    }
    assert!(
        elapsed.as_secs() < 60,
        "cut after {elapsed:?}, not at the limit"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(
        names(&tmp.path().join("layers")).is_empty(),
        "left in the layers root: {:?}",
        names(&tmp.path().join("layers"))
    );

    // The limit itself is allowed: a layer of exactly `limit` tar bytes.
    let file = vec![1u8; (limit - 3 * 512) as usize];
    let exact = LayerBuilder::new().file("f", &file, 0o644).build();
    let len = exact.len() as u64;
    store.set_max_unpacked(len);
    let unpacked = store
        .unpack(&gzip(&exact)[..], &Digest::of(&exact), "exact layer")
        .unwrap_or_else(|e| panic!("a layer of exactly the limit ({len} bytes): {e}"));
    assert_eq!(unpacked.stats.file_bytes, file.len() as u64);
    store.set_max_unpacked(len - 1);
    assert!(matches!(
        store.unpack(&gzip(&exact)[..], &Digest::of(&exact), "exact layer"),
        Err(ImageError::LayerTooLarge { .. })
    ));
}
