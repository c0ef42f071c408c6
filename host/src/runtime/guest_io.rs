//! Guest stdout/stderr: each line goes to the host's log, tagged with the
//! rollout id, up to the rollout's output budget; the end of stderr is kept
//! to explain traps (Rust panics print their message there just before
//! trapping). Past the budget, output is only counted, and one line says how
//! much was dropped when the rollout's instance goes.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest line logged; longer output is split.
const MAX_LINE: usize = 8 * 1024;
/// How much of the end of stderr is kept.
const TAIL_BYTES: usize = 2 * 1024;
/// What a logged line costs beyond its text (timestamp, level, span and
/// fields), charged to the output budget so that many short lines cannot
/// write more log than long ones.
const LINE_OVERHEAD: usize = 192;

/// The log bytes a rollout's output may still take, shared by its stdout
/// and stderr.
#[derive(Debug)]
pub struct OutputBudget {
    rollout_id: Arc<str>,
    left: AtomicUsize,
    dropped: AtomicU64,
}

impl OutputBudget {
    pub fn new(rollout_id: Arc<str>, bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            rollout_id,
            left: AtomicUsize::new(bytes),
            dropped: AtomicU64::new(0),
        })
    }

    /// Takes `cost` from the budget if it is all there; once it is not,
    /// the budget is spent (later output is only counted).
    fn take(&self, cost: usize) -> bool {
        let taken = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(cost)
            })
            .is_ok();
        if !taken {
            self.left.store(0, Ordering::Relaxed);
        }
        taken
    }

    fn drop_bytes(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn exhausted(&self) -> bool {
        self.left.load(Ordering::Relaxed) == 0
    }
}

impl Drop for OutputBudget {
    fn drop(&mut self) {
        let dropped = *self.dropped.get_mut();
        if dropped > 0 {
            tracing::warn!(
                target: "plugin",
                rollout_id = %self.rollout_id,
                "output truncated, {dropped} bytes dropped"
            );
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One of a guest's output streams.
#[derive(Clone)]
pub struct GuestOutput {
    stream: Stream,
    tail: Arc<Mutex<Vec<u8>>>,
    budget: Arc<OutputBudget>,
}

impl GuestOutput {
    pub fn new(stream: Stream, tail: Arc<Mutex<Vec<u8>>>, budget: Arc<OutputBudget>) -> Self {
        Self {
            stream,
            tail,
            budget,
        }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            out: self.clone(),
            line: Vec::new(),
        }
    }

    fn emit(&self, line: &[u8]) {
        if self.stream == Stream::Stderr {
            self.keep_tail(line);
        }
        if !self.budget.take(line.len() + LINE_OVERHEAD) {
            self.budget.drop_bytes(line.len());
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        let id = &self.budget.rollout_id;
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "plugin", rollout_id = %id, stream = "stdout", "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "plugin", rollout_id = %id, stream = "stderr", "{text}")
            }
        }
    }

    fn keep_tail(&self, line: &[u8]) {
        let line = &line[line.len().saturating_sub(TAIL_BYTES)..];
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            tail.push(b'\n');
        }
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
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
        if self.out.budget.exhausted() && self.out.stream == Stream::Stdout {
            // Past the budget stdout is only counted.
            self.out.budget.drop_bytes(data.len());
            return;
        }
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
