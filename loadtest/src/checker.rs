//! Delivery correctness, judged from a stream of events: per receiver, `seq` contiguous from
//! `welcome.seq + 1` with no gap, duplicate or reorder; per room, one order (every receiver
//! and every ack agree on which publish got which `seq`); per sender, every publish acked.
//! Without `seq` (Socket.IO) it checks each sender's counter per receiver instead. With
//! `--reconnect` a receiver lives over many sessions and [`reconnects`] judges it instead.

mod reconnects;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A connection index in the scenario.
pub type Conn = u32;
/// A room index in the scenario.
pub type Room = u32;

/// Gaps wider than this are counted, not remembered one by one, so a broken server cannot
/// make the checker allocate without bound.
const MAX_GAP_TRACKED: u64 = 1 << 20;

/// What the checker is fed, in the order the connections observed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `conn` joined `room`; `seq` is `welcome.seq` (None for Socket.IO, which has none).
    Welcome { conn: Conn, room: Room, seq: Option<u64> },
    /// `conn` received publish number `counter` of `sender`, stamped `seq` by the server.
    Message { conn: Conn, room: Room, seq: Option<u64>, sender: Conn, counter: u64 },
    /// Local `sender` is about to send its publish number `counter` (0, 1, 2, ...).
    Published { room: Room, sender: Conn, counter: u64 },
    /// The server acknowledged `sender`'s publish `counter` as `seq`.
    Ack { room: Room, sender: Conn, counter: u64, seq: u64 },
    /// `conn` was closed or broke before the end of the run: its tail is not judged (with
    /// `--reconnect`: this session ended; a [`Event::Session`] may follow).
    Closed { conn: Conn },
    /// `--reconnect` only, instead of `Welcome`: `conn` was welcomed, first or again. `since`
    /// is the `seq` it resumed from (None: a first connect, or no epoch to resume with).
    Session {
        conn: Conn,
        room: Room,
        seq: u64,
        epoch: Option<String>,
        recovered: bool,
        since: Option<u64>,
    },
}

/// The kinds of failure a run can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A message published after the receiver's welcome never reached it.
    Loss,
    /// The receiver got the same message twice.
    Duplicate,
    /// A message arrived after a later one, or receivers disagree on the order.
    Reorder,
    /// A publish was never acknowledged: the server dropped it for everyone.
    Unacked,
    /// `--reconnect`: a receiver lost its connection and was not back by the end of the run.
    NotBack,
}

/// Failures of one kind in one room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomFailure {
    pub room: Room,
    pub kind: Kind,
    pub count: u64,
    /// The first instance, for a human to start from.
    pub example: String,
}

/// The checker's judgement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub receivers: u64,
    pub messages: u64,
    pub loss: u64,
    pub duplicate: u64,
    pub reorder: u64,
    pub unacked: u64,
    /// Sorted by room then kind.
    pub failures: Vec<RoomFailure>,
    /// Welcomes after reconnects (`--reconnect` runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes: Option<Resumes>,
}

/// What the receivers' reconnects came to (`--reconnect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resumes {
    /// Resumes whose welcome said `recovered:true` (the missed messages follow).
    pub recovered: u64,
    /// Resumes whose welcome said `recovered:false`: what was missed is lost.
    pub not_recovered: u64,
    /// Reconnects without `since`/`epoch` (the server's welcome carried no epoch).
    pub fresh: u64,
    /// Receivers that lost their connection and were not back by the end.
    pub not_back: u64,
    /// Publishes whose session broke before their ack: never judged (the client does not
    /// resend them, and nobody knows whether they were stamped).
    pub cut: u64,
}

impl Resumes {
    fn add(&mut self, o: &Resumes) {
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.fresh += o.fresh;
        self.not_back += o.not_back;
        self.cut += o.cut;
    }
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.loss + self.duplicate + self.reorder + self.unacked == 0
            && self.resumes.is_none_or(|r| r.not_back == 0)
    }

    /// Folds another shard's verdict in.
    pub fn merge(&mut self, other: &Verdict) {
        self.receivers += other.receivers;
        self.messages += other.messages;
        self.loss += other.loss;
        self.duplicate += other.duplicate;
        self.reorder += other.reorder;
        self.unacked += other.unacked;
        self.failures.extend(other.failures.iter().cloned());
        self.failures.sort_by_key(|f| (f.room, f.kind));
        match (&mut self.resumes, &other.resumes) {
            (Some(a), Some(b)) => a.add(b),
            (a @ None, Some(b)) => *a = Some(*b),
            (_, None) => {}
        }
    }

    /// The verdict of `failures` (one entry per room and kind) over so many receivers.
    fn of(receivers: u64, messages: u64, failures: Failures) -> Self {
        let mut verdict = Verdict { receivers, messages, ..Verdict::default() };
        for ((room, kind), (count, example)) in failures {
            match kind {
                Kind::Loss => verdict.loss += count,
                Kind::Duplicate => verdict.duplicate += count,
                Kind::Reorder => verdict.reorder += count,
                Kind::Unacked => verdict.unacked += count,
                Kind::NotBack => {}
            }
            verdict.failures.push(RoomFailure { room, kind, count, example });
        }
        verdict
    }
}

/// Failures by room and kind: a count and the first example.
type Failures = BTreeMap<(Room, Kind), (u64, String)>;

fn record(
    failures: &mut Failures,
    room: Room,
    kind: Kind,
    count: u64,
    example: impl FnOnce() -> String,
) {
    let entry = failures.entry((room, kind)).or_insert_with(|| (0, example()));
    entry.0 += count;
}

/// Gap bookkeeping over one increasing sequence (room `seq`, or one sender's counter).
#[derive(Debug, Default)]
struct Track {
    /// The next value expected.
    next: u64,
    /// Values skipped over that may still arrive (then it was a reorder, not a loss).
    missing: BTreeSet<u64>,
    /// Skipped values beyond [`MAX_GAP_TRACKED`]: counted as lost outright.
    untracked_lost: u64,
}

enum Seen {
    InOrder,
    Gap,
    Late,
    Again,
}

impl Track {
    fn starting_at(next: u64) -> Self {
        Self { next, ..Self::default() }
    }

    fn see(&mut self, v: u64) -> Seen {
        if v == self.next {
            self.next += 1;
            Seen::InOrder
        } else if v > self.next {
            let gap = v - self.next;
            let tracked = gap.min(MAX_GAP_TRACKED);
            self.missing.extend(self.next..self.next + tracked);
            self.untracked_lost += gap - tracked;
            self.next = v + 1;
            Seen::Gap
        } else if self.missing.remove(&v) {
            Seen::Late
        } else {
            Seen::Again
        }
    }

    /// Values never seen below `end` (exclusive).
    fn lost_before(&self, end: u64) -> u64 {
        self.missing.len() as u64 + self.untracked_lost + end.saturating_sub(self.next)
    }
}

struct Receiver {
    room: Room,
    /// Position in the event stream of the welcome, to know which senders started later.
    joined_at: Option<u64>,
    welcome_seq: Option<u64>,
    seqs: Option<Track>,
    by_sender: HashMap<Conn, Track>,
    closed: bool,
}

#[derive(Default)]
struct LocalSender {
    first_publish_at: u64,
    last_counter: u64,
    published: u64,
    acked: u64,
}

#[derive(Default)]
struct RoomState {
    /// `order[seq - base]` = (sender + 1, counter) packed, 0 when not seen yet: 8 bytes a message.
    base: u64,
    order: Vec<u64>,
    max_seq: u64,
    max_counter: HashMap<Conn, u64>,
    senders: HashMap<Conn, LocalSender>,
}

impl RoomState {
    /// Records that `seq` carried (sender, counter); false when someone saw otherwise.
    fn agree(&mut self, seq: u64, sender: Conn, counter: u64) -> bool {
        let packed = (u64::from(sender) + 1) << 32 | (counter & 0xffff_ffff);
        if self.order.is_empty() {
            self.base = seq;
        }
        if seq < self.base {
            let grow = (self.base - seq) as usize;
            let mut order = vec![0; grow];
            order.append(&mut self.order);
            self.order = order;
            self.base = seq;
        }
        let i = (seq - self.base) as usize;
        if i >= self.order.len() {
            self.order.resize(i + 1, 0);
        }
        match self.order[i] {
            0 => {
                self.order[i] = packed;
                true
            }
            p => p == packed,
        }
    }
}

/// Fed every event of a run, then asked for a [`Verdict`].
#[derive(Default)]
pub struct Checker {
    /// Whether every publish must be acknowledged (roomfleet; Socket.IO has no acks).
    acks: bool,
    /// Whether senders are not judged on their own publishes (Pusher never echoes them).
    no_echo: bool,
    events: u64,
    messages: u64,
    receivers: HashMap<Conn, Receiver>,
    rooms: HashMap<Room, RoomState>,
    failures: Failures,
    /// Set with `--reconnect`: receivers are judged across their sessions there instead.
    across: Option<Box<reconnects::AcrossReconnects>>,
}

impl Checker {
    /// A checker for roomfleet's dialect: sequenced messages, every publish acked.
    pub fn new() -> Self {
        Self { acks: true, ..Self::default() }
    }

    /// A checker for a dialect without acks (Socket.IO): unacked publishes are not judged.
    pub fn without_acks() -> Self {
        Self::default()
    }

    /// A checker for a dialect without acks whose server skips the sender (Pusher client
    /// events): a sender is not expected to receive its own publishes.
    pub fn without_acks_or_echo() -> Self {
        Self { no_echo: true, ..Self::default() }
    }

    /// A checker for `--reconnect` runs: receivers are judged over all their sessions.
    pub fn across_reconnects() -> Self {
        Self { acks: true, across: Some(Box::default()), ..Self::default() }
    }

    fn fail(&mut self, room: Room, kind: Kind, count: u64, example: impl FnOnce() -> String) {
        record(&mut self.failures, room, kind, count, example);
    }

    pub fn feed(&mut self, event: Event) {
        if let Some(across) = &mut self.across {
            return across.feed(event);
        }
        self.events += 1;
        match event {
            Event::Welcome { conn, room, seq } => self.welcome(conn, room, seq),
            Event::Message { conn, room, seq, sender, counter } => {
                self.message(conn, room, seq, sender, counter)
            }
            Event::Published { room, sender, counter } => {
                let at = self.events;
                let s = self.rooms.entry(room).or_default().senders.entry(sender).or_insert_with(
                    || LocalSender { first_publish_at: at, ..LocalSender::default() },
                );
                s.published += 1;
                s.last_counter = counter;
            }
            Event::Ack { room, sender, counter, seq } => {
                let state = self.rooms.entry(room).or_default();
                state.max_seq = state.max_seq.max(seq);
                if let Some(s) = state.senders.get_mut(&sender) {
                    s.acked += 1;
                }
                if !state.agree(seq, sender, counter) {
                    self.fail(room, Kind::Reorder, 1, || {
                        format!("ack gave seq {seq} to sender {sender} #{counter}, receivers saw another message there")
                    });
                }
            }
            Event::Closed { conn } => {
                if let Some(r) = self.receivers.get_mut(&conn) {
                    r.closed = true;
                }
            }
            // Only --reconnect runs send these; here one is a first welcome.
            Event::Session { conn, room, seq, .. } => self.welcome(conn, room, Some(seq)),
        }
    }

    fn welcome(&mut self, conn: Conn, room: Room, seq: Option<u64>) {
        self.rooms.entry(room).or_default();
        self.receivers.insert(
            conn,
            Receiver {
                room,
                joined_at: Some(self.events),
                welcome_seq: seq,
                seqs: seq.map(|s| Track::starting_at(s + 1)),
                by_sender: HashMap::new(),
                closed: false,
            },
        );
    }

    fn message(&mut self, conn: Conn, room: Room, seq: Option<u64>, sender: Conn, counter: u64) {
        self.messages += 1;
        let state = self.rooms.entry(room).or_default();
        let c = state.max_counter.entry(sender).or_insert(counter);
        *c = (*c).max(counter);
        let sender_started = state.senders.get(&sender).map(|s| s.first_publish_at);
        let Some(r) = self.receivers.get_mut(&conn) else {
            self.fail(room, Kind::Reorder, 1, || {
                format!("conn {conn} got a message (seq {seq:?}) before its welcome")
            });
            return;
        };
        if r.room != room {
            let own = r.room;
            self.fail(room, Kind::Reorder, 1, || {
                format!("conn {conn} of room {own} got a message of room {room}")
            });
            return;
        }
        let mut failures: Vec<(Kind, u64, String)> = Vec::new();
        match (seq, r.seqs.as_mut()) {
            (Some(seq), Some(track)) => {
                state.max_seq = state.max_seq.max(seq);
                let welcome = r.welcome_seq.unwrap_or(0);
                if seq <= welcome {
                    failures.push((
                        Kind::Reorder,
                        1,
                        format!(
                            "conn {conn} got seq {seq}, at or before its welcome seq {welcome}"
                        ),
                    ));
                } else {
                    match track.see(seq) {
                        Seen::InOrder | Seen::Gap => {}
                        Seen::Late => failures.push((
                            Kind::Reorder,
                            1,
                            format!("conn {conn} got seq {seq} after a later one"),
                        )),
                        Seen::Again => failures.push((
                            Kind::Duplicate,
                            1,
                            format!("conn {conn} got seq {seq} twice"),
                        )),
                    }
                    if !state.agree(seq, sender, counter) {
                        failures.push((
                            Kind::Reorder,
                            1,
                            format!("receivers disagree on seq {seq} (conn {conn} saw sender {sender} #{counter})"),
                        ));
                    }
                }
            }
            _ => {
                // No seq: judge this sender's counters. Expect everything from counter 0 when
                // the receiver joined before the (local) sender's first publish.
                let joined_before =
                    matches!((r.joined_at, sender_started), (Some(j), Some(s)) if j < s);
                let track = r
                    .by_sender
                    .entry(sender)
                    .or_insert_with(|| Track::starting_at(if joined_before { 0 } else { counter }));
                match track.see(counter) {
                    Seen::InOrder | Seen::Gap => {}
                    Seen::Late => failures.push((
                        Kind::Reorder,
                        1,
                        format!("conn {conn} got sender {sender} #{counter} after a later one"),
                    )),
                    Seen::Again => failures.push((
                        Kind::Duplicate,
                        1,
                        format!("conn {conn} got sender {sender} #{counter} twice"),
                    )),
                }
            }
        }
        for (kind, n, example) in failures {
            self.fail(room, kind, n, || example);
        }
    }

    /// Judges what is still missing once the run has drained: gaps never filled, tails cut
    /// short (receivers still connected only) and publishes never acknowledged.
    pub fn finish(mut self) -> Verdict {
        if let Some(across) = self.across {
            return across.finish();
        }
        let mut losses: Vec<(Room, u64, String)> = Vec::new();
        for (&conn, r) in &self.receivers {
            let Some(state) = self.rooms.get(&r.room) else { continue };
            if let Some(track) = &r.seqs {
                let end = if r.closed { track.next } else { state.max_seq + 1 };
                let lost = track.lost_before(end);
                if lost > 0 {
                    let first = track.missing.first().copied().unwrap_or(track.next);
                    losses.push((
                        r.room,
                        lost,
                        format!("conn {conn} missed {lost} seqs, first {first}"),
                    ));
                }
            } else {
                for (&sender, &max_seen) in &state.max_counter {
                    if self.no_echo && sender == conn {
                        continue;
                    }
                    let local = state.senders.get(&sender);
                    let end = match (local, r.closed) {
                        (_, true) => r.by_sender.get(&sender).map_or(0, |t| t.next),
                        (Some(s), false) => s.last_counter + 1,
                        (None, false) => max_seen + 1,
                    };
                    let lost = match r.by_sender.get(&sender) {
                        Some(track) => track.lost_before(end),
                        // Never heard from this sender: everything is lost when it is local and
                        // started after the join; otherwise there is no start to count from.
                        None => match (local, r.joined_at) {
                            (Some(s), Some(j)) if j < s.first_publish_at && !r.closed => end,
                            _ => 0,
                        },
                    };
                    if lost > 0 {
                        losses.push((
                            r.room,
                            lost,
                            format!("conn {conn} missed {lost} publishes of sender {sender}"),
                        ));
                    }
                }
            }
        }
        for (room, lost, example) in losses {
            self.fail(room, Kind::Loss, lost, || example);
        }
        let mut unacked = Vec::new();
        for (&room, state) in &self.rooms {
            for (&sender, s) in &state.senders {
                if self.acks && s.published > s.acked {
                    let n = s.published - s.acked;
                    unacked.push((
                        room,
                        n,
                        format!("sender {sender}: {n} of {} publishes unacked", s.published),
                    ));
                }
            }
        }
        for (room, n, example) in unacked {
            self.fail(room, Kind::Unacked, n, || example);
        }
        Verdict::of(self.receivers.len() as u64, self.messages, self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room 7: conns 1 and 2 join at seq 10; conn 1 sends counters 0..n, acked as 11, 12, ...
    fn clean_stream(n: u64) -> Vec<Event> {
        let mut ev = vec![
            Event::Welcome { conn: 1, room: 7, seq: Some(10) },
            Event::Welcome { conn: 2, room: 7, seq: Some(10) },
        ];
        for c in 0..n {
            let seq = 11 + c;
            ev.push(Event::Published { room: 7, sender: 1, counter: c });
            ev.push(Event::Message { conn: 1, room: 7, seq: Some(seq), sender: 1, counter: c });
            ev.push(Event::Ack { room: 7, sender: 1, counter: c, seq });
            ev.push(Event::Message { conn: 2, room: 7, seq: Some(seq), sender: 1, counter: c });
        }
        ev
    }

    /// Judges with acks expected when the stream is roomfleet's (welcomes carry a seq).
    fn judge(events: impl IntoIterator<Item = Event>) -> Verdict {
        let events: Vec<Event> = events.into_iter().collect();
        let native = events.iter().any(|e| matches!(e, Event::Welcome { seq: Some(_), .. }));
        let mut checker = if native { Checker::new() } else { Checker::without_acks() };
        for e in events {
            checker.feed(e);
        }
        checker.finish()
    }

    fn is_receiver_message(e: &Event, conn: Conn, seq: u64) -> bool {
        matches!(e, Event::Message { conn: c, seq: Some(s), .. } if *c == conn && *s == seq)
    }

    #[test]
    fn a_clean_stream_passes() {
        let v = judge(clean_stream(50));
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.receivers, 2);
        assert_eq!(v.messages, 100);
    }

    #[test]
    fn flags_a_loss_in_the_middle() {
        let events = clean_stream(20).into_iter().filter(|e| !is_receiver_message(e, 2, 15));
        let v = judge(events);
        assert_eq!((v.loss, v.duplicate, v.reorder), (1, 0, 0), "{v:?}");
        assert_eq!(v.failures[0].room, 7);
        assert_eq!(v.failures[0].kind, Kind::Loss);
    }

    #[test]
    fn flags_a_lost_tail() {
        // conn 2 never gets the last two messages; the acks say they exist.
        let events = clean_stream(10)
            .into_iter()
            .filter(|e| !is_receiver_message(e, 2, 19) && !is_receiver_message(e, 2, 20));
        let v = judge(events);
        assert_eq!(v.loss, 2, "{v:?}");
    }

    #[test]
    fn a_closed_receiver_is_not_blamed_for_its_tail() {
        let mut events: Vec<Event> = clean_stream(10)
            .into_iter()
            .filter(|e| !matches!(e, Event::Message { conn: 2, seq: Some(s), .. } if *s > 15))
            .collect();
        events.insert(2, Event::Closed { conn: 2 });
        let v = judge(events);
        assert!(v.is_clean(), "{v:?}");
    }

    #[test]
    fn flags_a_duplicate() {
        let mut events = clean_stream(10);
        events.push(Event::Message { conn: 2, room: 7, seq: Some(14), sender: 1, counter: 3 });
        let v = judge(events);
        assert_eq!((v.loss, v.duplicate, v.reorder), (0, 1, 0), "{v:?}");
        assert_eq!(v.failures[0].kind, Kind::Duplicate);
    }

    #[test]
    fn flags_a_reorder() {
        let mut events = clean_stream(10);
        let a = events.iter().position(|e| is_receiver_message(e, 2, 13)).unwrap();
        let b = events.iter().position(|e| is_receiver_message(e, 2, 14)).unwrap();
        events.swap(a, b);
        let v = judge(events);
        assert_eq!((v.loss, v.duplicate, v.reorder), (0, 0, 1), "{v:?}");
    }

    #[test]
    fn flags_receivers_that_disagree_on_the_order() {
        // Both receivers see contiguous seqs, but conn 2 sees other content at seq 12.
        let events = clean_stream(5).into_iter().map(|e| match e {
            Event::Message { conn: 2, room, seq: Some(12), sender, .. } => {
                Event::Message { conn: 2, room, seq: Some(12), sender, counter: 99 }
            }
            e => e,
        });
        let v = judge(events);
        assert_eq!(v.reorder, 1, "{v:?}");
    }

    #[test]
    fn flags_a_publish_the_server_dropped() {
        // Counter 4 was sent but never sequenced: no receiver can see a gap, the acks can.
        let mut events = clean_stream(4);
        events.push(Event::Published { room: 7, sender: 1, counter: 4 });
        let v = judge(events);
        assert_eq!(v.unacked, 1, "{v:?}");
        assert!(!v.is_clean());
    }

    #[test]
    fn a_late_joiner_expects_only_what_follows_its_welcome() {
        let mut events = clean_stream(5);
        events.push(Event::Welcome { conn: 3, room: 7, seq: Some(15) });
        for c in 5..8 {
            let seq = 11 + c;
            events.push(Event::Published { room: 7, sender: 1, counter: c });
            for conn in [1, 2, 3] {
                events.push(Event::Message {
                    conn,
                    room: 7,
                    seq: Some(seq),
                    sender: 1,
                    counter: c,
                });
            }
            events.push(Event::Ack { room: 7, sender: 1, counter: c, seq });
        }
        assert!(judge(events.clone()).is_clean());
        events.push(Event::Message { conn: 3, room: 7, seq: Some(15), sender: 1, counter: 4 });
        assert_eq!(judge(events).reorder, 1, "a message from before the welcome is flagged");
    }

    /// Socket.IO: no seq, no ack. Conns 1 and 2 in room 3, conn 1 sends 0..n.
    fn socketio_stream(n: u64) -> Vec<Event> {
        let mut ev = vec![
            Event::Welcome { conn: 1, room: 3, seq: None },
            Event::Welcome { conn: 2, room: 3, seq: None },
        ];
        for c in 0..n {
            ev.push(Event::Published { room: 3, sender: 1, counter: c });
            for conn in [1, 2] {
                ev.push(Event::Message { conn, room: 3, seq: None, sender: 1, counter: c });
            }
        }
        ev
    }

    fn is_sio(e: &Event, conn: Conn, counter: u64) -> bool {
        matches!(e, Event::Message { conn: c, counter: k, .. } if *c == conn && *k == counter)
    }

    #[test]
    fn socketio_checks_counters_per_sender() {
        assert!(judge(socketio_stream(20)).is_clean());
        let lost_first = socketio_stream(20).into_iter().filter(|e| !is_sio(e, 2, 0));
        assert_eq!(judge(lost_first).loss, 1, "the first publish after the join counts");
        let lost_last = socketio_stream(20).into_iter().filter(|e| !is_sio(e, 2, 19));
        assert_eq!(judge(lost_last).loss, 1);
        let mut dup = socketio_stream(20);
        dup.push(Event::Message { conn: 2, room: 3, seq: None, sender: 1, counter: 7 });
        assert_eq!(judge(dup).duplicate, 1);
        let mut reordered = socketio_stream(20);
        let a = reordered.iter().position(|e| is_sio(e, 2, 5)).unwrap();
        let b = reordered.iter().position(|e| is_sio(e, 2, 6)).unwrap();
        reordered.swap(a, b);
        let v = judge(reordered);
        assert_eq!((v.loss, v.duplicate, v.reorder), (0, 0, 1), "{v:?}");
    }

    #[test]
    fn a_node_that_acks_nothing_fails() {
        let events = clean_stream(3).into_iter().filter(|e| !matches!(e, Event::Ack { .. }));
        assert_eq!(judge(events).unacked, 3);
    }

    #[test]
    fn merged_verdicts_add_up() {
        let mut a = judge(clean_stream(3).into_iter().filter(|e| !is_receiver_message(e, 2, 12)));
        let b = judge({
            let mut e = clean_stream(3);
            e.push(Event::Message { conn: 2, room: 7, seq: Some(12), sender: 1, counter: 1 });
            e
        });
        a.merge(&b);
        assert_eq!((a.loss, a.duplicate, a.receivers), (1, 1, 4));
        assert_eq!(a.failures.len(), 2);
    }

    #[test]
    fn pusher_senders_are_not_owed_their_own_publishes() {
        let no_echo = || socketio_stream(20).into_iter().filter(|e| !is_sio_from_self(e));
        let mut echo_expected = Checker::without_acks();
        let mut pusher = Checker::without_acks_or_echo();
        for e in no_echo() {
            echo_expected.feed(e.clone());
            pusher.feed(e);
        }
        assert_eq!(echo_expected.finish().loss, 20, "a Socket.IO sender is owed its echo");
        assert!(pusher.finish().is_clean());
        let mut lossy = Checker::without_acks_or_echo();
        for e in no_echo().filter(|e| !is_sio(e, 2, 4)) {
            lossy.feed(e);
        }
        assert_eq!(lossy.finish().loss, 1, "the other members are still judged");
    }

    fn is_sio_from_self(e: &Event) -> bool {
        matches!(e, Event::Message { conn, sender, .. } if conn == sender)
    }
}
