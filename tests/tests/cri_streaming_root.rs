//! The streaming server's CRI side: Exec, Attach and PortForward check
//! their requests and answer single-use URLs on caissond's streaming
//! server, which upgrade to SPDY/3.1 or WebSocket once, and not after they
//! expire.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use caisson_tests::daemon::{container_config, Caissond};
use k8s_cri::v1 as cri;

/// `http://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let slash = rest.find('/').unwrap();
    (rest[..slash].to_string(), rest[slash..].to_string())
}

/// Sends an upgrade request and returns the status code and the response
/// header lines.
fn upgrade(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<String>) {
    let (host, path) = split_url(url);
    let mut tcp = TcpStream::connect(&host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(tcp);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status:?}"));
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    (code, lines)
}

const SPDY_V4: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "SPDY/3.1"),
    ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
];

fn running_container(d: &Caissond, name: &str) -> (String, String) {
    let config = d.pod_config(name);
    let pod = d.run_pod(&config);
    let id = d.create_started_container(&pod, &config, container_config("c", &["sleep", "600"]));
    (pod, id)
}

fn exec_request(id: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

#[test]
fn bad_stream_requests_are_refused_naming_the_field() {
    let d = Caissond::start("");
    d.import_busybox();
    d.import_pause_image();
    let (pod, id) = running_container(&d, "stream-checks");
    let mut rt = d.runtime();
    let code = |r: Result<tonic::Response<cri::ExecResponse>, tonic::Status>| {
        let e = r.expect_err("refused");
        (e.code(), e.message().to_string())
    };
    let cases: Vec<(cri::ExecRequest, tonic::Code, &str)> = vec![
        (exec_request(&id, &[]), tonic::Code::InvalidArgument, "cmd"),
        (
            cri::ExecRequest {
                stdout: false,
                stderr: false,
                ..exec_request(&id, &["true"])
            },
            tonic::Code::InvalidArgument,
            "stdin",
        ),
        (
            cri::ExecRequest {
                tty: true,
                ..exec_request(&id, &["true"])
            },
            tonic::Code::InvalidArgument,
            "stderr",
        ),
        (
            exec_request("", &["true"]),
            tonic::Code::InvalidArgument,
            "container_id",
        ),
        (
            exec_request(&"f".repeat(64), &["true"]),
            tonic::Code::NotFound,
            "container",
        ),
    ];
    for (req, want, field) in cases {
        let (got, message) = code(d.rt.block_on(rt.exec(req)));
        assert_eq!(got, want, "{message}");
        assert!(message.contains(field), "{message:?} should name {field}");
    }
    // Attach with stdin to a container made without stdin.
    let err =
        d.rt.block_on(rt.attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        }))
        .expect_err("no stdin");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("stdin"), "{}", err.message());
    // Ports out of range.
    for port in [0, 65_536, -1] {
        let err =
            d.rt.block_on(rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![80, port],
            }))
            .expect_err("a bad port");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("port[1]"), "{}", err.message());
    }
    // A container that stopped cannot be exec'd into.
    d.ok(
        "StopContainer",
        d.rt.block_on(rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })),
    );
    let (got, message) = code(d.rt.block_on(rt.exec(exec_request(&id, &["true"]))));
    assert_eq!(got, tonic::Code::FailedPrecondition, "{message}");
}

#[test]
fn urls_are_single_use_loopback_and_expire() {
    let d = Caissond::start("streaming.token_ttl_secs = 1");
    d.import_busybox();
    d.import_pause_image();
    let (pod, id) = running_container(&d, "stream-urls");
    let mut rt = d.runtime();
    let url = d
        .ok("Exec", d.rt.block_on(rt.exec(exec_request(&id, &["true"]))))
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/exec/"), "{url}");
    // A protocol nobody speaks: refused, naming what the server accepts.
    // The refusal spends the token, as kubelet's server does.
    let other = d
        .ok("Exec", d.rt.block_on(rt.exec(exec_request(&id, &["true"]))))
        .url;
    let (code, _) = upgrade(
        &other,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
        ],
    );
    assert_eq!(code, 403);
    let (code, headers) = upgrade(&url, SPDY_V4);
    assert_eq!(code, 101, "{headers:?}");
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("x-stream-protocol-version: v4.channel.k8s.io")),
        "{headers:?}"
    );
    let (code, _) = upgrade(&url, SPDY_V4);
    assert_eq!(code, 404, "a URL is used once");
    // Attach and port-forward URLs go to their own paths.
    let attach = d
        .ok(
            "Attach",
            d.rt.block_on(rt.attach(cri::AttachRequest {
                container_id: id.clone(),
                stdout: true,
                stderr: true,
                ..Default::default()
            })),
        )
        .url;
    assert!(attach.contains("/attach/"), "{attach}");
    let forward = d
        .ok(
            "PortForward",
            d.rt.block_on(rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![8080],
            })),
        )
        .url;
    assert!(forward.contains("/portforward/"), "{forward}");
    // An exec URL is not an attach URL.
    let (code, _) = upgrade(&attach.replace("/attach/", "/exec/"), SPDY_V4);
    assert_eq!(code, 404);
    // Unused for longer than token_ttl_secs: gone.
    let late = d
        .ok("Exec", d.rt.block_on(rt.exec(exec_request(&id, &["true"]))))
        .url;
    std::thread::sleep(Duration::from_millis(1500));
    let (code, _) = upgrade(&late, SPDY_V4);
    assert_eq!(code, 404, "an expired URL");
}

#[test]
fn with_a_certificate_the_urls_are_https_and_sessions_run_over_tls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = caisson_tests::registry::make_certificates(certs.path());
    let d = Caissond::start(&format!(
        "streaming.tls_cert_file = \"{}\"\nstreaming.tls_key_file = \"{}\"",
        cert.display(),
        key.display()
    ));
    d.import_busybox();
    d.import_pause_image();
    let (_pod, id) = running_container(&d, "stream-tls");
    let mut rt = d.runtime();
    let url = d
        .ok(
            "Exec",
            d.rt.block_on(rt.exec(exec_request(&id, &["echo", "over tls"]))),
        )
        .url;
    let rest = url.strip_prefix("https://").expect("an https URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let got = d.rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .expect("a TLS handshake with the configured certificate");
        let (mut client, protocol) =
            caisson_tests::spdy::upgrade_over(tls, host, path, &["v4.channel.k8s.io"])
                .await
                .unwrap();
        assert_eq!(protocol, "v4.channel.k8s.io");
        caisson_tests::spdy::exec(
            &mut client,
            &caisson_tests::spdy::ExecRequest {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    });
    assert_eq!(String::from_utf8_lossy(&got.stdout), "over tls\n");
    assert_eq!(got.status()["status"], "Success");
    // Plain HTTP is not answered on that port.
    let plain = url.replacen("https://", "http://", 1);
    let (host, path) = split_url(&plain);
    let mut tcp = TcpStream::connect(&host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut tcp, &mut answer);
    assert!(!answer.starts_with("HTTP/1.1 1"), "{answer:?}");
}
