//! Read markers, delivered markers and history on join, as event sequences on one core.

use super::*;

fn read(conn: Conn, seq: u64) -> Event {
    Event::Read { conn, seq }
}

fn with_history(conn: Conn, u: &str, history: usize) -> Event {
    Event::Join { conn, user: user(u), info: None, resume: None, history }
}

fn read_frame(u: &str, seq: u64) -> String {
    format!(r#"{{"type":"read","user":"{u}","seq":{seq}}}"#)
}

fn reads_of(r: &RoomCore) -> Vec<(String, u64)> {
    r.markers().read.iter().map(|(u, s)| (u.to_string(), *s)).collect()
}

/// The notes an event's actions send on the room's channel.
fn notes(actions: &[Action]) -> Vec<Note> {
    ops(actions)
        .iter()
        .filter_map(|op| match op {
            BusOp::Send(e) if e.head.starts_with(Note::PREFIX) => {
                serde_json::from_str(&e.head).ok()
            }
            _ => None,
        })
        .collect()
}

/// Message `seq` on the room's channel, stamped by node b.
fn from_b(seq: u64) -> Event {
    Event::BusFrame { seq, origin: Arc::from("b"), conn: 9, frame: message_frame(seq) }
}

fn note_from(from: &str, n: Note) -> Event {
    Event::BusFrame { seq: 0, origin: Arc::from(from), conn: 0, frame: n.envelope().head.into() }
}

#[test]
fn a_read_marker_reaches_the_other_members_and_only_rises() {
    let t = Instant::now();
    let mut r = chatted(t, 3);
    r.on(join(2, "bob"), t);
    let out = r.on(read(1, 2), t);
    assert!(
        matches!(&out[..], [Action::Deliver { to: To::AllBut(1), frame }] if frame.as_str() == read_frame("ann", 2)),
        "{out:?}"
    );
    assert!(delivered(&r.on(read(1, 2), t)).is_empty(), "the same marker again is no news");
    assert!(delivered(&r.on(read(1, 1), t)).is_empty(), "a lower marker is ignored");
    assert_eq!(reads_of(&r), [("ann".to_string(), 2)]);
    let out = r.on(read(2, 4), t);
    match &out[..] {
        [Action::Deliver { to: To::One(2), frame }] => {
            let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["code"], "bad_read");
        }
        other => panic!("a read above the room's seq: {other:?}"),
    }
    assert_eq!(reads_of(&r), [("ann".to_string(), 2)], "a refused read changes nothing");
    assert!(r.on(read(99, 1), t).is_empty(), "a connection that is no member is ignored");
}

#[test]
fn a_joiner_learns_the_read_markers_in_its_welcome() {
    let t = Instant::now();
    let mut r = chatted(t, 3);
    r.on(join(2, "bob"), t);
    r.on(read(1, 3), t);
    r.on(read(2, 1), t);
    let out = r.on(join(3, "cy"), t);
    let (w, _) = welcome_of(&out);
    let json: serde_json::Value = serde_json::from_str(&w.to_json()).unwrap();
    assert_eq!(json["reads"], serde_json::json!({"ann": 3, "bob": 1}));
    let out = local_room(t).on(join(2, "bob"), t);
    let (w, _) = welcome_of(&out);
    assert!(!w.to_json().contains("reads"), "no markers, no field");
}

#[test]
fn a_spanning_room_carries_read_markers_over_the_channel() {
    let t = Instant::now();
    let mut r = spanning(t, 0, &["bob"]);
    r.on(from_b(1), t);
    r.on(from_b(2), t);
    let out = r.on(read(1, 2), t);
    assert_eq!(notes(&out), [Note::Read { user: user("ann"), seq: 2 }]);
    // Node b's user: told to every member here.
    let out = r.on(note_from("b", Note::Read { user: user("bob"), seq: 1 }), t);
    assert_eq!(delivered(&out), [read_frame("bob", 1)]);
    assert!(r.on(note_from("b", Note::Read { user: user("bob"), seq: 1 }), t).is_empty());
    assert!(
        r.on(note_from("b", Note::Read { user: user("bob"), seq: 7 }), t).is_empty(),
        "a marker above every seq this node saw is not believed"
    );
    // Our own note coming back changes nothing.
    assert!(r.on(note_from("a", Note::Read { user: user("ann"), seq: 2 }), t).is_empty());
    // The sync a span request (a repair, a restore) brings carries every marker, held ones
    // too (the receiver holds them as well): a node that joins later may have no one else
    // to learn them from.
    let out = r.on(Event::SpanRequest { from: "c".into() }, t);
    match &notes(&out)[..] {
        [Note::Sync { reads, .. }] => {
            let mut reads = reads.clone();
            reads.sort();
            assert_eq!(reads, [(user("ann"), 2), (user("bob"), 7)]);
        }
        other => panic!("{other:?}"),
    }
    // A joining node learns them from a holder's sync.
    let mut j = opening(t, "b");
    j.on(Event::Subscribed(true), t);
    let sync =
        Note::Sync { seq: 2, users: vec![(user("bob"), None)], reads: vec![(user("bob"), 2)] };
    let out = j.on(note_from("b", sync), t);
    read_history(&mut j, out, 2, t);
    assert_eq!(reads_of(&j), [("bob".to_string(), 2)]);
}

#[test]
fn a_marker_for_a_message_still_being_caught_up_waits_for_it() {
    let t = Instant::now();
    let mut r = spanning(t, 0, &["bob"]);
    r.on(from_b(1), t);
    // Message 2 was lost on the way: 3 is held while 2 is caught up; bob read 3.
    r.on(from_b(3), t);
    let out = r.on(note_from("b", Note::Read { user: user("bob"), seq: 3 }), t);
    assert!(delivered(&out).is_empty(), "not before message 3: {out:?}");
    assert!(reads_of(&r).is_empty(), "held, not yet a marker");
    let out = r.on(note_from("b", Note::Read { user: user("cy"), seq: 4 }), t);
    assert!(delivered(&out).is_empty());
    let log = vec![(2, message_frame(2))];
    let out = r.on(Event::CaughtUp(Some(log)), t);
    let m = |s: u64| message_frame(s).to_string();
    assert_eq!(delivered(&out), [m(2), m(3), read_frame("bob", 3)]);
    let out = r.on(from_b(4), t);
    assert_eq!(delivered(&out), [message_frame(4).to_string(), read_frame("cy", 4)]);
}

#[test]
fn a_read_while_the_bus_is_down_goes_out_with_the_resync() {
    let t = Instant::now();
    let mut r = spanning(t, 0, &["bob"]);
    r.on(Event::BusFrame { seq: 1, origin: Arc::from("b"), conn: 9, frame: message_frame(1) }, t);
    r.on(Event::BusLost, t);
    let out = r.on(read(1, 1), t);
    assert!(notes(&out).is_empty(), "nothing to send it on");
    assert_eq!(delivered(&out), [read_frame("ann", 1)], "to the others here, and kept");
    r.on(Event::BusRestored, t);
    let out = r.on(Event::SeqRaised(true), t);
    match &notes(&out)[..] {
        [Note::Sync { reads, .. }] => assert_eq!(reads, &[(user("ann"), 1)]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delivered_markers_follow_the_users_and_go_when_the_room_closes() {
    let t = Instant::now();
    let mut r = chatted(t, 2);
    r.on(join(2, "bob"), t);
    r.on(publish(1, "m"), t);
    r.on(Event::Leave { conn: 2 }, t);
    r.on(publish(1, "m"), t);
    let d: Vec<(String, u64)> =
        r.markers().delivered.iter().map(|(u, s)| (u.to_string(), *s)).collect();
    assert_eq!(d, [("ann".to_string(), 4), ("bob".to_string(), 3)]);
    r.on(read(1, 4), t);
    let out = r.on(Event::Leave { conn: 1 }, t);
    assert_eq!(r.mode(), Mode::Closing, "{out:?}");
    assert_eq!(r.markers().delivered.len(), 2, "kept while the room lives");
    r.on(Event::Unregistered(Some(vec![])), t);
    assert_eq!(r.mode(), Mode::Closed);
    assert_eq!(r.markers(), crate::markers::Snapshot::default());
}

#[test]
fn a_room_keeps_markers_for_a_bounded_number_of_users() {
    let t = Instant::now();
    let mut r = RoomCore::new(Settings { max_markers: 2, ..settings("a") });
    r.start(t);
    r.on(join(1, "ann"), t);
    let out = r.on(Event::Registered(Some(vec![])), t);
    read_history(&mut r, out, 0, t);
    r.on(publish(1, "m"), t);
    for (c, u) in [(2, "bob"), (3, "cy"), (4, "dee")] {
        r.on(join(c, u), t);
        r.on(read(c, 1), t);
        r.on(Event::Leave { conn: c }, t);
    }
    r.on(read(1, 1), t);
    assert_eq!(r.markers().read.len(), 2);
    assert!(r.markers().read.contains_key(&user("ann")), "the member here is kept");
    assert!(r.markers().delivered.len() <= 3, "two who left, and ann who is here");
}

#[test]
fn a_first_connect_with_history_gets_the_last_messages_after_its_welcome() {
    let t = Instant::now();
    let mut r = chatted(t, 6);
    let out = r.on(with_history(2, "bob", 3), t);
    let (w, replay) = welcome_of(&out);
    assert!(!w.recovered);
    assert_eq!((w.seq, w.history), (6, 3));
    assert_eq!(seqs_of(&replay), [4, 5, 6]);
    assert!(w.to_json().contains(r#""history":3"#));
    // Capped by the room's max_recovery (5 here).
    let out = r.on(with_history(3, "cy", 1000), t);
    let (w, replay) = welcome_of(&out);
    assert_eq!((w.history, seqs_of(&replay)), (5, vec![2, 3, 4, 5, 6]));
    // None asked: none given, no field.
    let out = r.on(with_history(4, "dee", 0), t);
    let (w, replay) = welcome_of(&out);
    assert!(replay.is_empty() && !w.to_json().contains("history"));
    // A resume ignores it: the resume decides what follows.
    let ev = Event::Join {
        conn: 5,
        user: user("eve"),
        info: None,
        resume: Some(Resume { since: 5, epoch: "e".into() }),
        history: 4,
    };
    let out = r.on(ev, t);
    let (w, replay) = welcome_of(&out);
    assert!(w.recovered);
    assert_eq!((w.history, seqs_of(&replay)), (0, vec![6]));
    // An empty room has nothing to show.
    let mut empty = local_room(t);
    let out = empty.on(with_history(2, "bob", 10), t);
    let (w, replay) = welcome_of(&out);
    assert!(replay.is_empty() && w.history == 0);
}

/// The markers an event's actions queue for the archive: (user, read, delivered).
fn marks(actions: &[Action]) -> Vec<(String, Option<u64>, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Mark { user, read, delivered } => Some((user.to_string(), *read, *delivered)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_archived_room_queues_markers_when_a_user_reads_and_when_it_leaves() {
    let t = Instant::now();
    let mut plain = chatted(t, 2);
    plain.on(join(2, "bob"), t);
    assert!(marks(&plain.on(read(2, 2), t)).is_empty(), "a room not archived queues none");
    let mut r = local_room_with(Settings { archive: true, ..settings("a") }, t);
    r.on(join(2, "bob"), t);
    for i in 0..3 {
        r.on(publish(1, &format!("m{i}")), t);
    }
    let bob = |read, delivered| vec![("bob".to_string(), read, delivered)];
    assert_eq!(marks(&r.on(read(2, 2), t)), bob(Some(2), 3));
    assert!(marks(&r.on(read(2, 1), t)).is_empty(), "a marker that did not rise is no news");
    assert!(marks(&r.on(read(2, 9), t)).is_empty(), "nor is a refused one");
    r.on(publish(1, "m"), t);
    assert_eq!(marks(&r.on(Event::Leave { conn: 2 }, t)), bob(None, 4));
    // A user with a second connection here has not left.
    r.on(join(3, "cat"), t);
    r.on(join(4, "cat"), t);
    assert!(marks(&r.on(Event::Leave { conn: 3 }, t)).is_empty());
    assert_eq!(marks(&r.on(Event::Leave { conn: 4 }, t)), [("cat".to_string(), None, 4)]);
}
