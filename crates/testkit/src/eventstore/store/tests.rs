use super::*;

fn event(n: u8) -> NewEvent {
    NewEvent {
        event_id: vec![n; 16],
        event_type: "t".into(),
        data_content_type: 1,
        metadata_content_type: 0,
        data: vec![n],
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
    let f = s.read_stream("a", 1, 2, true);
    assert_eq!(numbers(&f), [1, 2]);
    assert_eq!(
        (f.next_event_number, f.last_event_number, f.is_end_of_stream),
        (3, 4, false)
    );
    let f = s.read_stream("a", 3, 10, true);
    assert_eq!(numbers(&f), [3, 4]);
    assert!(f.is_end_of_stream);
    let b = s.read_stream("a", -1, 2, false);
    assert_eq!(numbers(&b), [4, 3]);
    assert_eq!((b.next_event_number, b.is_end_of_stream), (2, false));
    let b = s.read_stream("a", 1, 5, false);
    assert_eq!(numbers(&b), [1, 0]);
    assert!(b.is_end_of_stream);
    assert_eq!(
        s.read_stream("missing", 0, 1, true).result,
        ReadStreamResult::NoStream as i32
    );
    assert_eq!(
        s.read_stream("a", 0, MAX_READ + 1, true).result,
        ReadStreamResult::Error as i32
    );
}

#[test]
fn all_reads_and_deletes() {
    let mut s = Store::default();
    s.write("a", ANY, vec![event(0)], 0);
    s.write("b", ANY, vec![event(1)], 0);
    s.write("a", ANY, vec![event(2)], 0);
    let all = s.read_all(0, 10, true);
    let streams: Vec<&str> = all
        .events
        .iter()
        .map(|e| e.event.as_ref().unwrap().event_stream_id.as_str())
        .collect();
    assert_eq!(streams, ["a", "b", "a"]);
    let page = s.read_all(0, 2, true);
    let rest = s.read_all(page.next_commit_position, 10, true);
    assert_eq!(
        rest.events.len(),
        1,
        "the next position continues without overlap"
    );
    let back = s.read_all(-1, 2, false);
    assert_eq!(
        back.events[0].commit_position,
        all.events[2].commit_position
    );

    assert_eq!(
        s.delete("a", 0, false).result,
        OperationResult::WrongExpectedVersion as i32
    );
    assert_eq!(
        s.delete("a", 1, false).result,
        OperationResult::Success as i32
    );
    assert_eq!(
        s.read_stream("a", 0, 10, true).result,
        ReadStreamResult::NoStream as i32,
        "soft-deleted"
    );
    let (w, _) = s.write("a", NO_STREAM, vec![event(3)], 0);
    assert_eq!(
        w.first_event_number, 2,
        "a soft-deleted stream continues its numbers"
    );
    assert_eq!(
        s.delete("b", ANY, true).result,
        OperationResult::Success as i32
    );
    assert_eq!(
        s.read_stream("b", 0, 10, true).result,
        ReadStreamResult::StreamDeleted as i32
    );
    let (w, _) = s.write("b", ANY, vec![event(4)], 0);
    assert_eq!(w.result, OperationResult::StreamDeleted as i32);
    assert_eq!(
        s.read_event("b", 0).result,
        ReadEventResult::StreamDeleted as i32
    );
    assert_eq!(
        s.read_event("a", -1)
            .event
            .unwrap()
            .event
            .unwrap()
            .event_number,
        2
    );
}
