//! The races the old room code lost, each as an event sequence on one room core.

use super::*;
use shared::ids::UserId;

mod reads;

fn settings(node: &str) -> Settings {
    Settings {
        node: Arc::from(node),
        room: RoomId::parse("r").unwrap(),
        max_members: 100,
        span_timeout: Duration::from_millis(500),
        repair_interval: Duration::from_secs(2),
        unspan_grace: Duration::from_secs(2),
        max_queued: 16,
        history: crate::history::Policy { size: 10, ttl: Duration::from_secs(60) },
        max_recovery: 5,
        durable: false,
        max_markers: 100,
        archive: false,
        archive_days: None,
    }
}

/// What the store answers a room that opens: nothing held yet.
fn loaded(seq: u64) -> Event {
    Event::HistoryLoaded(crate::history::Loaded { epoch: "e".into(), seq, entries: Vec::new() })
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

fn join(conn: Conn, u: &str) -> Event {
    Event::Join { conn, user: user(u), info: None, resume: None, history: 0 }
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

/// Answers the history read an opening room asks for last (the store held up to `seq`),
/// returning every action.
fn read_history(r: &mut RoomCore, mut out: Vec<Action>, seq: u64, t: Instant) -> Vec<Action> {
    if ops(&out).iter().any(|o| matches!(o, BusOp::LoadHistory { .. })) {
        out.extend(r.on(loaded(seq), t));
    }
    out
}

/// Node `from`'s sync note on the room's channel.
fn sync_from(from: &str, seq: u64, users: &[&str]) -> Event {
    let users = users.iter().map(|u| (user(u), None)).collect();
    let frame = Note::Sync { seq, users, reads: Vec::new() }.envelope().head.into();
    Event::BusFrame { seq: 0, origin: Arc::from(from), conn: 0, frame }
}

/// A stamped message frame with `seq` (what the bus or the store hands a room).
fn message_frame(seq: u64) -> Utf8Bytes {
    let f = format!(r#"{{"type":"message","room":"r","from":"x","seq":{seq},"ts":1,"body":1}}"#);
    Utf8Bytes::from(f)
}

/// The frames an event's actions deliver, as text.
fn delivered(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { frame, .. } => Some(frame.to_string()),
            _ => None,
        })
        .collect()
}

/// A room on node `a` spanning with `b`, whose sync said `seq` and `users`; member 1 (ann)
/// is welcomed.
fn spanning(t: Instant, seq: u64, users: &[&str]) -> RoomCore {
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let out = r.on(sync_from("b", seq, users), t);
    read_history(&mut r, out, seq, t);
    assert_eq!(r.mode(), Mode::Spanning);
    r
}

/// A room on node `a` whose member 1 (ann) waits while it opens; the bus said `holder`
/// holds the room too.
fn opening(t: Instant, holder: &str) -> RoomCore {
    opening_with(settings("a"), t, holder)
}

fn opening_with(s: Settings, t: Instant, holder: &str) -> RoomCore {
    let mut r = RoomCore::new(s);
    r.start(t);
    r.on(join(1, "ann"), t);
    r.on(Event::Registered(Some(vec![holder.into()])), t);
    r
}

/// A room on node `a` whose member 1 (ann) joined alone.
fn local_room(t: Instant) -> RoomCore {
    local_room_with(settings("a"), t)
}

fn local_room_with(s: Settings, t: Instant) -> RoomCore {
    let mut r = RoomCore::new(s);
    r.start(t);
    r.on(join(1, "ann"), t);
    let out = r.on(Event::Registered(Some(vec![])), t);
    assert!(admitted(&out).is_empty(), "welcomed only once the history is read");
    let out = read_history(&mut r, out, 0, t);
    assert_eq!(admitted(&out), vec![1]);
    assert_eq!(r.mode(), Mode::Local);
    r
}

#[test]
fn no_sync_is_sent_when_switching_to_spanning_fails() {
    let t = Instant::now();
    let mut r = local_room(t);
    let out = r.on(Event::SpanRequest { from: "b".into() }, t);
    assert_eq!(ops(&out), vec![BusOp::FlushHistory, BusOp::Subscribe]);
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
    let out = read_history(&mut r, out, 0, t);
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
    let out = read_history(&mut r, out, 0, t);
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
    let out = r.on(sync_from("b", 4, &[]), t);
    let out = read_history(&mut r, out, 4, t);
    assert_eq!(r.seq(), 9, "the old handshake set seq = 4");
    match out.iter().find(|a| matches!(a, Action::Admit { .. })) {
        Some(Action::Admit { welcome, .. }) => assert_eq!(welcome.seq, 9),
        _ => panic!("admitted: {out:?}"),
    }
}

#[test]
fn after_a_redis_restart_the_bus_seq_is_raised_before_anyone_publishes() {
    let t = Instant::now();
    let mut r = spanning(t, 41, &["bob"]);
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
    let out = read_history(&mut r, out, 0, t);
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
    let out = read_history(&mut r, out, 0, t);
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
fn a_room_asked_to_span_while_it_opens_alone_switches_once_open() {
    // The asker waits for our sync and would take us for dead without it (a split).
    let t = Instant::now();
    let mut a = RoomCore::new(settings("a"));
    a.start(t);
    a.on(join(1, "ann"), t);
    let out = a.on(Event::Registered(Some(vec![])), t);
    assert!(a.on(Event::SpanRequest { from: "b".into() }, t).is_empty(), "not before it listens");
    let out = read_history(&mut a, out, 0, t);
    assert_eq!(admitted(&out), vec![1]);
    assert_eq!(a.mode(), Mode::Switching);
    assert!(ops(&out).contains(&BusOp::Subscribe), "{out:?}");
    a.on(Event::Subscribed(true), t);
    assert!(has_sync(&a.on(Event::SeqRaised(true), t)));
    assert_eq!(a.mode(), Mode::Spanning);
}

#[test]
fn a_room_opening_that_answered_a_span_opens_spanning_when_its_holder_is_dead() {
    // b listens and took our sync: were we to open alone, b would span with a room that
    // stamps its own seq (a split).
    let t = Instant::now();
    let mut a = opening(t, "dead");
    a.on(Event::Subscribed(true), t);
    assert!(has_sync(&a.on(Event::SpanRequest { from: "b".into() }, t)));
    let out = a.on(Event::Tick, t + Duration::from_millis(500));
    assert!(ops(&out).contains(&BusOp::Prune("dead".into())));
    assert!(!ops(&out).contains(&BusOp::Unsubscribe), "{out:?}");
    let out = read_history(&mut a, out, 0, t);
    assert_eq!(admitted(&out), vec![1]);
    assert_eq!(a.mode(), Mode::Spanning);
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
    let out =
        r.on(note(Note::Sync { seq: 0, users: vec![(user("bob"), None)], reads: Vec::new() }), t);
    let out = read_history(&mut r, out, 0, t);
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
    let mut r = spanning(t, 0, &[]);
    let msg = |s: u64| Event::BusFrame {
        seq: s,
        origin: Arc::from("b"),
        conn: 9,
        frame: Utf8Bytes::from(format!("m{s}")),
    };
    assert_eq!(delivered(&r.on(msg(1), t)), ["m1"]);
    let out = r.on(msg(4), t);
    assert_eq!(ops(&out), vec![BusOp::CatchUp { after: 1 }]);
    assert!(delivered(&r.on(msg(5), t)).is_empty(), "held while catching up");
    let log = vec![(2, Utf8Bytes::from("m2")), (3, Utf8Bytes::from("m3")), (4, "m4".into())];
    assert_eq!(delivered(&r.on(Event::CaughtUp(Some(log)), t)), ["m2", "m3", "m4", "m5"]);
    assert!(matches!(r.on(msg(5), t)[..], [Action::Duplicate { seq: 5 }]));
}

// ---- history and resume ----------------------------------------------------------------

fn resume(conn: Conn, u: &str, since: u64, epoch: &str) -> Event {
    let resume = Some(Resume { since, epoch: epoch.into() });
    Event::Join { conn, user: user(u), info: None, resume, history: 0 }
}

fn welcome_of(out: &[Action]) -> (&Welcome, Vec<String>) {
    match out.iter().find(|a| matches!(a, Action::Admit { .. })) {
        Some(Action::Admit { welcome, replay, .. }) => {
            (welcome, replay.iter().map(|f| f.to_string()).collect())
        }
        _ => panic!("not admitted: {out:?}"),
    }
}

fn seqs_of(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| serde_json::from_str::<serde_json::Value>(f).unwrap()["seq"].as_u64().unwrap())
        .collect()
}

/// A local room with `n` messages published by member 1.
fn chatted(t: Instant, n: u64) -> RoomCore {
    let mut r = local_room(t);
    for i in 0..n {
        r.on(publish(1, &format!("m{i}")), t);
    }
    r
}

#[test]
fn a_resume_replays_what_it_missed_then_goes_live() {
    let t = Instant::now();
    let mut r = chatted(t, 6);
    let out = r.on(resume(2, "bob", 3, "e"), t);
    let (w, replay) = welcome_of(&out);
    assert!(w.recovered);
    assert_eq!((w.seq, &*w.epoch), (6, "e"));
    assert_eq!(seqs_of(&replay), [4, 5, 6]);
    let first = r.on(join(3, "cy"), t);
    let (w, replay) = welcome_of(&first);
    assert!(!w.recovered && replay.is_empty(), "a first connect recovers nothing");
}

#[test]
fn a_resume_that_cannot_be_whole_says_so_and_replays_nothing() {
    let t = Instant::now();
    let mut r = chatted(t, 12);
    // Another epoch, older than the history (10 held), more than max_recovery (5), ahead.
    for (conn, since, epoch) in [(2, 11, "other"), (3, 1, "e"), (4, 6, "e"), (5, 13, "e")] {
        let out = r.on(resume(conn, "bob", since, epoch), t);
        let (w, replay) = welcome_of(&out);
        assert!(!w.recovered, "since {since} epoch {epoch}");
        assert!(replay.is_empty());
        assert_eq!(w.seq, 12);
    }
    let out = r.on(resume(6, "bob", 12, "e"), t);
    assert!(welcome_of(&out).0.recovered, "nothing missed is recovered");
}

#[test]
fn history_outlives_its_ttl_nowhere() {
    let t = Instant::now();
    let mut r = chatted(t, 3);
    let later = t + Duration::from_secs(61);
    let out = r.on(resume(2, "bob", 1, "e"), later);
    assert!(!welcome_of(&out).0.recovered, "the messages are older than the 60 s TTL");
    assert!(r.history().is_empty());
}

#[test]
fn a_reopened_room_continues_the_stored_epoch_and_seq() {
    let t = Instant::now();
    let mut r = RoomCore::new(settings("a"));
    r.start(t);
    r.on(resume(1, "ann", 40, "e"), t);
    r.on(Event::Registered(Some(vec![])), t);
    let frame = |s: u64| (s, t, message_frame(s));
    let l =
        crate::history::Loaded { epoch: "e".into(), seq: 42, entries: vec![frame(41), frame(42)] };
    let out = r.on(Event::HistoryLoaded(l), t);
    let (w, replay) = welcome_of(&out);
    assert!(w.recovered, "the next owner replays what the last one stored");
    assert_eq!(seqs_of(&replay), [41, 42]);
    let out = r.on(publish(1, "next"), t);
    let stored: Vec<u64> = out
        .iter()
        .filter_map(|a| match a {
            Action::Store { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(stored, [43], "seq goes on from the store, and the message is stored");
}

#[test]
fn a_durable_room_delivers_and_acks_only_once_stored() {
    let t = Instant::now();
    let mut r = RoomCore::new(Settings { durable: true, ..settings("a") });
    r.start(t);
    r.on(join(1, "ann"), t);
    let out = r.on(Event::Registered(Some(vec![])), t);
    read_history(&mut r, out, 0, t);
    let out = r.on(publish(1, "a"), t);
    assert!(out.iter().all(|a| !matches!(a, Action::Deliver { .. })), "{out:?}");
    r.on(publish(1, "b"), t);
    let out = r.on(join(2, "bob"), t);
    assert_eq!(welcome_of(&out).0.seq, 0, "a joiner's welcome is before what waits");
    let frames = delivered(&r.on(Event::Persisted { upto: 1, ok: true }, t));
    assert_eq!(frames.len(), 2, "message 1 and its ack: {frames:?}");
    assert!(frames[1].contains(r#""type":"ack""#));
    // The store failing: the message still goes out, with an error instead of an ack.
    let frames = delivered(&r.on(Event::Persisted { upto: 2, ok: false }, t));
    assert!(frames[0].contains(r#""seq":2"#) && frames[1].contains("degraded"), "{frames:?}");
    assert_eq!(r.delivered(), 2);
}

#[test]
fn what_the_channel_carries_while_the_history_is_read_is_merged_once() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let out = r.on(sync_from("b", 2, &[]), t);
    assert!(ops(&out).iter().any(|o| matches!(o, BusOp::LoadHistory { .. })));
    let msg = message_frame;
    // 3 is in the store and on the channel; 4 only on the channel.
    for s in [3, 4] {
        r.on(Event::BusFrame { seq: s, origin: Arc::from("b"), conn: 9, frame: msg(s) }, t);
    }
    let entries = (1..=3).map(|s| (s, t, msg(s))).collect();
    let l = crate::history::Loaded { epoch: "e".into(), seq: 3, entries };
    let out = r.on(Event::HistoryLoaded(l), t);
    assert_eq!(r.mode(), Mode::Spanning);
    assert_eq!(welcome_of(&out).0.seq, 4);
    assert_eq!((r.history().first(), r.history().last()), (Some(1), Some(4)));
    assert!(!out.iter().any(|a| matches!(a, Action::Gap { .. })), "{out:?}");
}

fn post(n: u64, body: &str) -> Event {
    let raw = RawValue::from_string(format!("\"{body}\"")).unwrap();
    let env = frames::message(POST | n, &RoomId::parse("r").unwrap(), &user("api"), 1, &raw, None);
    Event::Post { post: POST | n, env }
}

fn posted(actions: &[Action]) -> Vec<(Conn, Result<u64, PostError>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Posted { post, result } => Some((*post, *result)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_post_to_an_empty_room_opens_it_stamps_the_next_seq_and_closes_it_after() {
    let t = Instant::now();
    let mut r = RoomCore::new(settings("a"));
    r.start(t);
    let out = r.on(post(1, "shipped"), t);
    assert!(posted(&out).is_empty(), "waits for the room to open: {out:?}");
    r.on(Event::Registered(Some(vec![])), t);
    let out = r.on(loaded(7), t);
    assert_eq!(posted(&out), vec![(POST | 1, Ok(8))], "the room's next seq: {out:?}");
    assert!(out.iter().any(|a| matches!(a, Action::Store { seq: 8, .. })), "kept in history");
    assert!(
        !out.iter().any(|a| matches!(a, Action::Deliver { frame, .. } if frame.contains("ack"))),
        "a post gets no ack frame: {out:?}"
    );
    assert_eq!(r.mode(), Mode::Closing, "nobody is here: it closes once answered");
    let out = r.on(post(2, "again"), t);
    assert!(posted(&out).is_empty(), "a post while closing waits");
    let out = r.on(Event::Unregistered(Some(vec![])), t);
    assert_eq!(r.mode(), Mode::Opening, "and opens the room again: {out:?}");
    assert!(ops(&out).contains(&BusOp::Register));
    r.on(Event::Registered(Some(vec![])), t);
    let out = r.on(loaded(8), t);
    assert_eq!(posted(&out), vec![(POST | 2, Ok(9))]);
}

#[test]
fn a_post_to_a_member_room_is_delivered_to_all_with_the_next_seq() {
    let t = Instant::now();
    let mut r = RoomCore::new(settings("a"));
    r.start(t);
    r.on(join(1, "ann"), t);
    r.on(Event::Registered(Some(vec![])), t);
    r.on(loaded(0), t);
    r.on(publish(1, "hi"), t);
    let out = r.on(post(1, "from the back end"), t);
    assert_eq!(posted(&out), vec![(POST | 1, Ok(2))]);
    assert!(out.iter().any(|a| matches!(a, Action::Deliver { to: To::All, frame }
        if frame.contains(r#""seq":2"#) && frame.contains("from the back end"))));
    assert_eq!(r.mode(), Mode::Local);
}

#[test]
fn a_post_to_a_spanning_room_goes_through_the_bus_and_is_answered_with_its_seq() {
    let t = Instant::now();
    let mut r = spanning(t, 5, &["bob"]);
    let out = r.on(post(3, "x"), t);
    assert!(
        ops(&out).iter().any(|o| matches!(o, BusOp::Publish { conn, .. } if *conn == POST | 3)),
        "{out:?}"
    );
    assert!(posted(&out).is_empty(), "answered once the bus stamped it");
    let out = r.on(Event::Published { conn: POST | 3, id: None, seq: Some(6) }, t);
    assert_eq!(posted(&out), vec![(POST | 3, Ok(6))]);
    r.on(Event::BusLost, t);
    let out = r.on(post(4, "y"), t);
    assert_eq!(posted(&out), vec![(POST | 4, Err(PostError::Degraded))]);
}

#[test]
fn a_durable_room_answers_a_post_once_stored() {
    let t = Instant::now();
    for (ok, want) in [(true, Ok(1)), (false, Err(PostError::NotStored(1)))] {
        let mut r = RoomCore::new(Settings { durable: true, ..settings("a") });
        r.start(t);
        r.on(post(1, "a"), t);
        r.on(Event::Registered(Some(vec![])), t);
        let out = r.on(loaded(0), t);
        assert!(posted(&out).is_empty(), "not before the store has it: {out:?}");
        assert_eq!(r.mode(), Mode::Local, "kept open while the post waits");
        let out = r.on(Event::Persisted { upto: 1, ok }, t);
        assert_eq!(posted(&out), vec![(POST | 1, want)]);
        assert_eq!(r.mode(), Mode::Closing);
    }
}

fn hooks(actions: &[Action]) -> Vec<Hook> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Hook(h) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn hooks_are_raised_where_the_change_happened_once_for_the_fleet() {
    let t = Instant::now();
    let mut r = opening(t, "b");
    r.on(Event::Subscribed(true), t);
    let note = |n: Note| Event::BusFrame {
        seq: 0,
        origin: Arc::from("b"),
        conn: 0,
        frame: n.envelope().head.into(),
    };
    // bob is on node b: the room is not empty, so ann's join raises no occupied here.
    let out =
        r.on(note(Note::Sync { seq: 0, users: vec![(user("bob"), None)], reads: Vec::new() }), t);
    let out = read_history(&mut r, out, 0, t);
    assert_eq!(hooks(&out), vec![Hook::Joined { user: user("ann"), info: None }]);
    // bob leaving is node b's to raise.
    let out = r.on(note(Note::Presence { user: user("bob"), present: false, info: None }), t);
    assert!(hooks(&out).is_empty(), "{out:?}");
    let out = r.on(join(2, "ann"), t);
    assert!(hooks(&out).is_empty(), "a second tab is no join: {out:?}");
    r.on(Event::Leave { conn: 2 }, t);
    let out = r.on(Event::Leave { conn: 1 }, t);
    assert_eq!(hooks(&out), vec![Hook::Left { user: user("ann") }, Hook::Vacated]);

    let mut alone = RoomCore::new(settings("a"));
    alone.start(t);
    alone.on(join(1, "cy"), t);
    alone.on(Event::Registered(Some(vec![])), t);
    let out = alone.on(loaded(0), t);
    assert_eq!(hooks(&out), vec![Hook::Occupied, Hook::Joined { user: user("cy"), info: None }]);
}

// ---- archive -----------------------------------------------------------------------------

fn stored(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn archived(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Archive { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn an_archived_room_stores_what_it_stamps_even_with_history_off() {
    let t = Instant::now();
    let off = crate::history::Policy { size: 0, ..crate::history::Policy::default() };
    let mut plain = local_room_with(Settings { history: off, ..settings("a") }, t);
    assert!(stored(&plain.on(publish(1, "x"), t)).is_empty(), "no history, no archive: nothing");
    let s = Settings { history: off, archive: true, ..settings("a") };
    let mut r = local_room_with(s, t);
    assert!(r.archived());
    let out = r.on(publish(1, "x"), t);
    assert_eq!(stored(&out), vec![1]);
    let messages = delivered(&out).iter().filter(|f| f.contains(r#""type":"message""#)).count();
    assert_eq!(messages, 1, "delivered at once: the archive never holds it up");
}

#[test]
fn a_spanning_archived_room_archives_every_message_the_bus_stamped_once() {
    let t = Instant::now();
    let s = Settings { archive: true, ..settings("a") };
    let mut r = opening_with(s, t, "b");
    r.on(Event::Subscribed(true), t);
    let out = r.on(sync_from("b", 0, &[]), t);
    read_history(&mut r, out, 0, t);
    assert_eq!(r.mode(), Mode::Spanning);
    let msg = |s: u64| Event::BusFrame {
        seq: s,
        origin: Arc::from("b"),
        conn: 9,
        frame: message_frame(s),
    };
    assert_eq!(archived(&r.on(msg(1), t)), vec![1]);
    r.on(msg(3), t);
    let log = vec![(2, message_frame(2)), (3, message_frame(3))];
    assert_eq!(archived(&r.on(Event::CaughtUp(Some(log)), t)), vec![2, 3]);
    assert!(archived(&r.on(msg(3), t)).is_empty(), "a duplicate is not archived again");
    let mut plain = spanning(t, 0, &[]);
    assert!(archived(&plain.on(msg(1), t)).is_empty());
}

#[test]
fn a_catch_up_read_before_a_bus_restore_is_followed_by_one_read_after() {
    // The log read of the catch-up in flight may predate messages the lost channel then
    // dropped: its answer alone would turn them into a gap.
    let t = Instant::now();
    let mut r = spanning(t, 0, &[]);
    let msg = |s: u64| Event::BusFrame {
        seq: s,
        origin: Arc::from("b"),
        conn: 9,
        frame: message_frame(s),
    };
    assert_eq!(ops(&r.on(msg(3), t)), vec![BusOp::CatchUp { after: 0 }]);
    r.on(Event::BusLost, t);
    let out = r.on(Event::BusRestored, t);
    assert!(!ops(&out).iter().any(|o| matches!(o, BusOp::CatchUp { .. })), "{out:?}");
    // The first answer was read before the restore: 1 follows on, 2 and 3 wait.
    let out = r.on(Event::CaughtUp(Some(vec![(1, message_frame(1))])), t);
    assert_eq!(seqs_of(&delivered(&out)), [1]);
    assert_eq!(ops(&out), vec![BusOp::CatchUp { after: 1 }]);
    let log = (2..=3).map(|s| (s, message_frame(s))).collect();
    let out = r.on(Event::CaughtUp(Some(log)), t);
    assert_eq!(seqs_of(&delivered(&out)), [2, 3]);
    assert!(!out.iter().any(|a| matches!(a, Action::Gap { .. })), "{out:?}");
}
