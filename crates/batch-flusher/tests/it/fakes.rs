//! A scripted source and a configurable flusher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use headwaters_batch_flusher::{
    Added, FlushKind, Flusher, FlusherFactory, Source, SourceEvent, SourceRecord, Token,
};
use headwaters_ordering_core::Settlement;

/// Per shard: records 1..=n (positions equal values); optionally a final event.
#[derive(Clone, Default)]
pub(crate) struct LogSource {
    pub(crate) logs: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    pub(crate) end: Arc<Mutex<HashMap<String, End>>>,
    /// Records acked, per shard.
    pub(crate) acked: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    /// `from` given to each `open`, per shard.
    pub(crate) opened_from: Arc<Mutex<HashMap<String, Vec<Option<u64>>>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    ShardEnded,
    LeaseLost,
}

impl LogSource {
    pub(crate) fn push(&self, shard: &str, records: impl IntoIterator<Item = u64>) {
        self.logs
            .lock()
            .unwrap()
            .entry(shard.into())
            .or_default()
            .extend(records);
    }

    pub(crate) fn end(&self, shard: &str, end: End) {
        self.end.lock().unwrap().insert(shard.into(), end);
    }
}

pub(crate) type Ack = Box<dyn FnOnce(Settlement) + Send>;

impl Source for LogSource {
    type Position = u64;
    type Record = u64;
    type Ack = Ack;
    type Error = String;
    type Stream = BoxStream<'static, Result<SourceEvent<u64, u64, Ack>, String>>;

    async fn open(&self, shard: &str, from: Option<u64>) -> Result<Self::Stream, String> {
        self.opened_from
            .lock()
            .unwrap()
            .entry(shard.into())
            .or_default()
            .push(from);
        let this = self.clone();
        let shard = shard.to_owned();
        // Position p is the p-th record (1-based); resume after `from`.
        let next = from.unwrap_or(0) as usize;
        Ok(stream::unfold(
            (this, shard, next, false),
            |(this, shard, next, finished)| async move {
                if finished {
                    return None;
                }
                loop {
                    let record = this
                        .logs
                        .lock()
                        .unwrap()
                        .get(&shard)
                        .and_then(|l| l.get(next).copied());
                    if let Some(value) = record {
                        let acked = Arc::clone(&this.acked);
                        let s = shard.clone();
                        let ack: Ack = Box::new(move |settlement| {
                            if settlement == Settlement::Ack {
                                acked.lock().unwrap().entry(s).or_default().push(value);
                            }
                        });
                        let event = SourceEvent::Record(SourceRecord {
                            position: next as u64 + 1,
                            sub: None,
                            record: value,
                            ack,
                        });
                        return Some((Ok(event), (this, shard, next + 1, false)));
                    }
                    let end = this.end.lock().unwrap().get(&shard).copied();
                    match end {
                        Some(End::ShardEnded) => {
                            return Some((Ok(SourceEvent::ShardEnded), (this, shard, next, true)));
                        }
                        Some(End::LeaseLost) => {
                            return Some((Ok(SourceEvent::LeaseLost), (this, shard, next, true)));
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            },
        )
        .boxed())
    }
}

/// How the flusher misbehaves.
#[derive(Clone, Default)]
pub(crate) struct Script {
    /// Buffer size before `Full`.
    pub(crate) capacity: usize,
    /// Fail these flush calls (1-based, counted across restarts).
    pub(crate) fail_flush: Vec<usize>,
    /// Hang on these flush calls.
    pub(crate) hang_flush: Vec<usize>,
    /// Ignore odd records.
    pub(crate) ignore_odd: bool,
    /// Return tokens in reverse order.
    pub(crate) reverse: bool,
    /// Keep one token back on full flushes (a buggy flusher).
    pub(crate) lose_one_on_full: bool,
    /// Write the buffer from `heartbeat` and return its tokens there (a flusher with its own
    /// schedule, erlmld's deadlock escape); partial flushes then return nothing.
    pub(crate) flush_in_heartbeat: bool,
}

/// Writes records to a shared sink per shard.
#[derive(Clone, Default)]
pub(crate) struct SinkFactory {
    pub(crate) script: Script,
    pub(crate) sinks: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    pub(crate) flushes: Arc<AtomicUsize>,
    pub(crate) inits: Arc<AtomicUsize>,
    /// Also append what is written to this file, synced before the tokens are returned (for
    /// crash tests across processes).
    pub(crate) file: Option<std::path::PathBuf>,
}

impl SinkFactory {
    /// Record `records` as written for `shard`.
    fn write(&self, shard: &str, records: impl Iterator<Item = u64> + Clone) {
        if let Some(path) = &self.file {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("sink file");
            for r in records.clone() {
                writeln!(f, "{r}").expect("sink file");
            }
            f.sync_data().expect("sink file");
        }
        self.sinks
            .lock()
            .unwrap()
            .entry(shard.to_owned())
            .or_default()
            .extend(records);
    }
}

pub(crate) struct SinkFlusher {
    shard: String,
    buffer: Vec<(u64, Token)>,
    factory: SinkFactory,
}

impl FlusherFactory for SinkFactory {
    type Flusher = SinkFlusher;

    async fn init(&self, shard: &str) -> Result<SinkFlusher, String> {
        self.inits.fetch_add(1, SeqCst);
        Ok(SinkFlusher {
            shard: shard.into(),
            buffer: Vec::new(),
            factory: self.clone(),
        })
    }
}

impl Flusher for SinkFlusher {
    type Record = u64;
    type Error = String;

    async fn add_record(&mut self, record: u64, token: Token) -> Result<Added<u64>, String> {
        let script = &self.factory.script;
        if script.ignore_odd && record % 2 == 1 {
            return Ok(Added::Ignored);
        }
        if script.capacity > 0 && self.buffer.len() >= script.capacity {
            return Ok(Added::Full(record));
        }
        self.buffer.push((record, token));
        Ok(Added::Added)
    }

    async fn flush(&mut self, kind: FlushKind) -> Result<Vec<Token>, String> {
        let n = self.factory.flushes.fetch_add(1, SeqCst) + 1;
        let script = self.factory.script.clone();
        if script.fail_flush.contains(&n) {
            return Err(format!("injected failure on flush {n}"));
        }
        if script.hang_flush.contains(&n) {
            std::future::pending::<()>().await;
        }
        if script.flush_in_heartbeat && kind == FlushKind::Partial {
            return Ok(Vec::new());
        }
        let mut batch = std::mem::take(&mut self.buffer);
        if script.lose_one_on_full && kind == FlushKind::Full && !batch.is_empty() {
            batch.pop();
        }
        self.factory
            .write(&self.shard, batch.iter().map(|(r, _)| *r));
        let mut tokens: Vec<Token> = batch.into_iter().map(|(_, t)| t).collect();
        if script.reverse {
            tokens.reverse();
        }
        Ok(tokens)
    }

    async fn heartbeat(&mut self) -> Result<Vec<Token>, String> {
        if !self.factory.script.flush_in_heartbeat {
            return Ok(Vec::new());
        }
        let batch = std::mem::take(&mut self.buffer);
        self.factory
            .write(&self.shard, batch.iter().map(|(r, _)| *r));
        Ok(batch.into_iter().map(|(_, t)| t).collect())
    }
}
