//! PortForward in the guest: a connection to `localhost:<port>` made from
//! the sandbox's network namespace, its bytes carried as `PortData` frames
//! (the host's `stream_id` names it). Reads go out as events from a thread
//! per connection; writes are queued to a writer thread, so a slow
//! application never blocks the request loop that delivers them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caisson_agent_proto::{code, event, OpenPort, PortData};

use crate::agent::{fail, Outcome};
use crate::channel::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the writer thread is handed.
enum Outgoing {
    Data(Vec<u8>),
    Eof,
}

struct Connection {
    socket: TcpStream,
    writes: mpsc::Sender<Outgoing>,
}

/// The open forwarded connections.
#[derive(Default)]
pub struct Ports {
    open: Mutex<HashMap<u64, Connection>>,
}

impl Ports {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects to the port in the namespace of `sandbox_pid` and starts
    /// carrying its bytes.
    pub fn connect(
        &self,
        channel: &Arc<Channel>,
        request: &OpenPort,
        sandbox_pid: i32,
    ) -> Outcome<()> {
        let port = u16::try_from(request.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| fail(code::INVALID_ARGUMENT, format!("port: {}", request.port)))?;
        if self.open().contains_key(&request.stream_id) {
            return Err(fail(
                code::ALREADY_EXISTS,
                format!("stream_id {} is in use", request.stream_id),
            ));
        }
        let socket = connect_in(sandbox_pid, port)?;
        let reader = socket
            .try_clone()
            .map_err(|e| fail(code::INTERNAL, e.to_string()))?;
        let mut writer = socket
            .try_clone()
            .map_err(|e| fail(code::INTERNAL, e.to_string()))?;
        let (writes, queue) = mpsc::channel();
        let stream_id = request.stream_id;
        self.open().insert(stream_id, Connection { socket, writes });
        std::thread::spawn(move || {
            for write in queue {
                match write {
                    Outgoing::Data(data) => {
                        if writer.write_all(&data).is_err() {
                            break;
                        }
                    }
                    Outgoing::Eof => {
                        let _ = writer.shutdown(Shutdown::Write);
                    }
                }
            }
        });
        let channel = Arc::clone(channel);
        std::thread::spawn(move || pump_out(reader, &channel, stream_id));
        Ok(())
    }

    /// Bytes (or the end of them) from the host.
    pub fn data(&self, data: PortData) {
        if let Some(c) = self.open().get(&data.stream_id) {
            if !data.data.is_empty() {
                let _ = c.writes.send(Outgoing::Data(data.data));
            }
            if data.eof {
                let _ = c.writes.send(Outgoing::Eof);
            }
        }
    }

    /// The host is done: the connection closes (its threads then end).
    pub fn close(&self, stream_id: u64) {
        if let Some(c) = self.open().remove(&stream_id) {
            let _ = c.socket.shutdown(Shutdown::Both);
        }
    }
}

/// The application's bytes, as events, then one `eof`.
fn pump_out(mut reader: TcpStream, channel: &Channel, stream_id: u64) {
    let mut buf = vec![0u8; 32 * 1024];
    let event = |data: Vec<u8>, eof: bool| {
        event::Kind::PortData(PortData {
            stream_id,
            data,
            eof,
        })
    };
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => channel.event(event(buf[..n].to_vec(), false)),
        }
    }
    channel.event(event(Vec::new(), true));
}

/// `localhost:<port>` (IPv4, then IPv6) from a thread in the namespace of
/// `pid`; the socket stays in that namespace.
fn connect_in(pid: i32, port: u16) -> Outcome<TcpStream> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path).map_err(|e| fail(code::INTERNAL, format!("{path}: {e}")))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail(code::INTERNAL, format!("entering {path}: {e}")))?;
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), CONNECT_TIMEOUT)
            .or_else(|e4| {
                TcpStream::connect_timeout(&(Ipv6Addr::LOCALHOST, port).into(), CONNECT_TIMEOUT)
                    .map_err(|_| e4)
            })
            .map_err(|e| {
                fail(
                    code::FAILED_PRECONDITION,
                    format!("connecting to localhost:{port} in the pod: {e}"),
                )
            })
    })
    .join()
    .map_err(|_| fail(code::INTERNAL, "the port-forward thread panicked"))?
}
