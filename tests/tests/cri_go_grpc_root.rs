//! Go's gRPC (Debian's golang-google-grpc-dev 1.33, built with Debian's Go)
//! drives a real caissond the way crictl 1.26 and kubelet do: the socket
//! path as the dial target through a context dialer, so the path goes out
//! as the HTTP/2 `:authority`, all calls on one connection. Before the
//! authority fix every one of these calls was reset with PROTOCOL_ERROR.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use caisson_tests::daemon::{container_config, Caissond};
use caisson_tests::require;
use k8s_cri::v1 as cri;
use prost::Message;

/// Where the relay's Go build cache lives (outside the clone).
const GO_CACHE: &str = "/var/cache/caisson-test/go-build";
const GOPATH: &str = "/usr/share/gocode";

fn build_relay(out: &Path) -> PathBuf {
    let go = require::program("go", "golang-go");
    assert!(
        Path::new(GOPATH)
            .join("src/google.golang.org/grpc/clientconn.go")
            .is_file(),
        "Go's gRPC is required: install Debian's golang-google-grpc-dev package (`make deps` does)"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/cri-relay/main.go");
    let bin = out.join("cri-relay");
    let built = Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", GO_CACHE)
        .env("GOFLAGS", "")
        .output()
        .expect("running go build");
    assert!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    bin
}

struct Relay {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Relay {
    fn start(bin: &Path, socket: &Path) -> Relay {
        let mut child = Command::new(bin)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting cri-relay");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Relay {
            child,
            stdin,
            stdout,
        }
    }

    /// One unary call: `Ok(response)` or `Err((code, message))`.
    fn call<Req: Message, Rsp: Message + Default>(
        &mut self,
        method: &str,
        req: &Req,
    ) -> Result<Rsp, (i32, String)> {
        writeln!(
            self.stdin,
            "/runtime.v1.RuntimeService/{method} {}",
            hex::encode(req.encode_to_vec())
        )
        .unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim_end_matches('\n');
        if let Some(hex) = line.strip_prefix("OK ") {
            return Ok(Rsp::decode(&hex::decode(hex).unwrap()[..]).expect("a response"));
        }
        let rest = line
            .strip_prefix("ERR ")
            .unwrap_or_else(|| panic!("{method}: relay said {line:?}"));
        let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
        Err((code.parse().unwrap(), message.to_string()))
    }

    fn ok<Req: Message, Rsp: Message + Default>(
        &mut self,
        d: &Caissond,
        method: &str,
        req: &Req,
    ) -> Rsp {
        self.call(method, req).unwrap_or_else(|(code, message)| {
            panic!(
                "{method} through Go's gRPC: code {code}: {message}\n{}",
                d.log_tail()
            )
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn go_grpc_dialing_the_socket_path_runs_a_pod_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_relay(tmp.path());
    let d = Caissond::start("");
    d.import_busybox();
    d.import_pause_image();
    let mut go = Relay::start(&bin, &d.socket);

    let version: cri::VersionResponse = go.ok(
        &d,
        "Version",
        &cri::VersionRequest {
            version: "v1".into(),
        },
    );
    assert_eq!(version.runtime_name, "caisson");
    assert_eq!(version.runtime_api_version, "v1");

    let config = d.pod_config("go-grpc");
    let pod = go
        .ok::<_, cri::RunPodSandboxResponse>(
            &d,
            "RunPodSandbox",
            &cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            },
        )
        .pod_sandbox_id;
    let container = go
        .ok::<_, cri::CreateContainerResponse>(
            &d,
            "CreateContainer",
            &cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("sleeper", &["sleep", "600"])),
                sandbox_config: Some(config),
            },
        )
        .container_id;
    go.ok::<_, cri::StartContainerResponse>(
        &d,
        "StartContainer",
        &cri::StartContainerRequest {
            container_id: container.clone(),
        },
    );
    let exec: cri::ExecSyncResponse = go.ok(
        &d,
        "ExecSync",
        &cri::ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["hostname".into()],
            timeout: 20,
        },
    );
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "go-grpc\n");
    assert_eq!(exec.exit_code, 0);
    let status: cri::ContainerStatusResponse = go.ok(
        &d,
        "ContainerStatus",
        &cri::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        },
    );
    assert_eq!(
        status.status.unwrap().state,
        cri::ContainerState::ContainerRunning as i32
    );
    // A status error reaches Go's gRPC as a status, not a reset.
    let missing = go.call::<_, cri::ContainerStatusResponse>(
        "ContainerStatus",
        &cri::ContainerStatusRequest {
            container_id: "0".repeat(64),
            verbose: false,
        },
    );
    assert_eq!(missing.unwrap_err().0, tonic::Code::NotFound as i32);

    go.ok::<_, cri::StopPodSandboxResponse>(
        &d,
        "StopPodSandbox",
        &cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        },
    );
    go.ok::<_, cri::RemovePodSandboxResponse>(
        &d,
        "RemovePodSandbox",
        &cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        },
    );
    let left: cri::ListPodSandboxResponse =
        go.ok(&d, "ListPodSandbox", &cri::ListPodSandboxRequest::default());
    assert!(left.items.iter().all(|p| p.id != pod));
    assert!(
        !d.pods_dir().join(&pod).exists(),
        "the pod's run dir is gone"
    );

    // What Go's gRPC sent as the authority: the socket path, once per
    // connection in the log.
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    let socket = d.socket.display().to_string();
    let replaced: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving it as localhost"))
        .collect();
    assert_eq!(replaced.len(), 1, "{replaced:#?}");
    assert!(replaced[0].contains(&socket), "{}", replaced[0]);
}
