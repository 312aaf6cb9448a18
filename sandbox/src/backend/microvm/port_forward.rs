//! PortForward into a microvm pod. The pod's `localhost` is the guest's, so
//! the host cannot dial it from the pod's network namespace as it does for
//! the other handlers: the sandbox's shim listens on
//! `<bundle>/portforward.sock` (0600) instead, and caissond's port-forward
//! dialer uses that socket when a pod's bundle has one.
//!
//! A client connects, sends the port (2 bytes, big endian) and reads one
//! status byte: 0, and the connection is the forwarded one; anything else,
//! and an error message follows until EOF. The agent connects to
//! `localhost:<port>` in the sandbox's network namespace (`OpenPort`) and the
//! bytes go as `PortData` frames under a stream id of the shim's, each way
//! closed on its own; the guest's connection is closed (`ClosePort`) once
//! both ways are done or the client is gone.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caisson_agent_proto::{self as proto, request};

use super::agent::AgentConn;
use super::CALL_TIMEOUT;

/// How long a write to a port-forward client may block, and how long a
/// client has to send its port.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// One forwarded connection: the client, and which ways are done.
struct Stream {
    client: UnixStream,
    host_done: bool,
    guest_done: bool,
}

/// The pod's port-forward socket and its connections.
pub struct Forwarder {
    path: PathBuf,
    conn: Arc<AgentConn>,
    sandbox_id: String,
    streams: Mutex<HashMap<u64, Stream>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Forwarder {
    /// Listens at `path` for the pod `sandbox_id` whose agent is `conn`.
    pub fn listen(
        path: &Path,
        conn: Arc<AgentConn>,
        sandbox_id: &str,
    ) -> io::Result<Arc<Forwarder>> {
        let _ = std::fs::remove_file(path);
        // A bundle's path is longer than sun_path allows.
        let listener = crate::host::attach::bind_long(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let forwarder = Arc::new(Forwarder {
            path: path.to_path_buf(),
            conn,
            sandbox_id: sandbox_id.to_string(),
            streams: Mutex::default(),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&forwarder);
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if accepting.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let forwarder = Arc::clone(&accepting);
                    let _ = std::thread::Builder::new()
                        .name("port-forward-conn".into())
                        .spawn(move || forwarder.serve(client));
                }
            })?;
        Ok(forwarder)
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One client: its port, the guest's connection, then its bytes to the
    /// guest until it has no more.
    fn serve(&self, mut client: UnixStream) {
        let _ = client.set_read_timeout(Some(STALL_LIMIT));
        let _ = client.set_write_timeout(Some(STALL_LIMIT));
        let mut port = [0u8; 2];
        if client.read_exact(&mut port).is_err() {
            return;
        }
        let port = u16::from_be_bytes(port);
        let _ = client.set_read_timeout(None);
        let stream_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(writer) = client.try_clone() else {
            return;
        };
        self.streams().insert(
            stream_id,
            Stream {
                client: writer,
                host_done: false,
                guest_done: false,
            },
        );
        let opened = self.conn.call(
            request::Op::OpenPort(proto::OpenPort {
                sandbox_id: self.sandbox_id.clone(),
                port: port.into(),
                stream_id,
            }),
            CALL_TIMEOUT,
        );
        if let Err(e) = opened {
            self.streams().remove(&stream_id);
            let _ = client.write_all(&[1]);
            let _ = client.write_all(e.to_string().as_bytes());
            return;
        }
        if client.write_all(&[0]).is_err() {
            return self.close(stream_id);
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let data = proto::PortData {
                        stream_id,
                        data: buf[..n].to_vec(),
                        eof: false,
                    };
                    if self.conn.send_oneway(request::Op::PortData(data)).is_err() {
                        return self.close(stream_id);
                    }
                }
                // The client is gone: so is the guest's connection.
                Err(_) => return self.close(stream_id),
            }
        }
        let _ = self
            .conn
            .send_oneway(request::Op::PortData(proto::PortData {
                stream_id,
                data: Vec::new(),
                eof: true,
            }));
        self.finish(stream_id, |s| s.host_done = true);
    }

    /// Bytes (or their end) from the guest's connection.
    pub fn on_data(&self, data: proto::PortData) {
        let failed = {
            let mut streams = self.streams();
            let Some(stream) = streams.get_mut(&data.stream_id) else {
                return;
            };
            !data.data.is_empty() && stream.client.write_all(&data.data).is_err()
        };
        if failed {
            return self.close(data.stream_id);
        }
        if data.eof {
            self.finish(data.stream_id, |s| {
                let _ = s.client.shutdown(Shutdown::Write);
                s.guest_done = true;
            });
        }
    }

    /// Marks a way done; once both are, the guest closes its connection.
    fn finish(&self, stream_id: u64, mark: impl FnOnce(&mut Stream)) {
        let done = {
            let mut streams = self.streams();
            let Some(stream) = streams.get_mut(&stream_id) else {
                return;
            };
            mark(stream);
            stream.host_done && stream.guest_done
        };
        if done {
            self.close(stream_id);
        }
    }

    /// Ends one connection on both sides.
    fn close(&self, stream_id: u64) {
        if let Some(stream) = self.streams().remove(&stream_id) {
            let _ = stream.client.shutdown(Shutdown::Both);
        }
        let _ = self
            .conn
            .send_oneway(request::Op::ClosePort(proto::ClosePort { stream_id }));
    }

    /// The VM is gone: no more connections, the open ones end.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes the accepting thread, which then sees `stopping`.
        if let Ok(short) = crate::host::attach::ShortPath::of(&self.path) {
            let _ = UnixStream::connect(&short.path);
        }
        let _ = std::fs::remove_file(&self.path);
        for (_, stream) in self.streams().drain() {
            let _ = stream.client.shutdown(Shutdown::Both);
        }
    }
}
