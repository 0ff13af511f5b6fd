//! The IO-free batch processor core: tokens, the contiguous-prefix checkpoint rule and the
//! flush/checkpoint schedule ([`Batch`]). Time is an input; nothing here awaits.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Identifies one record handed to a [`Flusher`](crate::Flusher); the flusher gives it back
/// when the record is durably flushed. Tokens are numbered per shard, in record order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Token(u64);

impl Token {
    /// The record's number within its shard's current run (0-based).
    pub const fn counter(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token#{}", self.0)
    }
}

/// A record's place inside an aggregate (KPL user records, a batch inside one broker message):
/// record `index` of `total`. Only the last one of an aggregate is a checkpoint point, unless
/// sub-sequence checkpoints are enabled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SubSequence {
    /// 0-based index within the aggregate.
    pub index: u32,
    /// Records in the aggregate.
    pub total: u32,
}

/// Timing and checkpoint rules of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Schedule {
    /// Flush (partially) when this long has passed since the last flush — with or without new
    /// records. Default 1 s.
    pub flush_interval: Duration,
    /// Checkpoint at most this often. Default 10 s.
    pub checkpoint_interval: Duration,
    /// Allow checkpoints in the middle of an aggregate (see [`SubSequence`]). Default false.
    pub subsequence_checkpoints: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(10),
            subsequence_checkpoints: false,
        }
    }
}

impl Schedule {
    /// Set [`flush_interval`](Self::flush_interval).
    pub fn with_flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d;
        self
    }

    /// Set [`checkpoint_interval`](Self::checkpoint_interval).
    pub fn with_checkpoint_interval(mut self, d: Duration) -> Self {
        self.checkpoint_interval = d;
        self
    }

    /// Set [`subsequence_checkpoints`](Self::subsequence_checkpoints).
    pub fn with_subsequence_checkpoints(mut self, on: bool) -> Self {
        self.subsequence_checkpoints = on;
        self
    }
}

/// A flusher returned a token that is not outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The token was never handed out in this run (or belongs to another shard or run).
    Unknown(Token),
    /// The token was already returned.
    Duplicate(Token),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(t) => write!(
                f,
                "the flusher returned {t}, which was never handed to it in this run"
            ),
            Self::Duplicate(t) => write!(f, "the flusher returned {t} twice"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Records were still outstanding after a full flush at shard end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// Records the flusher did not return.
    pub records: usize,
    /// The first of them.
    pub first: Token,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} record(s) were not returned by a full flush (first: {}); a full flush must return every token",
            self.records, self.first
        )
    }
}

impl std::error::Error for Leftover {}

/// One shard's batch bookkeeping (erlmld's batch processor state, without IO).
///
/// * [`token`](Self::token) numbers each record and remembers its position and, optionally, a
///   per-record payload `A` (the source's ack handle) that comes back once the record is done.
/// * [`flushed`](Self::flushed) takes the tokens a flush returned; [`ignored`](Self::ignored)
///   marks a record the flusher ignored (it counts as done at once, so it never blocks).
/// * The checkpoint candidate is the position of the last record of the **contiguous** prefix
///   of done records that is a checkpoint point: a gap (an unflushed record) stops it.
/// * [`checkpoint_due`](Self::checkpoint_due) hands the candidate out at most once per
///   `checkpoint_interval`; [`flush_due`](Self::flush_due) and
///   [`next_deadline`](Self::next_deadline) drive time-based flushing.
///
/// ```
/// use std::time::Instant;
/// use headwaters_batch_flusher::{Batch, Schedule};
///
/// let now = Instant::now();
/// let schedule = Schedule::default().with_checkpoint_interval(std::time::Duration::ZERO);
/// let mut batch: Batch<u64, ()> = Batch::new(schedule, now);
/// let tokens: Vec<_> = (1..=5).map(|pos| batch.token(pos, None, ())).collect();
/// batch.flushed(&[tokens[0], tokens[1], tokens[3]], now).unwrap(); // record 3 is not flushed yet
/// assert_eq!(batch.checkpoint_due(now), Some(2));
/// batch.flushed(&[tokens[2], tokens[4]], now).unwrap();
/// assert_eq!(batch.checkpoint_due(now), Some(5));
/// ```
pub struct Batch<P, A> {
    schedule: Schedule,
    /// Counter of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry<P, A>>,
    /// Highest checkpointable position of the done prefix, not yet handed out.
    candidate: Option<P>,
    last_flush: Instant,
    last_checkpoint: Option<Instant>,
    /// Payloads of records that are done, for the driver to take.
    done: Vec<A>,
}

struct Entry<P, A> {
    position: P,
    checkpoint_point: bool,
    state: EntryState<A>,
}

enum EntryState<A> {
    Outstanding(A),
    /// Done; its payload was already handed to `done`.
    Done,
}

impl<P: fmt::Debug, A> fmt::Debug for Batch<P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("base", &self.base)
            .field("outstanding", &self.entries.len())
            .field("candidate", &self.candidate)
            .finish_non_exhaustive()
    }
}

impl<P: Clone, A> Batch<P, A> {
    /// An empty batch; `now` starts the flush interval.
    pub fn new(schedule: Schedule, now: Instant) -> Self {
        Self {
            schedule,
            base: 0,
            entries: VecDeque::new(),
            candidate: None,
            last_flush: now,
            last_checkpoint: None,
            done: Vec::new(),
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Number a new record at `position`.
    pub fn token(&mut self, position: P, sub: Option<SubSequence>, payload: A) -> Token {
        let counter = self.base + self.entries.len() as u64;
        let checkpoint_point = self.schedule.subsequence_checkpoints
            || sub.is_none_or(|s| s.index.saturating_add(1) >= s.total);
        self.entries.push_back(Entry {
            position,
            checkpoint_point,
            state: EntryState::Outstanding(payload),
        });
        Token(counter)
    }

    /// The flusher ignored the record of `token`: it is done (and does not block checkpoints).
    pub fn ignored(&mut self, token: Token) -> Result<(), TokenError> {
        self.mark(token)?;
        self.advance();
        Ok(())
    }

    /// A flush (or heartbeat) returned `tokens`; `now` restarts the flush interval.
    pub fn flushed(&mut self, tokens: &[Token], now: Instant) -> Result<(), TokenError> {
        self.last_flush = now;
        let mut result = Ok(());
        for &token in tokens {
            if let Err(e) = self.mark(token) {
                result = result.and(Err(e));
            }
        }
        self.advance();
        result
    }

    /// A flush happened that returned no tokens (restarts the flush interval).
    pub fn flush_attempted(&mut self, now: Instant) {
        self.last_flush = now;
    }

    fn mark(&mut self, token: Token) -> Result<(), TokenError> {
        let index = token
            .0
            .checked_sub(self.base)
            .ok_or(TokenError::Duplicate(token))?;
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
            .ok_or(TokenError::Unknown(token))?;
        match std::mem::replace(&mut entry.state, EntryState::Done) {
            EntryState::Outstanding(payload) => {
                self.done.push(payload);
                Ok(())
            }
            EntryState::Done => Err(TokenError::Duplicate(token)),
        }
    }

    /// Pop the done prefix, moving the candidate forward.
    fn advance(&mut self) {
        while let Some(front) = self.entries.front() {
            if !matches!(front.state, EntryState::Done) {
                break;
            }
            if let Some(entry) = self.entries.pop_front() {
                self.base += 1;
                if entry.checkpoint_point {
                    self.candidate = Some(entry.position);
                }
            }
        }
    }

    /// Payloads of the records that became done since the last call, in the order they did.
    pub fn take_done(&mut self) -> std::vec::Drain<'_, A> {
        self.done.drain(..)
    }

    /// Records handed out and not yet done.
    pub fn outstanding(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.state, EntryState::Outstanding(_)))
            .count()
    }

    /// Whether `flush_interval` has passed since the last flush.
    pub fn flush_due(&self, now: Instant) -> bool {
        now >= self.last_flush + self.schedule.flush_interval
    }

    /// The checkpoint to take now, if there is a new one and `checkpoint_interval` has passed
    /// since the last one handed out.
    pub fn checkpoint_due(&mut self, now: Instant) -> Option<P> {
        let due = self
            .last_checkpoint
            .is_none_or(|last| now >= last + self.schedule.checkpoint_interval);
        if !due {
            return None;
        }
        let position = self.candidate.take()?;
        self.last_checkpoint = Some(now);
        Some(position)
    }

    /// The checkpoint to take now, whatever the interval (graceful stop).
    pub fn checkpoint_now(&mut self, now: Instant) -> Option<P> {
        let position = self.candidate.take()?;
        self.last_checkpoint = Some(now);
        Some(position)
    }

    /// A checkpoint handed out by [`checkpoint_due`](Self::checkpoint_due) could not be
    /// stored: offer it again (unless a newer one is already waiting).
    pub fn checkpoint_failed(&mut self, position: P) {
        if self.candidate.is_none() {
            self.candidate = Some(position);
        }
    }

    /// When the driver must wake up next: the flush deadline, or the checkpoint deadline if a
    /// checkpoint is waiting.
    pub fn next_deadline(&self) -> Instant {
        let flush = self.last_flush + self.schedule.flush_interval;
        match (&self.candidate, self.last_checkpoint) {
            (Some(_), Some(last)) => flush.min(last + self.schedule.checkpoint_interval),
            (Some(_), None) => flush.min(self.last_flush),
            _ => flush,
        }
    }

    /// Shard end, after a full flush: every record must be done. Returns the final checkpoint
    /// (if any position is new since the last one handed out).
    pub fn finish(&mut self) -> Result<Option<P>, Leftover> {
        let outstanding: Vec<u64> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.state, EntryState::Outstanding(_)))
            .map(|(i, _)| self.base + i as u64)
            .collect();
        if let Some(&first) = outstanding.first() {
            return Err(Leftover {
                records: outstanding.len(),
                first: Token(first),
            });
        }
        Ok(self.candidate.take())
    }
}

#[cfg(test)]
mod tests;
