//! The client side of one streaming session, with the independent SPDY/3.1
//! client of `caisson_tests::spdy`: an exec of `true` over
//! `v4.channel.k8s.io`, and one forwarded connection over
//! `portforward.k8s.io` that fetches the served file with HTTP/1.0. Also
//! the same fetch over plain TCP, for reference.
//!
//! The client behaves as client-go's does: TCP_NODELAY (Go's default) and
//! no SPDY WINDOW_UPDATE frames (Kubernetes' spdystream sends none), unless
//! a forward asks for them ([`Flow::WindowUpdates`]).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use caisson_tests::spdy::{self, ExecRequest, PortForwardRequest, SpdyClient};
use tokio::net::TcpStream;

use crate::cri::Result;

/// How long one session may take before the bench gives up.
const SESSION_DEADLINE: Duration = Duration::from_secs(120);
/// The request sent on a forwarded connection.
const GET: &[u8] = b"GET /blob HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// `host:port` and path of a streaming URL. Both daemons answer absolute
/// `http://` URLs (containerd's kubelet library resolves its base URL to
/// the port it listens on); an `https://` one would need TLS, which the
/// bench does not configure.
pub fn split_url(url: &str) -> Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "streaming URL {url:?}: the bench speaks plain http to an absolute URL"
        )
        .into());
    };
    let slash = rest.find('/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(slash);
    if host.is_empty() {
        return Err(format!("streaming URL {url:?} names no host").into());
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok((host.to_string(), path.to_string()))
}

/// Connects (TCP_NODELAY, as Go's net package does) and upgrades to SPDY/3.1
/// offering `protocol` only.
async fn open(url: &str, protocol: &str) -> Result<SpdyClient<TcpStream>> {
    let (host, path) = split_url(url)?;
    let tcp = TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    tcp.set_nodelay(true)?;
    let (client, chosen) = spdy::upgrade(tcp, &path, &[protocol])
        .await
        .map_err(|e| format!("SPDY upgrade at {url}: {e}"))?;
    if chosen != protocol {
        return Err(format!("{url}: the server chose {chosen:?}, not {protocol}").into());
    }
    Ok(client)
}

/// The SPDY part of an exec round trip: connect, upgrade, the error,
/// stdout and stderr streams, then everything up to the error stream's
/// `Status`, which must say `Success`.
pub async fn exec_true(url: &str) -> Result<()> {
    let session = async {
        let mut client = open(url, "v4.channel.k8s.io").await?;
        client.auto_window_update = false;
        let request = ExecRequest {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let outcome = spdy::exec(&mut client, &request)
            .await
            .map_err(|e| format!("exec session at {url}: {e}"))?;
        let status = outcome.status();
        if status["status"] != "Success" || !outcome.stdout.is_empty() {
            return Err(format!(
                "exec of `true` at {url}: status {status}, stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&outcome.stdout),
                String::from_utf8_lossy(&outcome.stderr)
            )
            .into());
        }
        Ok(())
    };
    tokio::time::timeout(SESSION_DEADLINE, session)
        .await
        .map_err(|_| format!("exec session at {url}: no Status within {SESSION_DEADLINE:?}"))?
}

/// Whether the client grants SPDY/3.1 windows back as data arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// No WINDOW_UPDATE, as client-go's spdystream.
    None,
    /// A WINDOW_UPDATE for the stream and one for the connection after
    /// every data frame (the test client's default): a server that keeps
    /// SPDY/3.1 flow control sends at most 64 KiB ahead.
    WindowUpdates,
}

/// The times of one forwarded fetch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward {
    /// Connect, upgrade, error + data stream pair opened and answered.
    pub setup: Duration,
    /// From the GET sent to the body's last byte received.
    pub transfer: Duration,
}

/// An HTTP/1.0 response read as it comes: the head, then the body counted
/// up to its `Content-Length`.
#[derive(Debug, Default)]
struct Response {
    head: Vec<u8>,
    length: Option<u64>,
    body: u64,
}

impl Response {
    /// Takes the next bytes; `true` once the whole body is in.
    fn feed(&mut self, bytes: &[u8]) -> Result<bool> {
        if let Some(length) = self.length {
            self.body += bytes.len() as u64;
            return Ok(self.body >= length);
        }
        self.head.extend_from_slice(bytes);
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.head.len() > 64 * 1024 {
                return Err("no end of the HTTP response head in 64 KiB".into());
            }
            return Ok(false);
        };
        let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
        if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
            return Err(format!("the server answered {head:?}").into());
        }
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<u64>().ok())?
            })
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
        self.length = Some(length);
        self.body = (self.head.len() - end - 4) as u64;
        Ok(self.body >= length)
    }

    /// Checks the body is the `size` bytes the container serves.
    fn check(&self, size: u64) -> Result<()> {
        if self.length != Some(size) || self.body != size {
            return Err(format!(
                "got a body of {} bytes (Content-Length {:?}), expected {size}",
                self.body, self.length
            )
            .into());
        }
        Ok(())
    }
}

/// One forwarded connection to `port` at a `portforward.k8s.io` URL: the
/// GET, then the data stream read until the body's `size` bytes are in
/// (not until the stream's end: containerd 1.6 closes a forwarded stream
/// up to 1 s after the pod's side closed, while it waits for the client's
/// side).
pub async fn forward(url: &str, port: u16, size: u64, flow: Flow) -> Result<Forward> {
    let session = async {
        let start = Instant::now();
        let mut client = open(url, "portforward.k8s.io").await?;
        client.auto_window_update = flow == Flow::WindowUpdates;
        let pair = PortForwardRequest::open(&mut client, port, Some("0"))
            .await
            .map_err(|e| format!("opening the stream pair at {url}: {e}"))?;
        let setup = start.elapsed();
        let start = Instant::now();
        client
            .send(pair.data, GET, false)
            .await
            .map_err(|e| format!("sending the GET at {url}: {e}"))?;
        let mut response = Response::default();
        loop {
            let stream = client
                .streams
                .get_mut(&pair.data)
                .ok_or("the client lost the data stream")?;
            let data = std::mem::take(&mut stream.data);
            let (fin, reset) = (stream.fin, stream.reset);
            if response.feed(&data)? {
                break;
            }
            if fin || reset.is_some() {
                let error = client
                    .streams
                    .get(&pair.error)
                    .map(|s| String::from_utf8_lossy(&s.data).into_owned())
                    .unwrap_or_default();
                return Err(format!(
                    "the data stream ended (reset: {reset:?}) after {} body bytes; \
                     error stream: {error:?}",
                    response.body
                )
                .into());
            }
            client
                .pump()
                .await
                .map_err(|e| format!("reading the data stream at {url}: {e}"))?;
        }
        let transfer = start.elapsed();
        response.check(size)?;
        Ok(Forward { setup, transfer })
    };
    tokio::time::timeout(SESSION_DEADLINE, session)
        .await
        .map_err(|_| format!("port-forward at {url}: not done within {SESSION_DEADLINE:?}"))?
}

/// The same fetch straight from the host (the pods use the host network):
/// from the GET sent to the body's last byte.
pub fn direct(port: u16, size: u64) -> Result<Duration> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(SESSION_DEADLINE))?;
    let start = Instant::now();
    tcp.write_all(GET)?;
    let mut response = Response::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            return Err(
                format!("127.0.0.1:{port} closed after {} body bytes", response.body).into(),
            );
        }
        if response.feed(&buf[..n])? {
            break;
        }
    }
    let elapsed = start.elapsed();
    response.check(size)?;
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_absolute_http_urls_and_refuses_the_rest() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "http://127.0.0.1:41234/exec/AbC",
                Some(("127.0.0.1:41234", "/exec/AbC")),
            ),
            ("http://[::1]:80/x/y", Some(("[::1]:80", "/x/y"))),
            ("http://127.0.0.1:5", Some(("127.0.0.1:5", "/"))),
            ("https://127.0.0.1:5/exec/t", None),
            ("/exec/t", None),
            ("http:///exec/t", None),
        ];
        for (url, want) in cases {
            let got = split_url(url).ok();
            let want = want.map(|(h, p)| (h.to_string(), p.to_string()));
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn reads_a_response_body_up_to_its_length() {
        let mut r = Response::default();
        assert!(!r.feed(b"HTTP/1.0 200 OK\r\nContent-Le").unwrap());
        assert!(!r.feed(b"ngth: 6\r\n\r\nabc").unwrap());
        assert!(r.feed(b"def").unwrap());
        r.check(6).unwrap();
        assert!(r.check(7).is_err());

        let mut r = Response::default();
        assert!(r.feed(b"HTTP/1.0 404 Not Found\r\n\r\n").is_err());
        let mut r = Response::default();
        assert!(r.feed(b"HTTP/1.0 200 OK\r\n\r\n").is_err());
    }
}
