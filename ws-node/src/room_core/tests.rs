//! The races the old room code lost, each as an event sequence on one room core.

use super::*;
use shared::ids::UserId;

fn settings(node: &str) -> Settings {
    Settings {
        node: Arc::from(node),
        room: RoomId::parse("r").unwrap(),
        max_members: 100,
        span_timeout: Duration::from_millis(500),
        repair_interval: Duration::from_secs(2),
        unspan_grace: Duration::from_secs(2),
        max_queued: 16,
    }
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

fn join(conn: Conn, u: &str) -> Event {
    Event::Join { conn, user: user(u), info: None }
}

fn publish(conn: Conn, body: &str) -> Event {
    let raw = RawValue::from_string(format!("\"{body}\"")).unwrap();
    let env = frames::message(conn, &RoomId::parse("r").unwrap(), &user("x"), 1, &raw, None);
    Event::Publish { conn, env, id: Some(ClientId::Num(conn)) }
}

fn ops(actions: &[Action]) -> Vec<BusOp> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Bus(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

fn has_sync(actions: &[Action]) -> bool {
    ops(actions)
        .iter()
        .any(|op| matches!(op, BusOp::Send(e) if e.head.starts_with(r#"{"note":"sync""#)))
}

fn admitted(actions: &[Action]) -> Vec<Conn> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Admit { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// A room on node `a` whose member 1 (ann) waits while it opens; the bus said `holder`
/// holds the room too.
fn opening(t: Instant, holder: &str) -> RoomCore {
    let mut r = RoomCore::new(settings("a"));
    r.start(t);
    r.on(join(1, "ann"), t);
    r.on(Event::Registered(Some(vec![holder.into()])), t);
    r
}

/// A room on node `a` whose member 1 (ann) joined alone.
fn local_room(t: Instant) -> RoomCore {
    let mut r = RoomCore::new(settings("a"));
    r.start(t);
    r.on(join(1, "ann"), t);
    let out = r.on(Event::Registered(Some(vec![])), t);
    assert_eq!(admitted(&out), vec![1]);
    assert_eq!(r.mode(), Mode::Local);
    r
}

#[test]
fn no_sync_is_sent_when_switching_to_spanning_fails() {
    let t = Instant::now();
    let mut r = local_room(t);
    let out = r.on(Event::SpanRequest { from: "b".into() }, t);
    assert_eq!(ops(&out), vec![BusOp::Subscribe]);
    let out = r.on(Event::Subscribed(false), t);
    assert!(!has_sync(&out), "the old code confirmed a span it did not make: {out:?}");
    assert_eq!(r.mode(), Mode::Local);
    // Raising the seq failing is the same: no sync, and the subscription is dropped.
    r.on(Event::SpanRequest { from: "b".into() }, t);
    r.on(Event::Subscribed(true), t);
    let out = r.on(Event::SeqRaised(false), t);
    assert!(!has_sync(&out));
    assert!(ops(&out).contains(&BusOp::Unsubscribe));
    assert_eq!(r.mode(), Mode::Local);
}

#[test]
fn a_failed_subscribe_while_opening_is_repaired_by_the_next_tick() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    let out = r.on(Event::Subscribed(false), t);
    assert_eq!(admitted(&out), vec![1], "the joiner is not left waiting");
    assert_eq!(r.mode(), Mode::Local);
    let t2 = t + Duration::from_secs(2);
    let out = r.on(Event::Tick, t2);
    assert_eq!(ops(&out), vec![BusOp::Holders]);
    let out = r.on(Event::Holders(Some(vec!["a".into(), "b".into()])), t2);
    assert_eq!(r.mode(), Mode::Switching, "the split is repaired: {out:?}");
    r.on(Event::Subscribed(true), t2);
    let out = r.on(Event::SeqRaised(true), t2);
    assert!(has_sync(&out));
    assert!(ops(&out).contains(&BusOp::Span { to: "b".into() }));
    assert_eq!(r.mode(), Mode::Spanning);
}

#[test]
fn after_a_bus_restore_a_local_room_held_elsewhere_spans_again() {
    let t = Instant::now();
    let mut r = local_room(t);
    r.on(Event::BusLost, t);
    let out = r.on(Event::BusRestored, t);
    assert_eq!(ops(&out), vec![BusOp::Register]);
    let out = r.on(Event::Registered(Some(vec!["b".into()])), t);
    assert_eq!(r.mode(), Mode::Switching, "{out:?}");
    r.on(Event::Subscribed(true), t);
    let out = r.on(Event::SeqRaised(true), t);
    assert!(ops(&out).contains(&BusOp::Span { to: "b".into() }), "span re-sent: {out:?}");
}

#[test]
fn a_member_joining_a_closing_room_is_welcomed_by_the_reopened_room() {
    let t = Instant::now();
    let mut r = local_room(t);
    let out = r.on(Event::Leave { conn: 1 }, t);
    assert_eq!(r.mode(), Mode::Closing);
    assert!(ops(&out).contains(&BusOp::Unregister));
    let out = r.on(join(2, "bob"), t);
    assert!(admitted(&out).is_empty(), "not into a room that is going away");
    let out = r.on(Event::Unregistered(Some(vec![])), t);
    assert_eq!(ops(&out), vec![BusOp::Register]);
    assert_eq!(r.mode(), Mode::Opening);
    let out = r.on(Event::Registered(Some(vec![])), t);
    assert_eq!(admitted(&out), vec![2]);
    assert_eq!(r.mode(), Mode::Local);
}

#[test]
fn seq_never_moves_backwards_when_a_sync_reports_a_lower_one() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let frame = Utf8Bytes::from_static(r#"{"type":"message","seq":9}"#);
    r.on(Event::BusFrame { seq: 9, origin: Arc::from("c"), conn: 5, frame }, t);
    let sync = Note::Sync { seq: 4, users: vec![] }.envelope().head;
    let out =
        r.on(Event::BusFrame { seq: 0, origin: Arc::from("b"), conn: 0, frame: sync.into() }, t);
    assert_eq!(r.seq(), 9, "the old handshake set seq = 4");
    match out.iter().find(|a| matches!(a, Action::Admit { .. })) {
        Some(Action::Admit { welcome, .. }) => assert_eq!(welcome.seq, 9),
        _ => panic!("admitted: {out:?}"),
    }
}

#[test]
fn after_a_redis_restart_the_bus_seq_is_raised_before_anyone_publishes() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let sync = Note::Sync { seq: 41, users: vec![(user("bob"), None)] }.envelope().head;
    r.on(Event::BusFrame { seq: 0, origin: Arc::from("b"), conn: 0, frame: sync.into() }, t);
    assert_eq!(r.mode(), Mode::Spanning);
    r.on(Event::BusLost, t);
    let out = r.on(Event::BusRestored, t);
    assert_eq!(ops(&out), vec![BusOp::Register, BusOp::RaiseSeq(41), BusOp::CatchUp { after: 41 }]);
    let out = r.on(publish(1, "hi"), t);
    assert!(ops(&out).is_empty(), "a publish waits for the raise: {out:?}");
    let out = r.on(Event::SeqRaised(true), t);
    assert!(ops(&out).iter().any(|o| matches!(o, BusOp::Publish { .. })), "{out:?}");
}

#[test]
fn a_joiner_waits_on_a_dead_holder_only_for_the_span_timeout() {
    let t = Instant::now();
    let mut r = opening(t, "dead");
    r.on(Event::Subscribed(true), t);
    assert_eq!(r.poll_timeout(), Some(t + Duration::from_millis(500)));
    let out = r.on(Event::Tick, t + Duration::from_millis(500));
    assert_eq!(admitted(&out), vec![1], "welcomed after 0.5 s, not 3 s");
    assert!(out.iter().any(|a| matches!(a, Action::Suspect { node } if node == "dead")));
    assert!(ops(&out).contains(&BusOp::Prune("dead".into())));
    assert_eq!(r.mode(), Mode::Local, "nobody synced: the room is ours");
}

#[test]
fn a_holder_another_room_found_dead_is_not_waited_for() {
    let t = Instant::now();
    let mut r = opening(t, "dead");
    r.on(Event::Forget { node: "dead".into() }, t);
    let out = r.on(Event::Subscribed(true), t);
    assert_eq!(admitted(&out), vec![1]);
}

#[test]
fn two_nodes_opening_at_once_do_not_wait_for_each_other() {
    let t = Instant::now();
    let mut a = opening(t, "b");
    let out = a.on(Event::SpanRequest { from: "b".into() }, t);
    assert!(!has_sync(&out), "not before it listens");
    let out = a.on(Event::Subscribed(true), t);
    assert!(has_sync(&out), "then at once: {out:?}");
    assert_eq!(a.mode(), Mode::Opening, "still waiting for b's sync");
}

#[test]
fn a_member_of_two_nodes_is_one_presence() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let note = |n: Note| Event::BusFrame {
        seq: 0,
        origin: Arc::from("b"),
        conn: 0,
        frame: n.envelope().head.into(),
    };
    r.on(note(Note::Presence { user: user("bob"), present: true, info: None }), t);
    let out = r.on(note(Note::Sync { seq: 0, users: vec![(user("bob"), None)] }), t);
    match out.iter().find(|a| matches!(a, Action::Admit { .. })) {
        Some(Action::Admit { welcome, .. }) => {
            let users: Vec<_> = welcome.members.keys().map(|u| u.to_string()).collect();
            assert_eq!(users, ["ann", "bob"]);
            assert_eq!(welcome.members.get(&user("bob")).unwrap().holders, 1);
        }
        _ => panic!("{out:?}"),
    }
    let out = r.on(note(Note::Presence { user: user("bob"), present: true, info: None }), t);
    assert!(out.is_empty(), "a repeated note changes nothing: {out:?}");
}

#[test]
fn a_gap_on_the_bus_is_caught_up_from_the_log_in_order() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let sync = Note::Sync { seq: 0, users: vec![] }.envelope().head;
    r.on(Event::BusFrame { seq: 0, origin: Arc::from("b"), conn: 0, frame: sync.into() }, t);
    let msg = |s: u64| Event::BusFrame {
        seq: s,
        origin: Arc::from("b"),
        conn: 9,
        frame: Utf8Bytes::from(format!("m{s}")),
    };
    let delivered = |out: &[Action]| -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver { frame, .. } => Some(frame.to_string()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(delivered(&r.on(msg(1), t)), ["m1"]);
    let out = r.on(msg(4), t);
    assert_eq!(ops(&out), vec![BusOp::CatchUp { after: 1 }]);
    assert!(delivered(&r.on(msg(5), t)).is_empty(), "held while catching up");
    let log = vec![(2, Utf8Bytes::from("m2")), (3, Utf8Bytes::from("m3")), (4, "m4".into())];
    assert_eq!(delivered(&r.on(Event::CaughtUp(Some(log)), t)), ["m2", "m3", "m4", "m5"]);
    assert!(matches!(r.on(msg(5), t)[..], [Action::Duplicate { seq: 5 }]));
}
