use super::*;

/// Reads as the server answers them: the encoded page, decoded again.
impl Store {
    fn read_stream(
        &self,
        stream: &str,
        from: i64,
        max_count: i32,
        forward: bool,
        resolve: bool,
    ) -> ReadStreamEventsCompleted {
        let (reply, picked) = self.stream_page(stream, from, max_count, forward, resolve);
        ReadStreamEventsCompleted::decode(&self.encode_stream_page(&reply, &picked)[..]).unwrap()
    }

    fn read_all(
        &self,
        commit: i64,
        max_count: i32,
        forward: bool,
        resolve: bool,
    ) -> ReadAllEventsCompleted {
        let (reply, picked) = self.all_page(commit, max_count, forward, resolve);
        ReadAllEventsCompleted::decode(&self.encode_all_page(&reply, &picked)[..]).unwrap()
    }
}

fn event(n: u8) -> NewEvent {
    NewEvent {
        event_id: vec![n; 16].into(),
        event_type: "t".into(),
        data_content_type: 1,
        metadata_content_type: 0,
        data: vec![n].into(),
        metadata: None,
    }
}

fn numbers(r: &ReadStreamEventsCompleted) -> Vec<i64> {
    r.events
        .iter()
        .map(|e| e.event.as_ref().unwrap().event_number)
        .collect()
}

#[test]
fn expected_versions_follow_the_server() {
    let mut s = Store::default();
    let (w, _) = s.write("a", STREAM_EXISTS, vec![event(0)], 0);
    assert_eq!(w.result, OperationResult::WrongExpectedVersion as i32);
    assert_eq!(w.current_version, Some(-1));
    let (w, _) = s.write("a", NO_STREAM, vec![event(0), event(1)], 0);
    assert_eq!((w.first_event_number, w.last_event_number), (0, 1));
    let (w, _) = s.write("a", NO_STREAM, vec![event(2)], 0);
    assert_eq!(w.result, OperationResult::WrongExpectedVersion as i32);
    assert_eq!(w.first_event_number, INVALID);
    let (w, _) = s.write("a", 0, vec![event(2)], 0);
    assert_eq!(w.current_version, Some(1), "the actual version comes back");
    let (w, _) = s.write("a", 1, vec![event(2)], 0);
    assert_eq!(w.result, OperationResult::Success as i32);
    let (w, _) = s.write("a", ANY, vec![event(3)], 0);
    assert_eq!(w.last_event_number, 3);
    assert!(w.commit_position.unwrap() > 0);
}

#[test]
fn stream_reads_page_forward_and_backward() {
    let mut s = Store::default();
    s.write("a", ANY, (0..5).map(event).collect(), 0);
    let f = s.read_stream("a", 1, 2, true, false);
    assert_eq!(numbers(&f), [1, 2]);
    assert_eq!(
        (f.next_event_number, f.last_event_number, f.is_end_of_stream),
        (3, 4, false)
    );
    let f = s.read_stream("a", 3, 10, true, false);
    assert_eq!(numbers(&f), [3, 4]);
    assert!(f.is_end_of_stream);
    let b = s.read_stream("a", -1, 2, false, false);
    assert_eq!(numbers(&b), [4, 3]);
    assert_eq!((b.next_event_number, b.is_end_of_stream), (2, false));
    let b = s.read_stream("a", 1, 5, false, false);
    assert_eq!(numbers(&b), [1, 0]);
    assert!(b.is_end_of_stream);
    assert_eq!(
        s.read_stream("missing", 0, 1, true, false).result,
        ReadStreamResult::NoStream as i32
    );
    assert_eq!(
        s.read_stream("a", 0, MAX_READ + 1, true, false).result,
        ReadStreamResult::Error as i32
    );
}

#[test]
fn all_reads_and_deletes() {
    let mut s = Store::default();
    s.write("a", ANY, vec![event(0)], 0);
    s.write("b", ANY, vec![event(1)], 0);
    s.write("a", ANY, vec![event(2)], 0);
    let all = s.read_all(0, 10, true, false);
    let streams: Vec<&str> = all
        .events
        .iter()
        .map(|e| e.event.as_ref().unwrap().event_stream_id.as_str())
        .collect();
    assert_eq!(streams, ["a", "b", "a"]);
    let page = s.read_all(0, 2, true, false);
    let rest = s.read_all(page.next_commit_position, 10, true, false);
    assert_eq!(
        rest.events.len(),
        1,
        "the next position continues without overlap"
    );
    let back = s.read_all(-1, 2, false, false);
    assert_eq!(
        back.events[0].commit_position,
        all.events[2].commit_position
    );

    assert_eq!(
        s.delete("a", 0, false, 0).0.result,
        OperationResult::WrongExpectedVersion as i32
    );
    assert_eq!(
        s.delete("a", 1, false, 0).0.result,
        OperationResult::Success as i32
    );
    assert_eq!(
        s.read_stream("a", 0, 10, true, false).result,
        ReadStreamResult::NoStream as i32,
        "soft-deleted"
    );
    let (w, _) = s.write("a", NO_STREAM, vec![event(3)], 0);
    assert_eq!(
        w.first_event_number, 2,
        "a soft-deleted stream continues its numbers"
    );
    assert_eq!(
        s.delete("b", ANY, true, 0).0.result,
        OperationResult::Success as i32
    );
    assert_eq!(
        s.read_stream("b", 0, 10, true, false).result,
        ReadStreamResult::StreamDeleted as i32
    );
    let (w, _) = s.write("b", ANY, vec![event(4)], 0);
    assert_eq!(w.result, OperationResult::StreamDeleted as i32);
    assert_eq!(
        s.read_event("b", 0, false).result,
        ReadEventResult::StreamDeleted as i32
    );
    assert_eq!(
        s.read_event("a", -1, false)
            .event
            .unwrap()
            .event
            .unwrap()
            .event_number,
        2
    );
}

fn set_metadata(s: &mut Store, stream: &str, json: &str) {
    let mut e = event(9);
    e.event_type = "$metadata".into();
    e.data = json.as_bytes().to_vec().into();
    s.write(&metadata_stream(stream), ANY, vec![e], 0);
}

#[test]
fn metadata_limits_what_reads_see() {
    let mut s = Store::default();
    s.write("a", ANY, (0..6).map(event).collect(), now_ms());
    set_metadata(&mut s, "a", r#"{"$maxCount": 3}"#);
    assert_eq!(numbers(&s.read_stream("a", 0, 10, true, false)), [3, 4, 5]);
    set_metadata(&mut s, "a", r#"{"$maxCount": 3, "$tb": 5}"#);
    assert_eq!(numbers(&s.read_stream("a", 0, 10, true, false)), [5]);
    assert_eq!(
        s.read_event("a", 4, false).result,
        ReadEventResult::NotFound as i32
    );
    set_metadata(&mut s, "a", r#"{"$maxAge": 60}"#);
    s.write("old", ANY, vec![event(0)], now_ms() - 120_000);
    s.write("old", ANY, vec![event(1)], now_ms());
    set_metadata(&mut s, "old", r#"{"$maxAge": 60, "custom": "kept"}"#);
    assert_eq!(numbers(&s.read_stream("old", 0, 10, true, false)), [1]);
    // A soft delete keeps the other keys and sets `$tb` past the last event.
    s.delete("old", ANY, false, now_ms());
    let meta = s.metadata("old");
    assert_eq!(meta["custom"], "kept");
    assert_eq!(meta["$tb"], 2);
}

#[test]
fn links_resolve_on_request() {
    let mut s = Store::default();
    s.write("target", ANY, vec![event(0), event(1)], 0);
    s.write(
        "links",
        ANY,
        vec![link_event("target", 1, 0), link_event("target", 7, 1)],
        0,
    );
    let plain = s.read_stream("links", 0, 10, true, false);
    assert_eq!(plain.events[0].event.as_ref().unwrap().event_type, "$>");
    assert!(plain.events[0].link.is_none());
    let resolved = s.read_stream("links", 0, 10, true, true);
    let first = &resolved.events[0];
    assert_eq!(first.event.as_ref().unwrap().event_stream_id, "target");
    assert_eq!(first.event.as_ref().unwrap().event_number, 1);
    assert_eq!(first.link.as_ref().unwrap().event_stream_id, "links");
    let dangling = &resolved.events[1];
    assert!(dangling.event.is_none(), "a dangling link comes back alone");
    assert!(dangling.link.is_some());
}

#[test]
fn hard_delete_takes_the_metadata_stream_with_it() {
    let mut s = Store::default();
    s.write("gone", ANY, vec![event(0)], 0);
    set_metadata(&mut s, "gone", r#"{"owner": "x"}"#);
    assert_eq!(
        s.read_stream("$$gone", 0, 10, true, false).result,
        ReadStreamResult::Success as i32
    );
    assert_eq!(
        s.delete("gone", ANY, true, 0).0.result,
        OperationResult::Success as i32
    );
    assert_eq!(
        s.read_stream("$$gone", 0, 10, true, false).result,
        ReadStreamResult::StreamDeleted as i32,
        "the server deletes the metastream with the stream"
    );
    assert_eq!(
        s.read_event("$$gone", -1, false).result,
        ReadEventResult::StreamDeleted as i32
    );
    let (w, _) = s.write("$$gone", ANY, vec![event(1)], 0);
    assert_eq!(w.result, OperationResult::StreamDeleted as i32);
    // A stream that never had metadata: its metastream is deleted all the same.
    s.write("bare", ANY, vec![event(2)], 0);
    s.delete("bare", ANY, true, 0);
    assert_eq!(
        s.read_stream("$$bare", 0, 10, false, false).result,
        ReadStreamResult::StreamDeleted as i32
    );
}

#[test]
fn no_event_sits_at_the_start_of_the_log() {
    let mut s = Store::default();
    s.write("a", ANY, vec![event(0), event(1)], 0);
    let all = s.read_all(0, 10, true, false);
    assert_eq!(all.events.len(), 2, "from 0/0 nothing is excluded");
    let first = all.events[0].commit_position;
    assert!(first > 0, "the log opens with an epoch record: {first}");
    assert_eq!(all.events[0].prepare_position, first);
    // A read from an event's own position includes it; from just after, it does not.
    assert_eq!(s.read_all(first, 10, true, false).events.len(), 2);
    assert_eq!(s.read_all(first + 1, 10, true, false).events.len(), 1);
}

#[test]
fn all_reads_from_the_end_resolve_it() {
    let mut s = Store::default();
    s.write("a", ANY, (0..3).map(event).collect(), 0);
    let end = s.end_position();
    let back = s.read_all(-1, 2, false, false);
    assert_eq!(
        (back.commit_position, back.prepare_position),
        (end, end),
        "a backward read from End answers with the resolved end as its fromPosition"
    );
    assert_eq!(back.events.len(), 2);
    let forward = s.read_all(-1, 10, true, false);
    assert!(forward.events.is_empty(), "nothing after the end");
    assert_eq!(
        (forward.next_commit_position, forward.next_prepare_position),
        (end, end),
        "the next position of a forward read from End is the end of the log"
    );
    // What was written after such a read is what reading on from its next position sees.
    s.write("a", ANY, vec![event(3)], 0);
    let next = s.read_all(forward.next_commit_position, 10, true, false);
    assert_eq!(next.events.len(), 1);
    assert_eq!(
        next.events[0].event.as_ref().unwrap().event_number,
        3,
        "a subscription from the end sees only what comes after"
    );
}

#[test]
fn backward_stream_reads_past_the_end_read_that_range() {
    let mut s = Store::default();
    s.write("a", ANY, (0..5).map(event).collect(), 0);
    let far = s.read_stream("a", 100, 10, false, false);
    assert_eq!(far.result, ReadStreamResult::Success as i32);
    assert!(numbers(&far).is_empty(), "[91, 100] holds no event");
    assert_eq!(
        (
            far.next_event_number,
            far.last_event_number,
            far.is_end_of_stream
        ),
        (4, 4, false),
        "the next page starts at the last event"
    );
    let overlap = s.read_stream("a", 6, 4, false, false);
    assert_eq!(numbers(&overlap), [4, 3], "[3, 6] holds 3 and 4");
    assert_eq!(
        (overlap.next_event_number, overlap.is_end_of_stream),
        (2, false)
    );
    let rest = s.read_stream("a", overlap.next_event_number, 4, false, false);
    assert_eq!(numbers(&rest), [2, 1, 0]);
    assert!(rest.is_end_of_stream);
}
