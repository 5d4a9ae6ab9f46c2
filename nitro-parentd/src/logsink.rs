//! The log sink: the enclave's stdout/stderr, one connection per stream, printed line by line
//! with the enclave's name as prefix.

use std::io::Write;
use std::sync::{Arc, Mutex};

use nitro_init::{LogStream, MAX_LOG_HEADER, parse_log_header};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest line printed as one; longer lines are split into several.
pub const MAX_LINE: usize = 8 * 1024;

/// Where log lines are written: shared by the enclaves that log to the same destination.
#[derive(Clone)]
pub struct LogOutput {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for LogOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogOutput")
    }
}

impl LogOutput {
    /// Writes to `w` (stdout, a file, or a buffer in tests).
    pub fn new(w: impl Write + Send + 'static) -> Self {
        LogOutput {
            out: Arc::new(Mutex::new(Box::new(w))),
        }
    }

    /// Writes one whole line (a newline is added). A failed write is dropped: logs never stop
    /// the enclave.
    pub fn write_line(&self, line: &[u8]) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    }
}

/// Splits a byte stream into printable lines of at most [`MAX_LINE`] bytes (pure).
#[derive(Debug)]
pub struct LineSplitter {
    prefix: Vec<u8>,
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// Lines will start with `[name] ` (and `stderr: ` for standard error).
    pub fn new(name: &str, stream: LogStream) -> Self {
        let mut prefix = format!("[{name}] ").into_bytes();
        if stream == LogStream::Stderr {
            prefix.extend_from_slice(b"stderr: ");
        }
        LineSplitter {
            prefix,
            buf: Vec::new(),
            max: MAX_LINE,
        }
    }

    /// Sets the longest line (tests).
    pub fn max_line(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Feeds bytes; `emit` gets every complete line, prefixed, without its newline. Control
    /// characters other than tab are replaced with `?` and invalid UTF-8 with U+FFFD, so
    /// hostile output cannot drive the terminal or forge lines of another enclave.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = self.max - self.buf.len();
            match data.iter().take(room).position(|b| *b == b'\n') {
                Some(n) => {
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n + 1..];
                    self.flush_line(emit);
                }
                None => {
                    let n = room.min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.buf.len() >= self.max {
                        self.flush_line(emit);
                    }
                }
            }
        }
    }

    /// Emits what is left (a last line without newline).
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            self.flush_line(emit);
        }
    }

    fn flush_line(&mut self, emit: &mut impl FnMut(&[u8])) {
        let text = String::from_utf8_lossy(&self.buf);
        let mut line = self.prefix.clone();
        for ch in text.trim_end_matches('\r').chars() {
            if ch.is_control() && ch != '\t' {
                line.push(b'?');
            } else {
                let mut b = [0; 4];
                line.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
            }
        }
        emit(&line);
        self.buf.clear();
    }
}

/// Serves one log connection: reads the header (at most [`MAX_LOG_HEADER`] bytes), then
/// prints the stream's lines until EOF. Returns the number of lines printed, or why the
/// connection was refused.
pub async fn serve_log<S: AsyncRead + Unpin>(
    mut stream: S,
    name: &str,
    out: &LogOutput,
) -> Result<u64, String> {
    let mut header = Vec::with_capacity(MAX_LOG_HEADER);
    let mut byte = [0u8; 1];
    loop {
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| format!("reading the log header: {e}"))?;
        if n == 0 {
            return Err("the connection ended before the log header".into());
        }
        header.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
        if header.len() >= MAX_LOG_HEADER {
            return Err("no log header".into());
        }
    }
    let kind = parse_log_header(&header).map_err(|e| e.to_string())?;
    let mut split = LineSplitter::new(name, kind);
    let mut lines = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut emit = |l: &[u8]| {
        lines += 1;
        out.write_line(l);
    };
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                split.finish(&mut emit);
                return Err(format!("reading the log stream: {e}"));
            }
        };
        split.push(&buf[..n], &mut emit);
    }
    split.finish(&mut emit);
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(split: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<String> {
        let mut v = Vec::new();
        let mut emit = |l: &[u8]| v.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            split.push(c, &mut emit);
        }
        split.finish(&mut emit);
        v
    }

    #[test]
    fn prefixes_marks_and_splits() {
        let mut s = LineSplitter::new("web", LogStream::Stdout).max_line(4);
        assert_eq!(
            lines(&mut s, &[b"ab", b"c\nabcdefg\n\n", b"x"]),
            ["[web] abc", "[web] abcd", "[web] efg", "[web] ", "[web] x"]
        );
        let mut s = LineSplitter::new("web", LogStream::Stderr);
        assert_eq!(lines(&mut s, &[b"oops\r\n"]), ["[web] stderr: oops"]);
    }

    #[test]
    fn hostile_bytes_are_neutralised() {
        let mut s = LineSplitter::new("a", LogStream::Stdout);
        assert_eq!(
            lines(&mut s, &[b"\x1b[2J\xff\xfe ok\tdone\n"]),
            ["[a] ?[2J\u{fffd}\u{fffd} ok\tdone"]
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = LineSplitter::new("a", LogStream::Stdout);
        let big = vec![b'x'; 10 * MAX_LINE + 3];
        let mut count = 0;
        s.push(&big, &mut |l| {
            assert!(l.len() <= MAX_LINE + 4);
            count += 1;
        });
        assert_eq!(count, 10);
        assert!(s.buf.capacity() <= MAX_LINE * 2);
    }
}
