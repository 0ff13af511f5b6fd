//! Unit tests and the model-based property test of the checkpoint rule.

use proptest::prelude::*;

use super::*;

fn batch(interval: Duration) -> (Batch<u64, u64>, Instant) {
    let now = Instant::now();
    let schedule = Schedule::default().with_checkpoint_interval(interval);
    (Batch::new(schedule, now), now)
}

#[test]
fn gaps_block_the_checkpoint_erlmld_example() {
    // Flushed {R1, R2, R3, R5, R6, R8}: the checkpoint is R3.
    let (mut b, now) = batch(Duration::ZERO);
    let t: Vec<Token> = (1..=8).map(|r| b.token(r, None, r)).collect();
    b.flushed(&[t[0], t[1], t[2], t[4], t[5], t[7]], now)
        .unwrap();
    assert_eq!(b.checkpoint_due(now), Some(3));
    assert_eq!(b.checkpoint_due(now), None, "nothing new");
    b.flushed(&[t[3]], now).unwrap();
    assert_eq!(b.checkpoint_due(now), Some(6));
    b.flushed(&[t[6]], now).unwrap();
    assert_eq!(b.checkpoint_due(now), Some(8));
    let done: Vec<u64> = b.take_done().collect();
    assert_eq!(
        done,
        [1, 2, 3, 5, 6, 8, 4, 7],
        "payloads come back when flushed, not when contiguous"
    );
}

#[test]
fn ignored_records_do_not_break_contiguity() {
    let (mut b, now) = batch(Duration::ZERO);
    let t: Vec<Token> = (1..=4).map(|r| b.token(r, None, r)).collect();
    b.ignored(t[1]).unwrap();
    b.ignored(t[3]).unwrap();
    assert_eq!(b.checkpoint_due(now), None, "record 1 is not flushed yet");
    b.flushed(&[t[0], t[2]], now).unwrap();
    assert_eq!(
        b.checkpoint_due(now),
        Some(4),
        "trailing ignored records are passed too"
    );
}

#[test]
fn only_the_last_record_of_an_aggregate_is_a_checkpoint_point() {
    let (mut b, now) = batch(Duration::ZERO);
    let sub = |index, total| Some(SubSequence { index, total });
    let a = b.token(10, sub(0, 3), 0);
    let c = b.token(10, sub(1, 3), 1);
    let d = b.token(10, sub(2, 3), 2);
    b.flushed(&[a, c], now).unwrap();
    assert_eq!(b.checkpoint_due(now), None);
    b.flushed(&[d], now).unwrap();
    assert_eq!(b.checkpoint_due(now), Some(10));

    let schedule = Schedule::default()
        .with_checkpoint_interval(Duration::ZERO)
        .with_subsequence_checkpoints(true);
    let mut b: Batch<u64, ()> = Batch::new(schedule, now);
    let a = b.token(20, sub(0, 3), ());
    b.token(20, sub(1, 3), ());
    b.flushed(&[a], now).unwrap();
    assert_eq!(
        b.checkpoint_due(now),
        Some(20),
        "mid-aggregate checkpoints when enabled"
    );
}

#[test]
fn checkpoints_respect_the_interval_and_flushes_the_timer() {
    let (mut b, now) = batch(Duration::from_secs(10));
    let t = b.token(1, None, 1);
    assert!(!b.flush_due(now));
    assert!(b.flush_due(now + Duration::from_secs(1)));
    b.flushed(&[t], now).unwrap();
    assert!(
        b.next_deadline() <= now,
        "a first checkpoint is due at once"
    );
    assert_eq!(b.checkpoint_due(now), Some(1));
    let t = b.token(2, None, 2);
    b.flushed(&[t], now + Duration::from_secs(1)).unwrap();
    assert_eq!(
        b.checkpoint_due(now + Duration::from_secs(5)),
        None,
        "too soon"
    );
    assert_eq!(
        b.next_deadline(),
        now + Duration::from_secs(2),
        "the flush deadline comes first"
    );
    assert_eq!(b.checkpoint_due(now + Duration::from_secs(10)), Some(2));
}

#[test]
fn bad_tokens_are_errors_and_change_nothing() {
    let (mut b, now) = batch(Duration::ZERO);
    let t = b.token(1, None, 1);
    assert_eq!(
        b.flushed(&[Token(7)], now),
        Err(TokenError::Unknown(Token(7)))
    );
    b.flushed(&[t], now).unwrap();
    assert_eq!(b.flushed(&[t], now), Err(TokenError::Duplicate(t)));
    assert_eq!(b.checkpoint_due(now), Some(1));
}

#[test]
fn finish_requires_every_token_back() {
    let (mut b, now) = batch(Duration::ZERO);
    let t1 = b.token(1, None, 1);
    let t2 = b.token(2, None, 2);
    b.flushed(&[t1], now).unwrap();
    assert_eq!(
        b.finish(),
        Err(Leftover {
            records: 1,
            first: t2
        })
    );
    b.flushed(&[t2], now).unwrap();
    assert_eq!(b.finish(), Ok(Some(2)));
}

#[test]
fn a_failed_checkpoint_is_offered_again() {
    let (mut b, now) = batch(Duration::ZERO);
    let t = b.token(1, None, 1);
    b.flushed(&[t], now).unwrap();
    let cp = b.checkpoint_due(now).unwrap();
    b.checkpoint_failed(cp);
    assert_eq!(b.checkpoint_due(now), Some(1));
}

// ---- Model-based property test ---------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A record; `Some((i, n))` places it in an aggregate.
    Add(Option<(u32, u32)>),
    /// Flush these outstanding records (indices into the outstanding list, in this order).
    Flush(Vec<usize>),
    /// The flusher ignores one outstanding record.
    Ignore(usize),
    /// The flusher returns a token that is already done.
    Duplicate(usize),
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::option::weighted(0.3, (0_u32..3, 1_u32..4)).prop_map(Op::Add),
        4 => prop::collection::vec(any::<usize>(), 0..6).prop_map(Op::Flush),
        1 => any::<usize>().prop_map(Op::Ignore),
        1 => any::<usize>().prop_map(Op::Duplicate),
        3 => Just(Op::Checkpoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// The checkpoint is always the highest checkpoint point of the done prefix, never moves
    /// backwards, never passes an unflushed record; payloads come back exactly once.
    #[test]
    fn checkpoint_rule_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        let now = Instant::now();
        let schedule = Schedule::default().with_checkpoint_interval(Duration::ZERO);
        let mut b: Batch<usize, usize> = Batch::new(schedule, now);
        let mut tokens: Vec<Token> = vec![];
        let mut point: Vec<bool> = vec![];
        let mut done: Vec<bool> = vec![];
        let mut returned = vec![false; 0];
        let mut last: Option<usize> = None;
        let check = |b: &mut Batch<usize, usize>, done: &[bool], point: &[bool], last: &mut Option<usize>| {
            let prefix = done.iter().position(|d| !d).unwrap_or(done.len());
            let best = (0..prefix).rev().find(|&i| point[i]);
            let expected = best.filter(|&b| last.is_none_or(|l| b > l));
            let got = b.checkpoint_due(now);
            assert_eq!(got, expected, "done {done:?} points {point:?} last {last:?}");
            if got.is_some() {
                *last = got;
            }
        };
        for op in ops {
            let outstanding: Vec<usize> = (0..done.len()).filter(|&i| !done[i]).collect();
            match op {
                Op::Add(sub) => {
                    let i = tokens.len();
                    let sub = sub.map(|(index, total)| SubSequence { index: index.min(total - 1), total });
                    tokens.push(b.token(i, sub, i));
                    point.push(sub.is_none_or(|s| s.index + 1 >= s.total));
                    done.push(false);
                    returned.push(false);
                }
                Op::Flush(picks) => {
                    let mut chosen = vec![];
                    for p in picks {
                        if outstanding.is_empty() { break; }
                        let i = outstanding[p % outstanding.len()];
                        if !chosen.contains(&i) { chosen.push(i); }
                    }
                    let ts: Vec<Token> = chosen.iter().map(|&i| tokens[i]).collect();
                    b.flushed(&ts, now).unwrap();
                    for &i in &chosen { done[i] = true; }
                }
                Op::Ignore(p) => {
                    if let Some(&i) = outstanding.get(p % outstanding.len().max(1)) {
                        b.ignored(tokens[i]).unwrap();
                        done[i] = true;
                    }
                }
                Op::Duplicate(p) => {
                    let finished: Vec<usize> = (0..done.len()).filter(|&i| done[i]).collect();
                    if let Some(&i) = finished.get(p % finished.len().max(1)) {
                        let e = b.flushed(&[tokens[i]], now).unwrap_err();
                        prop_assert_eq!(e, TokenError::Duplicate(tokens[i]));
                    }
                }
                Op::Checkpoint => check(&mut b, &done, &point, &mut last),
            }
            for payload in b.take_done() {
                prop_assert!(done[payload], "payload {} back before it was done", payload);
                prop_assert!(!returned[payload], "payload {} came back twice", payload);
                returned[payload] = true;
            }
            prop_assert_eq!(b.outstanding(), done.iter().filter(|d| !**d).count());
        }
        // Shard end: a full flush returns everything.
        let rest: Vec<Token> = (0..done.len()).filter(|&i| !done[i]).map(|i| tokens[i]).collect();
        b.flushed(&rest, now).unwrap();
        done.fill(true);
        let final_cp = b.finish().unwrap();
        let best = (0..done.len()).rev().find(|&i| point[i]);
        prop_assert_eq!(final_cp, best.filter(|&b| last.is_none_or(|l| b > l)));
        prop_assert_eq!(b.take_done().count() + returned.iter().filter(|r| **r).count(), done.len());
    }
}
