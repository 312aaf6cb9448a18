//! The cgroup move warm-up on this host's cgroupfs (root).

use std::path::Path;

use caisson_cgroups::warm::MoveWarmer;

/// It finds this process's own `cgroup.procs` and moving the process there
/// leaves it where it was, in every hierarchy.
#[test]
fn a_warm_up_finds_our_cgroup_and_moves_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it writes a cgroup.procs file"
    );
    let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let warmer = MoveWarmer::for_this_process(Path::new("/sys/fs/cgroup"));
    let file = warmer
        .procs_file()
        .expect("this process's cgroup.procs under /sys/fs/cgroup");
    let ours = std::process::id().to_string();
    let listed = std::fs::read_to_string(file).unwrap();
    assert!(
        listed.lines().any(|pid| pid == ours),
        "{} does not list this process ({ours})",
        file.display()
    );
    warmer.warm();
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        before
    );
    let listed = std::fs::read_to_string(file).unwrap();
    assert!(listed.lines().any(|pid| pid == ours));
}
