//! The content store: blobs are verified while written, appear only whole
//! (by rename), survive concurrent writers of the same blob, and leave nothing
//! behind when a write is rejected or abandoned.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use caisson_image::content::ContentStore;
use caisson_image::{Digest, ImageError};

fn open_store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    (dir, store)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_blob(store: &ContentStore, digest: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .open_blob(digest)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn writes_are_verified_and_invisible_until_committed() {
    let data = blob(300_000, 1);
    let right = Digest::of(&data);
    let other = Digest::of(b"other bytes");
    // (name, bytes written, expected digest, accepted)
    let cases: Vec<(&str, &[u8], Option<Digest>, bool)> = vec![
        ("no expected digest", &data, None, true),
        ("right digest", &data, Some(right.clone()), true),
        ("empty blob", b"", Some(Digest::of(b"")), true),
        ("wrong digest", &data, Some(other.clone()), false),
        ("short write", &data[..1000], Some(right.clone()), false),
    ];
    for (name, bytes, expected, accepted) in cases {
        let (dir, store) = open_store();
        let blobs = dir.path().join("blobs/sha256");
        let ingest = dir.path().join("ingest");
        let actual = Digest::of(bytes);

        let mut w = store.writer(expected.clone(), "blob under test").unwrap();
        for chunk in bytes.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
            // Nothing partial is ever visible under its name.
            assert!(!store.contains(&actual), "{name}");
            assert!(entries(&blobs).is_empty(), "{name}");
        }
        assert_eq!(w.written(), bytes.len() as u64, "{name}");
        assert_eq!(
            entries(&ingest).len(),
            1,
            "{name}: one temp file while writing"
        );

        match (w.commit(), accepted) {
            (Ok((digest, size)), true) => {
                assert_eq!(digest, actual, "{name}");
                assert_eq!(size, bytes.len() as u64, "{name}");
                assert_eq!(read_blob(&store, &digest), bytes, "{name}");
                assert_eq!(store.size(&digest).unwrap(), size, "{name}");
                assert_eq!(store.list().unwrap(), [digest], "{name}");
            }
            (
                Err(ImageError::DigestMismatch {
                    what,
                    expected: want,
                    actual: got,
                }),
                false,
            ) => {
                assert_eq!(what, "blob under test", "{name}");
                assert_eq!(want, expected.unwrap().to_string(), "{name}");
                assert_eq!(got, actual.to_string(), "{name}");
                assert!(store.list().unwrap().is_empty(), "{name}");
                assert!(entries(&blobs).is_empty(), "{name}");
            }
            (result, _) => panic!("{name}: unexpected {:?}", result.map(|(d, _)| d)),
        }
        assert!(entries(&ingest).is_empty(), "{name}: ingest must be empty");
    }
}

#[test]
fn an_abandoned_writer_leaves_nothing() {
    let (dir, store) = open_store();
    let data = blob(100_000, 2);
    let digest = Digest::of(&data);
    let mut w = store.writer(Some(digest.clone()), "abandoned").unwrap();
    w.write_all(&data[..50_000]).unwrap();
    assert_eq!(entries(&dir.path().join("ingest")).len(), 1);
    assert!(!store.contains(&digest));
    drop(w);
    assert!(entries(&dir.path().join("ingest")).is_empty());
    assert!(entries(&dir.path().join("blobs/sha256")).is_empty());
    assert!(matches!(
        store.open_blob(&digest),
        Err(ImageError::MissingBlob { .. })
    ));
}

#[test]
fn concurrent_writers_of_one_blob_all_succeed() {
    const WRITERS: usize = 8;
    let (dir, store) = open_store();
    let data = Arc::new(blob(1 << 20, 3));
    let digest = Digest::of(&data);
    // Every writer has its temp file open before any commits, and all
    // commit together.
    let opened = Arc::new(Barrier::new(WRITERS));
    let written = Arc::new(Barrier::new(WRITERS));
    let done = Arc::new(AtomicBool::new(false));

    // A reader that, while the writers run, must never see the blob partial.
    let reader = {
        let (store, data, digest) = (store.clone(), data.clone(), digest.clone());
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                if let Ok(mut f) = store.open_blob(&digest) {
                    let mut got = Vec::new();
                    f.read_to_end(&mut got).unwrap();
                    assert!(got == *data, "a reader saw a partial blob");
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, data, digest) = (store.clone(), data.clone(), digest.clone());
            let (opened, written) = (opened.clone(), written.clone());
            std::thread::spawn(move || {
                let mut w = store.writer(Some(digest), &format!("writer {i}")).unwrap();
                opened.wait();
                for chunk in data.chunks(64 * 1024) {
                    w.write_all(chunk).unwrap();
                }
                written.wait();
                w.commit()
            })
        })
        .collect();
    for (i, t) in writers.into_iter().enumerate() {
        let (d, size) = t
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("writer {i}: {e}"));
        assert_eq!((d, size), (digest.clone(), data.len() as u64));
    }
    done.store(true, Ordering::Release);
    reader.join().expect("reader");

    assert_eq!(read_blob(&store, &digest), *data);
    assert_eq!(store.list().unwrap(), [digest]);
    assert!(entries(&dir.path().join("ingest")).is_empty());
}

#[test]
fn put_and_open_blob_round_trip() {
    let (_dir, store) = open_store();
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("small", b"{\"schemaVersion\":2}".to_vec()),
        ("larger than a copy buffer", blob((1 << 20) + 1, 4)),
    ];
    let mut digests = Vec::new();
    for (name, bytes) in &payloads {
        let digest = store.put(bytes, name).unwrap();
        assert_eq!(digest, Digest::of(bytes), "{name}");
        assert!(store.contains(&digest), "{name}");
        assert_eq!(store.size(&digest).unwrap(), bytes.len() as u64, "{name}");
        assert_eq!(read_blob(&store, &digest), *bytes, "{name}");
        // Putting the same bytes again is harmless.
        assert_eq!(store.put(bytes, name).unwrap(), digest, "{name}");
        digests.push(digest);
    }
    digests.sort();
    assert_eq!(store.list().unwrap(), digests);
}

#[test]
fn delete_removes_one_blob_once() {
    let (_dir, store) = open_store();
    let a = store.put(b"a", "a").unwrap();
    let b = store.put(b"b", "b").unwrap();
    assert!(store.delete(&a).unwrap());
    assert!(!store.contains(&a));
    assert!(store.contains(&b));
    assert_eq!(store.list().unwrap(), [b]);
    for result in [store.open_blob(&a).map(|_| ()), store.size(&a).map(|_| ())] {
        match result {
            Err(e @ ImageError::MissingBlob { .. }) => {
                assert!(e.to_string().contains(&a.to_string()), "{e}")
            }
            other => panic!("expected a missing blob, got {other:?}"),
        }
    }
    assert!(!store.delete(&a).unwrap(), "a second delete finds nothing");
}

#[test]
fn staged_blobs_reach_the_store_only_when_kept_at_commit() {
    let (dir, store) = open_store();
    let ingest = dir.path().join("ingest");
    let kept = blob(10_000, 5);
    let dropped = blob(10_000, 6);
    let kept_d = Digest::of(&kept);

    let mut staging = store.staging().unwrap();
    let (d, size) = staging
        .add(&mut &kept[..], Some(kept_d.clone()), "kept")
        .unwrap();
    assert_eq!((d, size), (kept_d.clone(), kept.len() as u64));
    let dropped_d = staging.add_bytes(&dropped, "dropped").unwrap();
    let wrong = staging.add(&mut &b"liar"[..], Some(kept_d.clone()), "liar");
    assert!(
        matches!(&wrong, Err(ImageError::DigestMismatch { what, .. }) if what == "liar"),
        "{:?}",
        wrong.map(|(d, _)| d)
    );
    assert!(!staging.has(&Digest::of(b"liar")));
    assert!(staging.has(&kept_d) && staging.has(&dropped_d));
    assert!(
        store.list().unwrap().is_empty(),
        "staged blobs are not in the store"
    );

    let keep = vec![kept_d.clone()];
    assert_eq!(staging.commit(&keep).unwrap(), keep);
    assert_eq!(store.list().unwrap(), keep);
    assert_eq!(read_blob(&store, &kept_d), kept);
    assert!(entries(&ingest).is_empty(), "the staging dir is removed");

    // A staging area dropped without commit leaves nothing either; a blob
    // already in the store counts as present.
    let mut staging = store.staging().unwrap();
    staging.add_bytes(&dropped, "dropped").unwrap();
    assert!(staging.has(&kept_d));
    drop(staging);
    assert!(entries(&ingest).is_empty());
    assert_eq!(store.list().unwrap(), [kept_d]);
}
