//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`): small
//! real inputs of each kind, the hostile ones the unit tests already know
//! included. Deterministic; rerun after changing it:
//! `cargo run -p caisson-fuzz --example write_seeds`.

use std::fs;
use std::path::Path;

use caisson_tests::fixtures::{
    docker_save_archive, ImageSpec, LayerBuilder, LayerCompression, OciArchive, RawTar,
};
use k8s_cri::v1 as cri;
use prost::Message;
use serde_json::json;

fn write(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("making the corpus dir");
    fs::write(dir.join(name), bytes).expect("writing a seed");
}

fn small_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file_owned("home/user/notes", b"hello\n", 0o600, 1000, 1000)
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("etc/passwd.lnk", "etc/passwd")
        .build()
}

fn layers() {
    write("layer_tar", "ok-plain", small_layer());
    write(
        "layer_tar",
        "ok-whiteouts",
        LayerBuilder::new()
            .dir("var/cache", 0o755)
            .opaque("var/cache")
            .whiteout("etc/gone")
            .build(),
    );
    write(
        "layer_tar",
        "bad-dotdot",
        RawTar::new().file("../escape", b"x").finish(),
    );
    write(
        "layer_tar",
        "bad-absolute",
        RawTar::new().file("/tmp/escape", b"x").finish(),
    );
    write(
        "layer_tar",
        "bad-symlink_then_write",
        RawTar::new()
            .symlink("link", "../../..")
            .file("link/escape", b"x")
            .finish(),
    );
    write(
        "layer_tar",
        "bad-absolute_symlink_then_write",
        RawTar::new()
            .symlink("etc", "/etc")
            .file("etc/escape", b"x")
            .finish(),
    );
    write(
        "layer_tar",
        "bad-hardlink_out",
        RawTar::new()
            .hardlink("passwd", "../../../etc/passwd")
            .finish(),
    );
    write(
        "layer_tar",
        "bad-truncated",
        &RawTar::new().file("big", &[7u8; 4096]).finish()[..700],
    );
}

fn archives() {
    let mut gzip = ImageSpec::new(Some("docker.io/library/fuzz:gzip"), vec![small_layer()]);
    gzip.compression = LayerCompression::Gzip;
    write(
        "image_archive",
        "ok-docker_save_gzip",
        docker_save_archive(&[gzip]).0,
    );

    let mut zstd = ImageSpec::new(Some("docker.io/library/fuzz:zstd"), vec![small_layer()]);
    zstd.compression = LayerCompression::Zstd;
    let mut oci = OciArchive::new();
    oci.add_image(&zstd);
    write("image_archive", "ok-oci_zstd", oci.to_tar());

    let mut multi = OciArchive::new();
    multi.add_multi_platform_image(&ImageSpec::new(
        Some("docker.io/library/fuzz:multi"),
        vec![small_layer()],
    ));
    write("image_archive", "ok-oci_index", multi.to_tar());
}

fn references() {
    for (name, text) in [
        ("ok-short", "busybox"),
        ("ok-tagged", "docker.io/library/busybox:1.36"),
        ("ok-registry_port", "localhost:5000/team/app:v1"),
        (
            "ok-digest",
            "quay.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        (
            "ok-tag_and_digest",
            "registry.k8s.io/pause:3.9@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("ipv6", "[::1]:5000/x:y"),
        ("bad-upper", "Docker.io/Library/Busybox"),
    ] {
        write("reference", name, text);
    }
}

fn manifests() {
    let layer = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", "a".repeat(64)), "size": 10});
    let config = json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "b".repeat(64)), "size": 5});
    write(
        "manifest",
        "ok-oci_manifest",
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": [layer]}).to_string(),
    );
    write(
        "manifest",
        "ok-oci_index",
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 7, "platform": {"os": "linux", "architecture": "amd64"}}
        ]}).to_string(),
    );
    write(
        "manifest",
        "ok-docker_list",
        json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": format!("sha256:{}", "d".repeat(64)), "size": 7, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": format!("sha256:{}", "e".repeat(64)), "size": 7, "platform": {"os": "linux", "architecture": "amd64"}}
        ]}).to_string(),
    );
    write(
        "manifest",
        "bad-other_platform_only",
        json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": format!("sha256:{}", "d".repeat(64)), "size": 7, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
        ]}).to_string(),
    );
    write(
        "manifest",
        "bad-schema1",
        json!({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}).to_string(),
    );
}

fn pod_config() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "0b4a-uid".into(),
            namespace: "ok-default".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/default_web_0b4a-uid".into(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 8080,
            host_ip: "127.0.0.1".into(),
        }],
        labels: [("app".to_string(), "web".to_string())].into(),
        annotations: Default::default(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/burstable/pod0b4a".into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                run_as_user: Some(cri::Int64Value { value: 65535 }),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            sysctls: [(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            )]
            .into(),
            ..Default::default()
        }),
        windows: None,
    }
}

fn container_config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 1,
        }),
        image: Some(cri::ImageSpec {
            image: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["echo hi; sleep 3600".into()],
        working_dir: "/tmp".into(),
        envs: vec![cri::KeyValue {
            key: "MODE".into(),
            value: "fuzz".into(),
        }],
        mounts: vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/var/lib/kubelet/pods/x/volumes/data".into(),
            readonly: true,
            ..Default::default()
        }],
        log_path: "app/1.log".into(),
        tty: false,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 900,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                run_as_username: "nobody".into(),
                readonly_rootfs: true,
                no_new_privs: true,
                masked_paths: vec!["/proc/kcore".into()],
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn cri_requests() {
    let pod = cri::RunPodSandboxRequest {
        config: Some(pod_config()),
        runtime_handler: "native".into(),
    };
    write("cri_pod", "ok-pod", pod.encode_to_vec());
    let host = cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Node as i32,
                        ipc: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..pod_config()
        }),
        runtime_handler: String::new(),
    };
    write("cri_pod", "ok-host_namespaces", host.encode_to_vec());

    let container = cri::CreateContainerRequest {
        pod_sandbox_id: "f".repeat(64),
        config: Some(container_config()),
        sandbox_config: Some(pod_config()),
    };
    write("cri_container", "ok-container", container.encode_to_vec());
    let mut hostile = container_config();
    hostile.mounts[0].container_path = "../../etc".into();
    hostile.working_dir = "relative".into();
    hostile.envs.push(cri::KeyValue {
        key: "A=B".into(),
        value: "\0".into(),
    });
    write(
        "cri_container",
        "bad-hostile",
        cri::CreateContainerRequest {
            pod_sandbox_id: "x".into(),
            config: Some(hostile),
            sandbox_config: Some(pod_config()),
        }
        .encode_to_vec(),
    );
}

fn configs() {
    write(
        "caissond_config",
        "ok-default",
        caisson_shim::config::DEFAULT_CONFIG,
    );
    write(
        "caissond_config",
        "handlers",
        "root_dir = \"/var/lib/caisson\"\n[runtimes]\ndefault_handler = \"native\"\n[runtimes.handlers.native]\nbackend = \"native\"\n[runtimes.handlers.gvisor]\nbackend = \"oci\"\noptions = { runtime = \"runsc\" }\n",
    );
}

fn cni() {
    write(
        "cni_result",
        "ok-bridge_result",
        json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
               "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0}, {"address": "fd00::5/64"}]})
        .to_string(),
    );
    write(
        "cni_result",
        "ok-conflist",
        json!({"cniVersion": "1.0.0", "name": "caisson", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]})
        .to_string(),
    );
    write(
        "cni_result",
        "ok-single_plugin",
        json!({"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}).to_string(),
    );
}

fn logs() {
    write(
        "cri_log",
        "ok-lines",
        b"\x01hello\nworld\n\nno newline at end",
    );
    let mut long = vec![3u8];
    long.extend(std::iter::repeat_n(b'x', 16 * 1024));
    long.push(b'\n');
    long.extend(std::iter::repeat_n(b'y', 40_000));
    write("cri_log", "ok-long_lines", long);
    write(
        "cri_log",
        "ok-binary",
        [0u8, 0, 0xff, b'\n', b'\r', b'\n', 0x1b, b'[', b'm'],
    );
}

fn main() {
    layers();
    archives();
    references();
    manifests();
    cri_requests();
    configs();
    cni();
    logs();
}
