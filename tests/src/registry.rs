//! A real OCI registry for pull tests: Debian's `docker-registry` on
//! 127.0.0.1 (a free port; or on a [`LocalAddress`] that is not loopback),
//! its storage in a temp dir, in one of three
//! setups (plain HTTP, htpasswd auth, TLS with a CA made here with
//! `openssl`), filled with `skopeo copy` from fixture archives. Dropping it
//! kills the registry.
//!
//! Also: [`multi_platform_archive`] (a real two-platform index, both
//! manifests present), [`CuttingProxy`] (cuts connections mid-answer) and
//! [`Blackhole`] (accepts connections and never answers).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixtures::{sha256, BuiltImage, Descriptor, ImageSpec, OciArchive};

/// How the registry is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    PlainHttp,
    /// htpasswd (bcrypt) auth with one user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// HTTPS with a server certificate for 127.0.0.1 signed by a test CA.
    Tls,
}

/// A running `docker-registry`.
pub struct Registry {
    pub dir: tempfile::TempDir,
    /// The address it listens on (127.0.0.1 unless started with [`Registry::start_on`]).
    pub addr: Ipv4Addr,
    pub port: u16,
    pub setup: Setup,
    /// The CA certificate (PEM) of a [`Setup::Tls`] registry.
    pub ca_file: Option<PathBuf>,
    pub log_path: PathBuf,
    child: Option<Child>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

fn free_port_on(addr: Ipv4Addr) -> u16 {
    TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("binding {addr}:0: {e}"))
        .port()
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives:
/// bound, so nothing else can take it (unlike a [`free_port`] released
/// again), but never listening, so a connection gets a reset.
pub struct DeadPort {
    _socket: OwnedFd,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        // SAFETY: socket(2) has no memory arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: addr is a sockaddr_in of len bytes, alive for the call.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                len,
            )
        };
        assert!(
            bound == 0,
            "binding 127.0.0.1:0: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as for bind; getsockname writes at most len bytes.
        let named = unsafe {
            libc::getsockname(
                socket.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        assert!(
            named == 0,
            "getsockname: {}",
            std::io::Error::last_os_error()
        );
        DeadPort {
            _socket: socket,
            port: u16::from_be(addr.sin_port),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for DeadPort {
    fn default() -> DeadPort {
        DeadPort::new()
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Registry {
    /// Starts a registry on 127.0.0.1 and waits (with a deadline) until it answers.
    pub fn start(setup: Setup) -> Registry {
        Registry::start_on(setup, Ipv4Addr::LOCALHOST)
    }

    /// Starts a registry listening on `addr` (an address of this machine)
    /// and waits (with a deadline) until it answers.
    pub fn start_on(setup: Setup, addr: Ipv4Addr) -> Registry {
        let registry = crate::require::program("docker-registry", "docker-registry");
        crate::require::program("skopeo", "skopeo");
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in("/var/tmp")
            .expect("registry temp dir");
        let port = free_port_on(addr);
        let mut ca_file = None;
        let mut extra = String::new();
        match &setup {
            Setup::PlainHttp => {}
            Setup::Htpasswd { user, password } => {
                let htpasswd = crate::require::program("htpasswd", "apache2-utils");
                let line = run(
                    Command::new(htpasswd).args(["-Bbn", user, password]),
                    "htpasswd",
                );
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line.trim()).unwrap();
                extra.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: caisson-test\n    path: {}\n",
                    path.display()
                ));
            }
            Setup::Tls => {
                let (ca, cert, key) = make_certificates(dir.path());
                extra.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ));
                ca_file = Some(ca);
            }
        }
        let (http_extra, top_extra) = if setup == Setup::Tls {
            (extra, String::new())
        } else {
            (String::new(), extra)
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}:{port}\n{http_extra}{top_extra}",
            data = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(registry)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut r = Registry {
            dir,
            addr,
            port,
            setup,
            ca_file,
            log_path,
            child: Some(child),
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            if self.answers_v2() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not answer /v2/ on port {} within 20 s:\n{}",
            self.port,
            self.log()
        );
    }

    /// True when `/v2/` answers (any HTTP status; for TLS, a connection).
    fn answers_v2(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.addr, self.port)) else {
            return false;
        };
        if self.setup == Setup::Tls {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
    }

    /// `127.0.0.1:<port>` (`<addr>:<port>`): the registry as image
    /// references name it.
    pub fn host(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// `localhost:<port>`: the same registry by the loopback name.
    pub fn localhost(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The requests the access log shows, one line each (`"GET /v2/… HTTP/1.1"`).
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let start = l.find("\"GET ").or_else(|| l.find("\"HEAD "))?;
                let rest = &l[start + 1..];
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    }

    /// The registry's log (with its access log: one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many GET requests the access log shows for `path_part`
    /// (e.g. `/blobs/sha256:…`).
    pub fn gets(&self, path_part: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(path_part))
            .count()
    }

    /// Pushes the image `archive` holds (or, with `source_ref`, the one its
    /// index names so) to `repo:tag` with `skopeo copy --all`; `format`
    /// `Some("v2s2")` converts to Docker schema 2.
    pub fn push(&self, archive: &Path, source_ref: Option<&str>, dest: &str, format: Option<&str>) {
        let mut source = format!("oci-archive:{}", archive.display());
        if let Some(r) = source_ref {
            source.push(':');
            source.push_str(r);
        }
        let mut cmd = Command::new("skopeo");
        cmd.env("TMPDIR", self.dir.path())
            .args(["--insecure-policy", "copy", "--quiet", "--all"])
            .arg(format!(
                "--dest-tls-verify={}",
                if self.setup == Setup::Tls {
                    "true"
                } else {
                    "false"
                }
            ));
        if let Some(f) = format {
            cmd.args(["--format", f]);
        }
        if let Setup::Htpasswd { user, password } = &self.setup {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        if self.setup == Setup::Tls {
            let certs = self.dir.path().join("skopeo-certs");
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(self.ca_file.as_ref().unwrap(), certs.join("ca.crt")).unwrap();
            cmd.arg(format!("--dest-cert-dir={}", certs.display()));
        }
        cmd.arg(&source)
            .arg(format!("docker://{}/{dest}", self.host()));
        run(&mut cmd, &format!("skopeo copy {source} to {dest}"));
    }

    /// Writes `spec` as a one-image archive in the registry's dir and pushes it.
    pub fn push_image(&self, spec: &ImageSpec, dest: &str) -> BuiltImage {
        let mut archive = OciArchive::new();
        let built = archive.add_image(spec);
        let path = self
            .dir
            .path()
            .join(format!("push-{}.tar", built.manifest.hex()));
        archive.write(&path, false);
        self.push(&path, None, dest, None);
        built
    }

    /// The file the registry serves for a blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Overwrites a blob in the registry's storage with as many other bytes:
    /// the registry then serves content that does not match its digest.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let (mid, end) = (bytes.len() / 2, (bytes.len() / 2 + 64).min(bytes.len()));
        for b in &mut bytes[mid..end] {
            *b ^= 0xff;
        }
        std::fs::write(&path, bytes).unwrap();
    }

    /// Stops the registry (a later pull finds nobody listening).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An IPv4 address of this machine that is not loopback, for as long as
/// this lives: a veth pair made for it (this kernel has no `dummy`
/// interfaces), the address (in 198.18.0.0/15, the benchmarking range) on
/// one end, both ends up. Traffic to it is delivered locally and never
/// leaves the machine. Dropping it deletes the pair (and so the address);
/// the pair is owned by the guard from the moment it exists.
pub struct LocalAddress {
    pub ip: Ipv4Addr,
    link: String,
    ip_cmd: PathBuf,
}

impl LocalAddress {
    pub fn add() -> LocalAddress {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        crate::require::root("adding a network interface");
        let ip_cmd = crate::require::program("ip", "iproute2");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let link = format!("cst{pid}x{n}");
        let host_part = (pid.wrapping_mul(16).wrapping_add(n) % (1 << 17)).max(1);
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host_part);
        run(
            Command::new(&ip_cmd)
                .args(["link", "add", &link, "type", "veth", "peer", "name"])
                .arg(format!("{link}p")),
            "ip link add (veth)",
        );
        let guard = LocalAddress { ip, link, ip_cmd };
        let ip_cmd = &guard.ip_cmd;
        let dev = guard.link.clone();
        run(
            Command::new(ip_cmd).args(["addr", "add", &format!("{ip}/32"), "dev", &dev]),
            "ip addr add",
        );
        for end in [dev.clone(), format!("{dev}p")] {
            run(
                Command::new(ip_cmd).args(["link", "set", &end, "up"]),
                "ip link set up",
            );
        }
        guard
    }
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        let out = Command::new(&self.ip_cmd)
            .args(["link", "del", &self.link])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("removing test interface {}: {out:?}", self.link);
        }
    }
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it
/// (EC P-256, valid two days), made with the `openssl` CLI: the paths of
/// the CA certificate, the server certificate and its key.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = crate::require::program("openssl", "openssl");
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.crt");
    let ext = dir.join("server.ext");
    run(
        Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=caisson test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "openssl: test CA",
    );
    run(
        Command::new(&openssl)
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl: server key",
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(
        Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-out")
            .arg(&cert)
            .arg("-extfile")
            .arg(&ext),
        "openssl: server certificate",
    );
    (ca, cert, key)
}

/// An archive whose index lists an amd64 and an arm64 image, both with
/// all their blobs (so `skopeo copy --all` copies a real multi-platform
/// image), named `ref_name` in `org.opencontainers.image.ref.name`.
/// Returns the archive, the index descriptor and the two images.
pub fn multi_platform_archive(
    path: &Path,
    amd64: &ImageSpec,
    arm64: &ImageSpec,
    ref_name: &str,
) -> (Descriptor, BuiltImage, BuiltImage) {
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let mut archive = OciArchive::new();
    let mut arm = arm64.clone();
    arm.architecture = "arm64".into();
    let built_amd = archive.add_image_blobs(amd64);
    let built_arm = archive.add_image_blobs(&arm);
    let mut amd_entry = built_amd.manifest.json();
    amd_entry["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm_entry = built_arm.manifest.json();
    arm_entry["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let index =
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [arm_entry, amd_entry]});
    let index = archive.add_blob(OCI_INDEX, serde_json::to_vec(&index).unwrap());
    let mut entry = index.json();
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": ref_name});
    archive.manifests.push(entry);
    archive.write(path, false);
    assert_eq!(index.digest, sha256(&archive.blobs[index.hex()]));
    (index, built_amd, built_arm)
}

/// A TCP proxy to a local port that cuts every connection once it has
/// forwarded `limit` bytes of answers on it: a registry that goes away
/// in the middle of a download.
pub struct CuttingProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    pub fn start(upstream: u16, limit: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        std::thread::spawn(move || proxy_connection(client, upstream, limit));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CuttingProxy { port, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_connection(client: TcpStream, upstream: u16, limit: usize) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut sent = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min(limit - sent);
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if sent >= limit {
            break;
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
}

/// A port that accepts connections and never answers: a registry that hangs.
pub struct Blackhole {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Blackhole { port, stop }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How a [`HostileRegistry`] answers a manifest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// 200 and a body that never ends (JSON whitespace, chunked, as fast as
    /// the client reads).
    EndlessManifest,
    /// 302 to the same URL, forever.
    RedirectLoop,
    /// 200 and a manifest body dribbled one byte a second (each read is
    /// within any read timeout; the body never completes in useful time).
    SlowLoris,
    /// 200 with a body larger than any manifest may be, with its length
    /// declared up front.
    HugeManifest,
}

/// A registry that misbehaves on purpose (see [`Hostility`]): `/v2/`
/// answers 200, every manifest request gets the hostile answer, anything
/// else 404. Counts the manifest requests it saw; serves each connection
/// on its own thread until the client goes away or the fixture is dropped.
pub struct HostileRegistry {
    pub port: u16,
    pub manifest_requests: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HostileRegistry {
    pub fn start(how: Hostility) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopped, counted) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (stopped, counted) = (stopped.clone(), counted.clone());
                        std::thread::spawn(move || hostile_serve(conn, how, &stopped, &counted));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HostileRegistry {
            port,
            manifest_requests: requests,
            stop,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn hostile_serve(
    conn: TcpStream,
    how: Hostility,
    stop: &AtomicBool,
    requests: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{BufRead, BufReader};
    conn.set_nonblocking(false).unwrap();
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        if path == "/v2/" {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}",
            );
            continue;
        }
        if !path.contains("/manifests/") {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        match how {
            Hostility::RedirectLoop => {
                let answer =
                    format!("HTTP/1.1 302 Found\r\nLocation: {path}\r\nContent-Length: 0\r\n\r\n");
                if out.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Hostility::EndlessManifest => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
                chunk.extend(std::iter::repeat_n(b' ', 64 * 1024));
                chunk.extend_from_slice(b"\r\n");
                while !stop.load(Ordering::Relaxed) {
                    if out.write_all(&chunk).is_err() {
                        return;
                    }
                }
                return;
            }
            Hostility::HugeManifest => {
                let size: u64 = 1 << 30;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST}\r\nContent-Length: {size}\r\n\r\n"
                );
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let block = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < size && !stop.load(Ordering::Relaxed) {
                    if out.write_all(&block).is_err() {
                        return;
                    }
                    sent += block.len() as u64;
                }
                return;
            }
            Hostility::SlowLoris => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST}\r\nContent-Length: 100000\r\n\r\n"
                );
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    if out.write_all(b" ").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                return;
            }
        }
    }
}
