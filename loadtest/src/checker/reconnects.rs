//! Delivery judged across reconnects (`--reconnect`): a receiver is one connection index over
//! all its sessions. Every message acknowledged to a sender of this process and published
//! after the receiver's first welcome must reach it exactly once, whatever sessions it took;
//! for senders in other processes (no acks here) every message a receiver here got, stamped
//! after that welcome, counts. Within one epoch `seq` must not go back for a receiver, and
//! every receiver must be back by the end. It also counts the welcomes that recovered.

use std::collections::HashMap;

use super::{Conn, Event, Failures, Kind, Resumes, Room, Seen, Track, Verdict, record};

/// Sender counters above this are not remembered (a broken stream must not make the checker
/// allocate without bound): 4 Mi publishes per sender.
const MAX_COUNTER: u64 = 1 << 22;

/// One message of a sender, by counter. Positions are event numbers; 0 = not (yet).
#[derive(Debug, Clone, Copy, Default)]
struct Msg {
    published_at: u64,
    acked_at: u64,
    /// When a receiver here first got it, in which epoch and as which `seq`.
    seen_at: u64,
    epoch: u32,
    seq: u64,
}

/// A sender's messages; `local` when it runs in this process (its publishes and acks are seen).
#[derive(Debug, Default)]
struct Sent {
    local: bool,
    msgs: Vec<Msg>,
    /// Messages below this index belong to sessions that already ended.
    settled: usize,
}

#[derive(Debug, Default)]
struct Log {
    senders: HashMap<Conn, Sent>,
    /// (epoch, seq) -> (sender + 1) << 32 | counter: one message per seq within an epoch.
    order: HashMap<(u32, u64), u64>,
}

#[derive(Debug)]
struct Member {
    room: Room,
    first_at: u64,
    first_seq: u64,
    first_epoch: u32,
    epoch: u32,
    /// The highest `seq` of the current epoch this receiver got or was told it skipped.
    high: u64,
    /// Per sender: the first counter seen, and the counters seen since.
    tracks: HashMap<Conn, (u64, Track)>,
    connected: bool,
    closed_at: u64,
}

impl Member {
    fn got(&self, sender: Conn, counter: u64) -> bool {
        self.tracks.get(&sender).is_some_and(|(start, t)| {
            counter >= *start && counter < t.next && !t.missing.contains(&counter)
        })
    }
}

/// The `--reconnect` judge; [`super::Checker::across_reconnects`] feeds it.
#[derive(Debug, Default)]
pub(super) struct AcrossReconnects {
    events: u64,
    messages: u64,
    members: HashMap<Conn, Member>,
    rooms: HashMap<Room, Log>,
    /// Epoch names to small ids; 0 = no epoch (a server without history).
    epochs: HashMap<String, u32>,
    resumes: Resumes,
    failures: Failures,
}

fn packed(sender: Conn, counter: u64) -> u64 {
    (u64::from(sender) + 1) << 32 | (counter & 0xffff_ffff)
}

impl AcrossReconnects {
    fn epoch_id(&mut self, epoch: Option<String>) -> u32 {
        let Some(e) = epoch else { return 0 };
        let next = self.epochs.len() as u32 + 1;
        *self.epochs.entry(e).or_insert(next)
    }

    fn msg(&mut self, room: Room, sender: Conn, counter: u64) -> Option<&mut Msg> {
        if counter >= MAX_COUNTER {
            record(&mut self.failures, room, Kind::Reorder, 1, || {
                format!("sender {sender} counter {counter} is out of range")
            });
            return None;
        }
        let sent = self.rooms.entry(room).or_default().senders.entry(sender).or_default();
        let i = counter as usize;
        if i >= sent.msgs.len() {
            sent.msgs.resize(i + 1, Msg::default());
        }
        Some(&mut sent.msgs[i])
    }

    /// Records that `seq` of `epoch` carried (sender, counter); false when someone saw otherwise.
    fn agree(&mut self, room: Room, epoch: u32, seq: u64, sender: Conn, counter: u64) -> bool {
        let order = &mut self.rooms.entry(room).or_default().order;
        *order.entry((epoch, seq)).or_insert(packed(sender, counter)) == packed(sender, counter)
    }

    pub(super) fn feed(&mut self, event: Event) {
        self.events += 1;
        let at = self.events;
        match event {
            Event::Welcome { conn, room, seq } => {
                let seq = seq.unwrap_or(0);
                self.session(conn, room, seq, None, false, None);
            }
            Event::Session { conn, room, seq, epoch, recovered, since } => {
                self.session(conn, room, seq, epoch, recovered, since);
            }
            Event::Message { conn, room, seq, sender, counter } => {
                self.message(conn, room, seq.unwrap_or(0), sender, counter)
            }
            Event::Published { room, sender, counter } => {
                self.rooms.entry(room).or_default().senders.entry(sender).or_default().local = true;
                if let Some(m) = self.msg(room, sender, counter) {
                    m.published_at = at;
                }
            }
            Event::Ack { room, sender, counter, seq } => {
                if let Some(m) = self.msg(room, sender, counter) {
                    m.acked_at = at;
                }
                let epoch = self.members.get(&sender).map_or(0, |m| m.epoch);
                if !self.agree(room, epoch, seq, sender, counter) {
                    record(&mut self.failures, room, Kind::Reorder, 1, || {
                        format!(
                            "ack gave seq {seq} to sender {sender} #{counter}, receivers saw another message there"
                        )
                    });
                }
            }
            Event::Closed { conn } => {
                let Some(m) = self.members.get_mut(&conn) else { return };
                m.connected = false;
                m.closed_at = at;
                let room = m.room;
                // Publishes of the ended session that got no ack never will: cut, not dropped.
                if let Some(sent) = self.rooms.get_mut(&room).and_then(|l| l.senders.get_mut(&conn))
                {
                    let open = &sent.msgs[sent.settled..];
                    self.resumes.cut +=
                        open.iter().filter(|m| m.published_at > 0 && m.acked_at == 0).count()
                            as u64;
                    sent.settled = sent.msgs.len();
                }
            }
        }
    }

    fn session(
        &mut self,
        conn: Conn,
        room: Room,
        seq: u64,
        epoch: Option<String>,
        recovered: bool,
        since: Option<u64>,
    ) {
        let epoch = self.epoch_id(epoch);
        self.rooms.entry(room).or_default();
        let at = self.events;
        let Some(m) = self.members.get_mut(&conn) else {
            self.members.insert(
                conn,
                Member {
                    room,
                    first_at: at,
                    first_seq: seq,
                    first_epoch: epoch,
                    epoch,
                    high: seq,
                    tracks: HashMap::new(),
                    connected: true,
                    closed_at: 0,
                },
            );
            return;
        };
        match (since, recovered) {
            (Some(_), true) => self.resumes.recovered += 1,
            (Some(_), false) => self.resumes.not_recovered += 1,
            (None, _) => self.resumes.fresh += 1,
        }
        if epoch != m.epoch {
            // A new epoch is a new seq space: nothing of the old one can follow.
            m.epoch = epoch;
            m.high = seq;
        } else if !recovered {
            // Nothing is replayed: anything at or below the welcome's seq would be stale.
            m.high = m.high.max(seq);
        }
        m.connected = true;
    }

    fn message(&mut self, conn: Conn, room: Room, seq: u64, sender: Conn, counter: u64) {
        self.messages += 1;
        let at = self.events;
        let Some(m) = self.members.get_mut(&conn) else {
            record(&mut self.failures, room, Kind::Reorder, 1, || {
                format!("conn {conn} got a message (seq {seq}) before its welcome")
            });
            return;
        };
        if m.room != room {
            let own = m.room;
            record(&mut self.failures, room, Kind::Reorder, 1, || {
                format!("conn {conn} of room {own} got a message of room {room}")
            });
            return;
        }
        let (start, track) =
            m.tracks.entry(sender).or_insert_with(|| (counter, Track::starting_at(counter)));
        let seen = if counter < *start { Seen::Late } else { track.see(counter) };
        let failure = match seen {
            Seen::Again => Some((
                Kind::Duplicate,
                format!("conn {conn} got sender {sender} #{counter} (seq {seq}) twice"),
            )),
            Seen::Late => Some((
                Kind::Reorder,
                format!("conn {conn} got sender {sender} #{counter} after a later one"),
            )),
            Seen::InOrder | Seen::Gap if seq <= m.high => Some((
                Kind::Reorder,
                format!("conn {conn} got seq {seq} after seq {} of the same epoch", m.high),
            )),
            Seen::InOrder | Seen::Gap => None,
        };
        m.high = m.high.max(seq);
        let epoch = m.epoch;
        if let Some((kind, example)) = failure {
            record(&mut self.failures, room, kind, 1, || example);
        }
        if let Some(msg) = self.msg(room, sender, counter)
            && msg.seen_at == 0
        {
            *msg = Msg { seen_at: at, epoch, seq, ..*msg };
        }
        if !self.agree(room, epoch, seq, sender, counter) {
            record(&mut self.failures, room, Kind::Reorder, 1, || {
                format!(
                    "receivers disagree on seq {seq} (conn {conn} saw sender {sender} #{counter})"
                )
            });
        }
    }

    /// Which messages `m` had to get: acked local ones published after its first welcome,
    /// and remote ones someone here got, stamped after it; for a receiver that is gone at
    /// the end, only those settled before it left.
    fn required(m: &Member, sent: &Sent, msg: &Msg) -> bool {
        let (known, after_first, settled_at) = if sent.local {
            (msg.acked_at > 0, msg.published_at > m.first_at, msg.acked_at)
        } else {
            let later = msg.epoch != m.first_epoch || msg.seq > m.first_seq;
            (msg.seen_at > 0, later, msg.seen_at)
        };
        known && after_first && (m.connected || settled_at < m.closed_at)
    }

    pub(super) fn finish(mut self) -> Verdict {
        let mut found: Vec<(Room, Kind, u64, String)> = Vec::new();
        for (&conn, m) in &self.members {
            if !m.connected {
                self.resumes.not_back += 1;
                found.push((
                    m.room,
                    Kind::NotBack,
                    1,
                    format!("conn {conn} was not back by the end"),
                ));
            }
            let Some(log) = self.rooms.get(&m.room) else { continue };
            for (&sender, sent) in &log.senders {
                let mut lost = 0u64;
                let mut first = None;
                for (counter, msg) in sent.msgs.iter().enumerate() {
                    if Self::required(m, sent, msg) && !m.got(sender, counter as u64) {
                        lost += 1;
                        first.get_or_insert(counter);
                    }
                }
                if let Some(first) = first {
                    found.push((
                        m.room,
                        Kind::Loss,
                        lost,
                        format!("conn {conn} missed {lost} of sender {sender}'s messages, first #{first}"),
                    ));
                }
            }
        }
        for (&room, log) in &self.rooms {
            for (&sender, sent) in &log.senders {
                let n = sent.msgs[sent.settled..]
                    .iter()
                    .filter(|m| m.published_at > 0 && m.acked_at == 0)
                    .count() as u64;
                if sent.local && n > 0 {
                    found.push((
                        room,
                        Kind::Unacked,
                        n,
                        format!("sender {sender}: {n} publishes unacked on a live connection"),
                    ));
                }
            }
        }
        for (room, kind, n, example) in found {
            record(&mut self.failures, room, kind, n, || example);
        }
        let mut verdict = Verdict::of(self.members.len() as u64, self.messages, self.failures);
        verdict.resumes = Some(self.resumes);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::super::Checker;
    use super::*;

    /// Room 7 at seq 10, epoch "e": conns 1 (sender) and 2 welcomed.
    fn start() -> Vec<Event> {
        [1, 2].map(|conn| session(conn, 10, "e", false, None)).to_vec()
    }

    fn session(conn: Conn, seq: u64, epoch: &str, recovered: bool, since: Option<u64>) -> Event {
        Event::Session { conn, room: 7, seq, epoch: Some(epoch.into()), recovered, since }
    }

    fn msg(conn: Conn, c: u64) -> Event {
        Event::Message { conn, room: 7, seq: Some(11 + c), sender: 1, counter: c }
    }

    /// Sender 1 publishes counters `range` (seq 11 + c), acked; `to` receive them live.
    fn publish(ev: &mut Vec<Event>, range: std::ops::Range<u64>, to: &[Conn]) {
        for c in range {
            ev.push(Event::Published { room: 7, sender: 1, counter: c });
            for &conn in to {
                ev.push(msg(conn, c));
            }
            ev.push(Event::Ack { room: 7, sender: 1, counter: c, seq: 11 + c });
        }
    }

    fn judge(events: Vec<Event>) -> Verdict {
        let mut checker = Checker::across_reconnects();
        for e in events {
            checker.feed(e);
        }
        checker.finish()
    }

    fn counts(v: &Verdict) -> (u64, u64, u64, u64) {
        (v.loss, v.duplicate, v.reorder, v.unacked)
    }

    /// Conn 2 drops after counter 4 (seq 15) while 5..8 go by, then comes back.
    fn outage() -> Vec<Event> {
        let mut ev = start();
        publish(&mut ev, 0..5, &[1, 2]);
        ev.push(Event::Closed { conn: 2 });
        publish(&mut ev, 5..8, &[1]);
        ev
    }

    #[test]
    fn a_resume_that_replays_is_clean() {
        let mut ev = outage();
        ev.push(session(2, 18, "e", true, Some(15)));
        ev.extend((5..8).map(|c| msg(2, c)));
        publish(&mut ev, 8..10, &[1, 2]);
        let v = judge(ev);
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(counts(&v), (0, 0, 0, 0));
        let r = v.resumes.unwrap();
        assert_eq!((r.recovered, r.not_recovered, r.not_back), (1, 0, 0));
        assert_eq!(v.messages, 10 + 3 + 3 + 4);
    }

    #[test]
    fn a_resume_that_did_not_recover_loses_what_was_missed() {
        let mut ev = outage();
        ev.push(session(2, 18, "e", false, Some(15)));
        publish(&mut ev, 8..10, &[1, 2]);
        let v = judge(ev);
        assert_eq!(counts(&v), (3, 0, 0, 0), "{v:?}");
        assert_eq!(v.resumes.unwrap().not_recovered, 1);
        assert_eq!(v.failures[0].kind, Kind::Loss);
        // ... and a stale replay after recovered:false is a reorder, not a fill.
        let mut ev = outage();
        ev.push(session(2, 18, "e", false, Some(15)));
        ev.push(msg(2, 5));
        assert_eq!(judge(ev).reorder, 1);
    }

    #[test]
    fn a_replayed_message_received_before_is_a_duplicate() {
        let mut ev = outage();
        // The resume says since 14 although 15 was received: 15 comes again.
        ev.push(session(2, 18, "e", true, Some(14)));
        ev.extend((4..8).map(|c| msg(2, c)));
        let v = judge(ev);
        assert_eq!(counts(&v), (0, 1, 0, 0), "{v:?}");
        assert_eq!(v.failures[0].kind, Kind::Duplicate);
    }

    #[test]
    fn a_gap_in_the_replay_is_a_loss() {
        let mut ev = outage();
        ev.push(session(2, 18, "e", true, Some(15)));
        ev.extend([5, 7].map(|c| msg(2, c)));
        publish(&mut ev, 8..9, &[1, 2]);
        let v = judge(ev);
        assert_eq!(counts(&v), (1, 0, 0, 0), "{v:?}");
        assert!(v.failures[0].example.contains("first #6"), "{v:?}");
    }

    #[test]
    fn a_receiver_not_back_fails_and_is_judged_up_to_its_close() {
        let v = judge(outage());
        assert_eq!(counts(&v), (0, 0, 0, 0), "{v:?}");
        assert_eq!(v.resumes.unwrap().not_back, 1);
        assert!(!v.is_clean());
    }

    #[test]
    fn a_publish_cut_by_its_sessions_end_is_not_unacked() {
        let mut ev = start();
        publish(&mut ev, 0..3, &[1, 2]);
        ev.push(Event::Published { room: 7, sender: 1, counter: 3 });
        ev.push(Event::Closed { conn: 1 });
        ev.push(session(1, 13, "e", true, Some(13)));
        publish(&mut ev, 4..6, &[1, 2]);
        // seqs 15, 16 for counters 4, 5: counter 3 was never stamped.
        let v = judge(ev);
        assert_eq!(v.resumes.unwrap().cut, 1);
        assert_eq!(counts(&v), (0, 0, 0, 0), "{v:?}");
        // A publish left unacked on a live connection is still a failure.
        let mut ev = start();
        publish(&mut ev, 0..3, &[1, 2]);
        ev.push(Event::Published { room: 7, sender: 1, counter: 3 });
        assert_eq!(judge(ev).unacked, 1);
    }

    #[test]
    fn a_new_epoch_starts_a_new_seq_space() {
        // The node lost the room's history: the new epoch reuses seqs 16.. without blame.
        let mut ev = outage();
        ev.push(Event::Closed { conn: 1 });
        for conn in [1, 2] {
            ev.push(session(conn, 15, "f", false, Some(15)));
        }
        for c in 8..10 {
            ev.push(Event::Published { room: 7, sender: 1, counter: c });
            for conn in [1, 2] {
                ev.push(Event::Message { conn, room: 7, seq: Some(8 + c), sender: 1, counter: c });
            }
            ev.push(Event::Ack { room: 7, sender: 1, counter: c, seq: 8 + c });
        }
        let v = judge(ev);
        assert_eq!(counts(&v), (3, 0, 0, 0), "only 5..8 are lost: {v:?}");
        assert_eq!(v.resumes.unwrap().not_recovered, 2);
    }

    #[test]
    fn remote_senders_count_what_a_receiver_here_got() {
        // Sender 9 runs in another process: no Published, no Ack. Conn 2 misses one.
        let mut ev = start();
        for c in 0..4 {
            for conn in [1, 2] {
                if (conn, c) != (2, 2) {
                    ev.push(Event::Message {
                        conn,
                        room: 7,
                        seq: Some(11 + c),
                        sender: 9,
                        counter: c,
                    });
                }
            }
        }
        let v = judge(ev);
        assert_eq!(counts(&v), (1, 0, 0, 0), "{v:?}");
    }
}
