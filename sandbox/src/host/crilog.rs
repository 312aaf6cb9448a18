//! Container logs in the CRI format kubelet reads:
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\n`, one record
//! per line, lines longer than 16 KiB split into `P` (partial) records
//! ending with an `F` (full) one. The shim writes them itself, so container
//! output never flows through `caissond`.
//!
//! A stream named `crilog://<absolute path>` gets a pipe: the process writes
//! to it, a thread here turns it into records. stdout and stderr of a task
//! share one [`CriLog`] (one file, one lock, records never interleave
//! mid-line). [`CriLog::reopen`] starts a new file at the same path after
//! kubelet rotated the old one (ReopenContainerLog).

use std::fs::File;

use super::attach::Tee;
use super::stdio::open_append;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest record content; longer lines become several records.
pub const MAX_RECORD: usize = 16 * 1024;

/// One CRI log file, and the clients attached to the output it records.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
    tee: Arc<Tee>,
}

impl CriLog {
    pub fn open(path: &Path) -> io::Result<Arc<CriLog>> {
        let file = File::from(open_append("log", path)?);
        Ok(Arc::new(CriLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            tee: Arc::default(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The attached clients ([`super::attach`]), who get the raw output
    /// as it is read.
    pub fn tee(&self) -> &Arc<Tee> {
        &self.tee
    }

    /// Starts writing to a new file at the same path.
    pub fn reopen(&self) -> io::Result<()> {
        let file = File::from(open_append("log", &self.path)?);
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
        Ok(())
    }

    fn write_record(&self, stream: &str, partial: bool, content: &[u8]) {
        let record = format_record(SystemTime::now(), stream, partial, content);
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&record) {
            tracing::warn!(path = %self.path.display(), error = %e, "writing a container log record");
        }
    }
}

/// `2026-11-22T02:57:11.123456789Z`: RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// One record: timestamp, stream, tag, content, newline.
pub fn format_record(t: SystemTime, stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{} {stream} {} ",
        rfc3339_nano(t),
        if partial { 'P' } else { 'F' }
    )
    .into_bytes();
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Splits a byte stream into records: complete lines are `F`; a line that
/// reaches [`MAX_RECORD`] without a newline is emitted as `P` chunks.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// The last record emitted was `P`: the line it began is still open.
    open_line: bool,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit(partial, content)` for each record ready.
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        let mut emit = |partial: bool, content: &[u8]| {
            self.open_line = partial;
            emit(partial, content)
        };
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) if self.pending.len() + i <= MAX_RECORD => {
                    self.pending.extend_from_slice(&bytes[..i]);
                    emit(false, &self.pending);
                    self.pending.clear();
                    bytes = &bytes[i + 1..];
                }
                _ => {
                    let room = MAX_RECORD - self.pending.len();
                    let take = room.min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.pending.len() == MAX_RECORD {
                        // A newline right after a full chunk ends the line.
                        if bytes.first() == Some(&b'\n') {
                            emit(false, &self.pending);
                            bytes = &bytes[1..];
                        } else {
                            emit(true, &self.pending);
                        }
                        self.pending.clear();
                    }
                }
            }
        }
    }

    /// End of stream: what is left (a last line without newline) is `F`.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        // A last line that filled whole `P` records still gets its `F`
        // (empty), as any other unterminated last line does.
        if !self.pending.is_empty() || self.open_line {
            emit(false, &self.pending);
            self.pending.clear();
            self.open_line = false;
        }
    }
}

/// Reads `pipe` until EOF on a thread, writing records for `stream`.
pub fn spawn_reader(
    log: Arc<CriLog>,
    stream: &'static str,
    pipe: OwnedFd,
) -> io::Result<std::thread::JoinHandle<()>> {
    log.tee.reader_started();
    let tee = log.tee.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("crilog-{stream}"))
        .spawn(move || {
            let mut pipe = File::from(pipe);
            let mut splitter = LineSplitter::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        log.tee.send(stream, &buf[..n]);
                        splitter.feed(&buf[..n], |partial, content| {
                            log.write_record(stream, partial, content)
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(stream, error = %e, "reading container output");
                        break;
                    }
                }
            }
            splitter.finish(|partial, content| log.write_record(stream, partial, content));
            log.tee.reader_ended();
        });
    if spawned.is_err() {
        tee.reader_ended();
    }
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &[&[u8]]) -> Vec<(bool, usize, Vec<u8>)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        for chunk in input {
            s.feed(chunk, |p, c| {
                out.push((p, c.len(), c[..c.len().min(8)].to_vec()))
            });
        }
        s.finish(|p, c| out.push((p, c.len(), c[..c.len().min(8)].to_vec())));
        out
    }

    #[test]
    fn lines_and_partials() {
        assert_eq!(
            records(&[b"a\nbc\n"]),
            vec![(false, 1, b"a".to_vec()), (false, 2, b"bc".to_vec())]
        );
        assert_eq!(
            records(&[b"ab", b"c\nd"]),
            vec![(false, 3, b"abc".to_vec()), (false, 1, b"d".to_vec())]
        );
        assert_eq!(records(&[b"\n"]), vec![(false, 0, vec![])]);
        let long = vec![b'x'; MAX_RECORD * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let got = records(&[&input]);
        assert_eq!(
            got.iter().map(|(p, n, _)| (*p, *n)).collect::<Vec<_>>(),
            vec![(true, MAX_RECORD), (true, MAX_RECORD), (false, 10)]
        );
        let mut exact = vec![b'y'; MAX_RECORD];
        exact.push(b'\n');
        assert_eq!(
            records(&[&exact])
                .iter()
                .map(|(p, n, _)| (*p, *n))
                .collect::<Vec<_>>(),
            vec![(false, MAX_RECORD)]
        );
        // A last line of whole records without a newline still ends with
        // an `F` (found by the cri_log fuzz target), in one read or two.
        let whole = vec![b'z'; MAX_RECORD * 2];
        for input in [
            vec![&whole[..]],
            vec![&whole[..MAX_RECORD], &whole[MAX_RECORD..]],
        ] {
            assert_eq!(
                records(&input)
                    .iter()
                    .map(|(p, n, _)| (*p, *n))
                    .collect::<Vec<_>>(),
                vec![(true, MAX_RECORD), (true, MAX_RECORD), (false, 0)]
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_795_319_831, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2026-11-22T03:57:11.123456789Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nano(leap).starts_with("2000-02-29T00:00:00"));
        let rec = format_record(t, "stderr", true, b"hi");
        assert_eq!(rec, b"2026-11-22T03:57:11.123456789Z stderr P hi\n");
    }
}
