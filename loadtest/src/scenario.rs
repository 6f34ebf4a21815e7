//! The scenario as pure data: how many members each room gets (uniform or zipf), which
//! connection joins which room as which member, who sends, room and user names, and the
//! `--shard K/N` split. Everything is deterministic so that shards form the same rooms.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};

/// How connections spread over rooms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Every room gets `conns / rooms` members, the remainder one each to the first rooms.
    Uniform,
    /// Room `r` (0-based) gets a share proportional to `1 / (r + 1)^s`: a few large rooms,
    /// a long tail of small ones. Every room still gets at least one member.
    Zipf(f64),
}

impl FromStr for Dist {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "uniform" {
            return Ok(Self::Uniform);
        }
        let Some(exp) = s.strip_prefix("zipf:") else {
            bail!("distribution {s:?}: expected `uniform` or `zipf:S` (e.g. zipf:1.1)");
        };
        let exp: f64 = exp.parse().with_context(|| format!("zipf exponent {exp:?}"))?;
        if !(exp.is_finite() && exp > 0.0 && exp <= 10.0) {
            bail!("zipf exponent {exp} must be in (0, 10]");
        }
        Ok(Self::Zipf(exp))
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Members per room: every room at least one, summing to `conns`.
pub fn room_sizes(conns: usize, rooms: usize, dist: Dist) -> anyhow::Result<Vec<usize>> {
    if rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    if conns < rooms {
        bail!("--conns {conns} is less than --rooms {rooms}: every room needs a member");
    }
    let extra = conns - rooms;
    let mut sizes = vec![1usize; rooms];
    match dist {
        Dist::Uniform => {
            for (r, size) in sizes.iter_mut().enumerate() {
                *size += extra / rooms + usize::from(r < extra % rooms);
            }
        }
        Dist::Zipf(s) => {
            let weights: Vec<f64> = (0..rooms).map(|r| ((r + 1) as f64).powf(-s)).collect();
            let total: f64 = weights.iter().sum();
            let mut given = 0usize;
            let mut fractions = Vec::with_capacity(rooms);
            for (r, w) in weights.iter().enumerate() {
                let exact = extra as f64 * w / total;
                let whole = (exact.floor() as usize).min(extra - given);
                sizes[r] += whole;
                given += whole;
                fractions.push((exact - exact.floor(), r));
            }
            // Largest remainders first; ties go to the lower (larger) room.
            fractions.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, r) in fractions.iter().cycle().take(extra - given) {
                sizes[r] += 1;
            }
        }
    }
    debug_assert_eq!(sizes.iter().sum::<usize>(), conns);
    Ok(sizes)
}

/// One connection's place in the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub room: u32,
    /// 0 for the first member of the room, 1 for the second, ...
    pub member: u32,
}

/// The whole scenario: which seat each connection index takes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Vec<usize>,
    /// Indexed by connection: rooms are filled round by round (every room's first member,
    /// then every second member, ...), so a slow connect phase still seeds every room early.
    pub seats: Vec<Seat>,
    pub senders: u32,
}

impl Plan {
    pub fn new(conns: usize, rooms: usize, dist: Dist, senders: u32) -> anyhow::Result<Self> {
        if conns > u32::MAX as usize || rooms > u32::MAX as usize {
            bail!("--conns and --rooms must fit in 32 bits");
        }
        let sizes = room_sizes(conns, rooms, dist)?;
        let mut seats = Vec::with_capacity(conns);
        let largest = sizes.iter().copied().max().unwrap_or(0);
        // Bounded: `largest` rounds over `rooms` rooms, stopping early once the small rooms are
        // full (sizes are not sorted for uniform, so only skip, never break, inside a round).
        let mut open: Vec<u32> = (0..rooms as u32).collect();
        for member in 0..largest {
            open.retain(|&r| sizes[r as usize] > member);
            seats.extend(open.iter().map(|&room| Seat { room, member: member as u32 }));
        }
        debug_assert_eq!(seats.len(), conns);
        Ok(Self { sizes, seats, senders })
    }

    /// Whether connection `conn` publishes: the first `senders` members of every room do.
    pub fn is_sender(&self, conn: usize) -> bool {
        self.seats[conn].member < self.senders
    }
}

/// The room name shards agree on.
pub fn room_name(prefix: &str, room: u32) -> String {
    format!("{prefix}-r{room}")
}

/// The user name of connection `conn`, unique across shards.
pub fn user_name(prefix: &str, conn: usize) -> String {
    format!("{prefix}-u{conn}")
}

/// `--shard K/N`: this process runs connections `i` with `i % N == K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { k: 0, n: 1 };

    pub fn contains(&self, conn: usize) -> bool {
        conn % self.n == self.k
    }

    /// The connection indices of this shard among `conns`, in connect order.
    pub fn members(&self, conns: usize) -> impl Iterator<Item = usize> + '_ {
        (self.k..conns).step_by(self.n)
    }
}

impl FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (k, n) = s.split_once('/').with_context(|| format!("shard {s:?}: expected K/N"))?;
        let k: usize = k.trim().parse().with_context(|| format!("shard {s:?}: K"))?;
        let n: usize = n.trim().parse().with_context(|| format!("shard {s:?}: N"))?;
        if n == 0 || k >= n {
            bail!("shard {s:?}: need 0 <= K < N");
        }
        Ok(Self { k, n })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_spreads_evenly() {
        let sizes = room_sizes(10, 3, Dist::Uniform).unwrap();
        assert_eq!(sizes, vec![4, 3, 3]);
    }

    #[test]
    fn zipf_assigns_every_connection_and_is_skewed() {
        for (conns, rooms) in [(20_000, 5_000), (2_000, 200), (7, 7), (1_001, 10)] {
            let plan = Plan::new(conns, rooms, Dist::Zipf(1.1), 1).unwrap();
            assert_eq!(plan.seats.len(), conns);
            assert_eq!(plan.sizes.iter().sum::<usize>(), conns);
            assert!(plan.sizes.iter().all(|&s| s >= 1), "every room has a member");
            let mut counted = vec![0usize; rooms];
            let mut seen = std::collections::HashSet::new();
            for seat in &plan.seats {
                counted[seat.room as usize] += 1;
                assert!(seen.insert((seat.room, seat.member)), "seat given twice");
            }
            assert_eq!(counted, plan.sizes);
        }
        let sizes = room_sizes(20_000, 5_000, Dist::Zipf(1.1)).unwrap();
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!(sizes[0] > 50 * median, "largest {} vs median {median}", sizes[0]);
        assert!(sizes[0] >= sizes[1] && sizes[1] >= sizes[100]);
        assert!(sizes[0] > 1_000, "zipf:1.1 puts a large share in room 0: {}", sizes[0]);
    }

    /// What `--shard` documents: round-by-round seats, so shards split a room only when
    /// the shard count and the room count have no common factor.
    #[test]
    fn shards_split_rooms_only_with_a_coprime_room_count() {
        let shards_of = |conns: usize, rooms: usize, n: usize| {
            let plan = Plan::new(conns, rooms, Dist::Uniform, 1).unwrap();
            let mut seen = vec![std::collections::BTreeSet::new(); rooms];
            for (i, seat) in plan.seats.iter().enumerate() {
                assert_eq!(seat.room as usize, i % rooms);
                seen[seat.room as usize].insert(i % n);
            }
            seen.into_iter().map(|s| s.len()).collect::<Vec<_>>()
        };
        assert!(shards_of(2_000, 200, 2).iter().all(|&s| s == 1));
        assert!(shards_of(1_990, 199, 2).iter().all(|&s| s == 2));
        assert!(shards_of(990, 99, 2).iter().all(|&s| s == 2));
    }

    #[test]
    fn uniform_rooms_are_not_skewed() {
        let sizes = room_sizes(20_000, 5_000, Dist::Uniform).unwrap();
        assert!(sizes.iter().all(|&s| s == 4));
    }

    #[test]
    fn refuses_fewer_connections_than_rooms() {
        assert!(room_sizes(3, 4, Dist::Uniform).is_err());
        assert!("zipf:x".parse::<Dist>().is_err());
        assert!("zipf:0".parse::<Dist>().is_err());
        assert_eq!("zipf:1.5".parse::<Dist>().unwrap(), Dist::Zipf(1.5));
    }

    #[test]
    fn shards_cover_every_connection_once() {
        for n in [1, 2, 3, 7] {
            let mut hits = vec![0u32; 1_000];
            for k in 0..n {
                let shard: Shard = format!("{k}/{n}").parse().unwrap();
                for i in shard.members(hits.len()) {
                    assert!(shard.contains(i));
                    hits[i] += 1;
                }
            }
            assert!(hits.iter().all(|&h| h == 1), "n={n}");
        }
        assert!("2/2".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
    }

    #[test]
    fn senders_are_the_first_members() {
        let plan = Plan::new(10, 2, Dist::Uniform, 2).unwrap();
        let senders = (0..10).filter(|&c| plan.is_sender(c)).count();
        assert_eq!(senders, 4);
        // Round-robin seating: connections 0 and 1 open rooms 0 and 1.
        assert_eq!(plan.seats[0], Seat { room: 0, member: 0 });
        assert_eq!(plan.seats[1], Seat { room: 1, member: 0 });
        assert_eq!(plan.seats[2], Seat { room: 0, member: 1 });
    }
}
