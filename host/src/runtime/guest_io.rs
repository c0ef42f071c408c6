//! Guest stdout/stderr: each line goes to the host's log, tagged with the
//! rollout id; the end of stderr is kept to explain traps (Rust panics print
//! their message there just before trapping).

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest line logged; longer output is split.
const MAX_LINE: usize = 8 * 1024;
/// How much of the end of stderr is kept.
const TAIL_BYTES: usize = 2 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One of a guest's output streams.
#[derive(Clone)]
pub struct GuestOutput {
    rollout_id: Arc<str>,
    stream: Stream,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    pub fn new(rollout_id: Arc<str>, stream: Stream, tail: Arc<Mutex<Vec<u8>>>) -> Self {
        Self {
            rollout_id,
            stream,
            tail,
        }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            out: self.clone(),
            line: Vec::new(),
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "plugin", rollout_id = %self.rollout_id, stream = "stdout", "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "plugin", rollout_id = %self.rollout_id, stream = "stderr", "{text}")
            }
        }
        if self.stream == Stream::Stderr {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                tail.push(b'\n');
            }
            let excess = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..excess);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }
}

/// Splits written bytes into lines and emits each complete one.
struct LineWriter {
    out: GuestOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = MAX_LINE - self.line.len();
            let (take, complete) = match data.iter().position(|b| *b == b'\n') {
                Some(i) if i < room => (i + 1, true),
                _ if data.len() >= room => (room, true),
                _ => (data.len(), false),
            };
            self.line.extend_from_slice(&data[..take]);
            data = &data[take..];
            if complete {
                self.out.emit(&self.line);
                self.line.clear();
            }
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.out.emit(&self.line);
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.feed(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().feed(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
