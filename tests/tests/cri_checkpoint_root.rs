//! CheckpointContainer through caissond with real CRIU (`make criu`'s
//! build): the archive has CRI-O's layout, the container keeps running, and
//! a container created from the archive (as CRI-O restores: the archive as
//! the image) continues the checkpointed counter in a new pod, in that
//! pod's cgroup and network namespace, with the file the original wrote.
//! Bad input gets the status CRI-O would give, and leaves nothing behind.
//! Needs root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use caisson_tests::daemon::{container_config, ns_inode, wait_until, with_pid_mode, Caissond};
use k8s_cri::v1 as cri;

/// Where `make criu` builds CRIU 4.1.1 (Debian bookworm's 3.17 cannot dump
/// on this kernel); the same default caissond uses.
const CRIU: &str = "/var/cache/caisson-test/criu-4.1.1/criu";

const COUNTER: &str =
    "echo written > /written; i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done";

fn require_criu() {
    assert!(
        Path::new(CRIU).is_file(),
        "CRIU is missing at {CRIU}: run `make criu` (builds Debian's criu 4.1.1 source)"
    );
}

/// The counter values in a CRI log file, in order.
fn counter_values(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3)?.trim().parse().ok())
        .collect()
}

fn checkpoint(
    d: &Caissond,
    id: &str,
    location: &str,
    timeout: i64,
) -> Result<cri::CheckpointContainerResponse, tonic::Status> {
    let mut rt = d.runtime();
    d.rt.block_on(rt.checkpoint_container(cri::CheckpointContainerRequest {
        container_id: id.into(),
        location: location.into(),
        timeout,
    }))
    .map(|r| r.into_inner())
}

fn archive_entries(path: &Path) -> BTreeSet<String> {
    let out = Command::new("tar").arg("-tf").arg(path).output().unwrap();
    assert!(out.status.success(), "tar -tf {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect()
}

fn archive_file(path: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(path)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} in {}", path.display());
    out.stdout
}

fn counter_container(name: &str) -> cri::ContainerConfig {
    let mut c = container_config(name, &["sh", "-c", COUNTER]);
    c.log_path = format!("{name}/0.log");
    c
}

/// Nothing but `keep` in `dir` (no temp files or partial archives).
fn only(dir: &Path, keep: &[&str]) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

#[test]
fn a_checkpointed_counter_continues_in_a_new_pod() {
    counter_continues(cri::NamespaceMode::Pod);
}

/// kubelet's default: each container has a PID namespace of its own.
#[test]
fn a_counter_with_its_own_pid_namespace_continues_in_a_new_pod() {
    counter_continues(cri::NamespaceMode::Container);
}

fn counter_continues(pid_mode: cri::NamespaceMode) {
    require_criu();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("ckpt");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(
        &pod,
        &config,
        with_pid_mode(counter_container("counter"), pid_mode),
    );
    let log = Path::new(&config.log_directory).join("counter/0.log");
    wait_until("the counter to reach 5", Duration::from_secs(20), || {
        counter_values(&log)
            .last()
            .is_some_and(|v| *v >= 5)
            .then_some(())
    });
    let before = *counter_values(&log).last().unwrap();

    let out = d.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let archive = out.join("counter.tar");
    d.ok(
        "CheckpointContainer",
        checkpoint(&d, &c, archive.to_str().unwrap(), 30).map(tonic::Response::new),
    );
    only(&out, &["counter.tar"]);

    let entries = archive_entries(&archive);
    for name in [
        "checkpoint",
        "checkpoint/inventory.img",
        "checkpoint/pstree.img",
        "checkpoint/descriptors.json",
        "config.dump",
        "spec.dump",
        "rootfs-diff.tar",
        "dump.log",
    ] {
        assert!(entries.contains(name), "{name} not in {entries:?}");
    }
    let config_dump: serde_json::Value =
        serde_json::from_slice(&archive_file(&archive, "config.dump")).unwrap();
    assert_eq!(config_dump["id"], c.as_str());
    assert_eq!(config_dump["name"], "counter");
    assert_eq!(config_dump["rootfsImageName"], "busybox");
    let spec_dump: serde_json::Value =
        serde_json::from_slice(&archive_file(&archive, "spec.dump")).unwrap();
    assert_eq!(spec_dump["process"]["args"][2], COUNTER);
    let diff = archive_file(&archive, "rootfs-diff.tar");
    let mut diff_tar = tar::Archive::new(diff.as_slice());
    let written = diff_tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap() == Path::new("written"))
        .map(|mut e| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            s
        });
    assert_eq!(written.as_deref(), Some("written\n"), "rootfs-diff.tar");

    // The original keeps running, and its output keeps flowing.
    assert_eq!(
        d.container_status(&c).state,
        cri::ContainerState::ContainerRunning as i32
    );
    let at_checkpoint = *counter_values(&log).last().unwrap();
    wait_until(
        "the original to keep counting",
        Duration::from_secs(10),
        || {
            counter_values(&log)
                .last()
                .is_some_and(|v| *v >= at_checkpoint + 3)
                .then_some(())
        },
    );

    // Restore into a new pod: the archive as the image.
    let config2 = d.pod_config("restored");
    let pod2 = d.run_pod(&config2);
    let mut restored = with_pid_mode(counter_container("counter"), pid_mode);
    restored.image = Some(cri::ImageSpec {
        image: archive.display().to_string(),
        ..Default::default()
    });
    let r = d.create_started_container(&pod2, &config2, restored);
    let log2 = Path::new(&config2.log_directory).join("counter/0.log");
    let values = wait_until(
        "the restored counter to log",
        Duration::from_secs(20),
        || {
            let v = counter_values(&log2);
            (v.len() >= 3).then_some(v)
        },
    );
    assert!(
        values[0] >= before && values[0] != 0,
        "the restored counter starts at {} (last logged before the checkpoint: {before}): {values:?}",
        values[0]
    );
    assert!(
        values.windows(2).all(|w| w[1] == w[0] + 1),
        "the restored counter counts on: {values:?}"
    );
    assert_eq!(
        d.exec(&r, &["cat", "/written"]),
        "written\n",
        "the file the original wrote"
    );

    // The restored process is the new container's: its cgroup, the new
    // pod's network namespace, the shim's child.
    let pid = d.container_pid(&r);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup
            .lines()
            .any(|l| l.contains("memory") && l.ends_with(&r)),
        "restored process {pid} is not in {r}'s cgroup:\n{cgroup}"
    );
    let (pause1, pause2) = (d.pod_pid(&pod), d.pod_pid(&pod2));
    assert_eq!(ns_inode(pid, "net"), ns_inode(pause2, "net"));
    assert_ne!(ns_inode(pid, "net"), ns_inode(pause1, "net"));
    let shims = d.shim_pids();
    let ppid: u32 = caisson_tests::daemon::proc_status_field(pid, "PPid")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        shims.contains(&ppid),
        "parent {ppid} is not a shim ({shims:?})"
    );

    // Its exit is reported like any container's.
    d.stop_container(&r, 2);
    d.wait_exited(&r, Duration::from_secs(20));
    d.remove_pod(&pod2);
    d.remove_pod(&pod);
}

#[test]
fn bad_checkpoint_requests_are_refused_and_leave_nothing() {
    require_criu();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("bad");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, counter_container("counter"));
    let out = d.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let location = out.join("c.tar").display().to_string();
    let missing_dir = out.join("no/such/dir/c.tar").display().to_string();
    for (what, id, loc, code, names) in [
        (
            "unknown id",
            "0123456789abcdef",
            location.as_str(),
            tonic::Code::NotFound,
            "0123456789abcdef",
        ),
        (
            "empty id",
            "",
            location.as_str(),
            tonic::Code::InvalidArgument,
            "container_id",
        ),
        (
            "empty location",
            c.as_str(),
            "",
            tonic::Code::InvalidArgument,
            "location",
        ),
        (
            "relative location",
            c.as_str(),
            "c.tar",
            tonic::Code::InvalidArgument,
            "location",
        ),
        (
            "missing parent",
            c.as_str(),
            missing_dir.as_str(),
            tonic::Code::InvalidArgument,
            "location",
        ),
        (
            "a directory",
            c.as_str(),
            out.to_str().unwrap(),
            tonic::Code::InvalidArgument,
            "location",
        ),
    ] {
        let err = checkpoint(&d, id, loc, 10).expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(err.message().contains(names), "{what}: {}", err.message());
    }
    only(&out, &[]);

    // Not an archive, or an archive without a checkpoint, as the image.
    let text = out.join("notes.txt");
    std::fs::write(&text, "not a checkpoint\n").unwrap();
    let plain_tar = out.join("plain.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&plain_tar).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    tar.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
    tar.finish().unwrap();
    drop(tar);
    for image in [&text, &plain_tar] {
        let mut bad = counter_container("from-file");
        bad.image = Some(cri::ImageSpec {
            image: image.display().to_string(),
            ..Default::default()
        });
        let mut rt = d.runtime();
        let err =
            d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(bad),
                sandbox_config: Some(config.clone()),
            }))
            .expect_err("CreateContainer from a file that is no checkpoint");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("config.image.image")
                && err.message().contains("not a checkpoint archive"),
            "{}",
            err.message()
        );
    }
    std::fs::remove_file(&text).unwrap();
    std::fs::remove_file(&plain_tar).unwrap();

    // A stopped container.
    d.stop_container(&c, 2);
    let err = checkpoint(&d, &c, &location, 10).expect_err("stopped");
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    only(&out, &[]);

    // A handler that cannot checkpoint names itself.
    let hconfig = d.pod_config("hardened");
    let hpod = d.run_pod_with_handler(&hconfig, "hardened");
    let h = d.create_started_container(&hpod, &hconfig, counter_container("counter"));
    let err = checkpoint(&d, &h, &location, 10).expect_err("hardened");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{}", err.message());
    assert!(err.message().contains("hardened"), "{}", err.message());
    only(&out, &[]);
    d.remove_pod(&hpod);

    // Nor can a pod in a user namespace of its own (hostUsers: false).
    let userns = cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![cri::IdMapping {
                host_id: 3_200_000,
                container_id: 0,
                length: 65_536,
            }],
            gids: vec![cri::IdMapping {
                host_id: 3_200_000,
                container_id: 0,
                length: 65_536,
            }],
        }),
    };
    let mut uconfig = d.pod_config("userns");
    uconfig.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(userns.clone()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let upod = d.run_pod(&uconfig);
    let mut ucontainer = counter_container("counter");
    ucontainer.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(userns),
            ..Default::default()
        }),
        ..Default::default()
    });
    let u = d.create_started_container(&upod, &uconfig, ucontainer);
    let err = checkpoint(&d, &u, &location, 10).expect_err("userns");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{}", err.message());
    assert!(err.message().contains("hostUsers"), "{}", err.message());
    only(&out, &[]);
    d.remove_pod(&upod);
    d.remove_pod(&pod);
    let _: PathBuf = out;
}
