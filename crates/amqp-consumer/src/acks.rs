//! Ack coalescing for one channel, without IO: [`AckWindow`].
//!
//! Delivery tags on a channel are consecutive from 1. Settlements arrive in any order (keys
//! finish independently). When every tag up to `N` is settled and the settled-as-ack ones among
//! them have not been sent, one `basic.ack(N, multiple=true)` acks them all. Acks above a gap
//! (an unsettled tag) wait for it to close for up to one tick, then go out individually.
//! Rejects go out at once, individually, so that a later `multiple` ack never covers them.
//! A tag is never acked before it was settled.

use std::collections::VecDeque;

use headwaters_ordering_core::Settlement;

/// What to send on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOp {
    /// `basic.ack(tag, multiple=true)`.
    AckUpTo(u64),
    /// `basic.ack(tag, multiple=false)`.
    Ack(u64),
    /// `basic.reject(tag, requeue)`.
    Reject(u64, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unsettled,
    /// Settled as ack, not sent yet; the tick it was settled in.
    Pending(u64),
    /// Acked or rejected on the wire.
    Done,
}

/// The coalescing state of one channel.
#[derive(Debug)]
pub struct AckWindow {
    /// Tag of `slots[0]`; every tag below it is done on the wire.
    base: u64,
    slots: VecDeque<Slot>,
    tick: u64,
    /// Highest tag whose ack is pending in the contiguous prefix.
    ack_upto: Option<u64>,
}

impl Default for AckWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl AckWindow {
    /// An empty window (the next delivery tag is 1).
    pub fn new() -> Self {
        Self {
            base: 1,
            slots: VecDeque::new(),
            tick: 0,
            ack_upto: None,
        }
    }

    /// Record a settlement of `tag`; returns what must be sent at once (rejects).
    pub fn settle(&mut self, tag: u64, settlement: Settlement, out: &mut Vec<AckOp>) {
        let Some(index) = tag.checked_sub(self.base) else {
            return; // already done (a duplicate settle is ignored: never ack twice)
        };
        let index = index as usize;
        if self.slots.len() <= index {
            self.slots.resize(index + 1, Slot::Unsettled);
        }
        if self.slots[index] != Slot::Unsettled {
            return;
        }
        match settlement {
            Settlement::Ack => self.slots[index] = Slot::Pending(self.tick),
            Settlement::Reject { requeue } => {
                self.slots[index] = Slot::Done;
                out.push(AckOp::Reject(tag, requeue));
            }
        }
        self.advance();
    }

    /// Pop the settled prefix, remembering the highest pending ack in it.
    fn advance(&mut self) {
        while let Some(&front) = self.slots.front() {
            match front {
                Slot::Unsettled => break,
                Slot::Pending(_) => self.ack_upto = Some(self.base),
                Slot::Done => {}
            }
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Acks waiting to be sent.
    pub fn pending(&self) -> usize {
        usize::from(self.ack_upto.is_some())
            + self
                .slots
                .iter()
                .filter(|s| matches!(s, Slot::Pending(_)))
                .count()
    }

    /// Send what is due: one multiple ack for the contiguous prefix, and individual acks for
    /// those that have waited above a gap since an earlier tick. Then start a new tick.
    pub fn flush(&mut self, out: &mut Vec<AckOp>) {
        if let Some(upto) = self.ack_upto.take() {
            out.push(AckOp::AckUpTo(upto));
        }
        let tick = self.tick;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Slot::Pending(t) = *slot
                && t < tick
            {
                *slot = Slot::Done;
                out.push(AckOp::Ack(self.base + i as u64));
            }
        }
        self.tick += 1;
    }

    /// Send every pending ack now (shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<AckOp>) {
        self.tick += 1;
        self.flush(out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn contiguous_acks_coalesce_into_one() {
        let mut w = AckWindow::new();
        let mut out = vec![];
        for tag in [3, 1, 2, 4] {
            w.settle(tag, Settlement::Ack, &mut out);
        }
        assert!(out.is_empty());
        w.flush(&mut out);
        assert_eq!(out, [AckOp::AckUpTo(4)]);
    }

    #[test]
    fn gaps_wait_one_tick_then_go_individually_and_rejects_go_at_once() {
        let mut w = AckWindow::new();
        let mut out = vec![];
        w.settle(1, Settlement::Ack, &mut out);
        w.settle(3, Settlement::Ack, &mut out);
        w.settle(4, Settlement::Reject { requeue: false }, &mut out);
        assert_eq!(out, [AckOp::Reject(4, false)]);
        out.clear();
        w.flush(&mut out);
        assert_eq!(out, [AckOp::AckUpTo(1)], "3 waits for the gap at 2");
        out.clear();
        w.flush(&mut out);
        assert_eq!(out, [AckOp::Ack(3)], "then it goes alone");
        out.clear();
        w.settle(2, Settlement::Ack, &mut out);
        w.flush(&mut out);
        assert_eq!(out, [AckOp::AckUpTo(2)]);
    }

    proptest! {
        /// Every tag is acked or rejected on the wire exactly once, never before it was
        /// settled, as it was settled; a multiple ack never covers an unsettled or rejected tag.
        #[test]
        fn every_settlement_reaches_the_wire_once(
            order in Just((1..=60_u64).collect::<Vec<_>>()).prop_shuffle(),
            rejects in prop::collection::vec(any::<bool>(), 60),
            flush_every in 1_usize..8,
        ) {
            let mut w = AckWindow::new();
            let mut settled: BTreeMap<u64, Settlement> = BTreeMap::new();
            let mut wire: BTreeMap<u64, Settlement> = BTreeMap::new();
            let mut out = vec![];
            let apply = |out: &mut Vec<AckOp>, settled: &BTreeMap<u64, Settlement>, wire: &mut BTreeMap<u64, Settlement>| {
                for op in out.drain(..) {
                    let (tags, s): (Vec<u64>, Settlement) = match op {
                        // A multiple ack covers every tag up to N not yet on the wire.
                        AckOp::AckUpTo(n) => ((1..=n).filter(|t| !wire.contains_key(t)).collect(), Settlement::Ack),
                        AckOp::Ack(t) => (vec![t], Settlement::Ack),
                        AckOp::Reject(t, requeue) => (vec![t], Settlement::Reject { requeue }),
                    };
                    for t in tags {
                        let want = settled.get(&t);
                        assert_eq!(want, Some(&s), "tag {t} sent as {s:?} but settled as {want:?}");
                        assert!(wire.insert(t, s).is_none(), "tag {t} on the wire twice");
                    }
                }
            };
            for (i, tag) in order.iter().enumerate() {
                let s = if rejects[*tag as usize - 1] { Settlement::Reject { requeue: false } } else { Settlement::Ack };
                settled.insert(*tag, s);
                w.settle(*tag, s, &mut out);
                apply(&mut out, &settled, &mut wire);
                if i % flush_every == 0 {
                    w.flush(&mut out);
                    apply(&mut out, &settled, &mut wire);
                }
            }
            w.flush_all(&mut out);
            apply(&mut out, &settled, &mut wire);
            prop_assert_eq!(wire, settled);
            prop_assert_eq!(w.pending(), 0);
        }
    }
}
