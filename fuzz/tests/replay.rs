//! Replays every fuzz target's seed corpus (`fuzz/corpus/<target>/`) and
//! every case a fuzzer found (`fuzz/regressions/<target>/`, kept once fixed)
//! as an ordinary test: CI runs these; `make fuzz` looks for new ones. A
//! case named `ok-*` must be accepted and one named `bad-*` refused.

use std::fs;
use std::path::{Path, PathBuf};

fn cases(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(name: &str) {
    let target = caisson_fuzz::target(name).expect("a known target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = cases(&root.join("corpus").join(name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name}/ has no seeds: a target must start from real inputs"
    );
    let regressions = cases(&root.join("regressions").join(name));
    for case in corpus.iter().chain(&regressions) {
        let data = fs::read(case).expect("reading a case");
        let accepted = std::panic::catch_unwind(|| (target.run)(&data))
            .unwrap_or_else(|_| panic!("{name}: {} fails", case.display()));
        let file = case.file_name().unwrap_or_default().to_string_lossy();
        if file.starts_with("ok-") {
            assert!(accepted, "{name}: {} is refused", case.display());
        } else if file.starts_with("bad-") {
            assert!(!accepted, "{name}: {} is accepted", case.display());
        }
    }
}

#[test]
fn every_target_is_replayed_here() {
    let source = include_str!("replay.rs");
    for target in caisson_fuzz::TARGETS {
        assert!(
            source.contains(&format!("replays_{}()", target.name)),
            "target {} has no replay test",
            target.name
        );
    }
}

#[test]
fn replays_layer_tar() {
    replay("layer_tar");
}

#[test]
fn replays_image_archive() {
    replay("image_archive");
}

#[test]
fn replays_reference() {
    replay("reference");
}

#[test]
fn replays_manifest() {
    replay("manifest");
}

#[test]
fn replays_cri_pod() {
    replay("cri_pod");
}

#[test]
fn replays_cri_container() {
    replay("cri_container");
}

#[test]
fn replays_caissond_config() {
    replay("caissond_config");
}

#[test]
fn replays_cni_result() {
    replay("cni_result");
}

#[test]
fn replays_cri_log() {
    replay("cri_log");
}
