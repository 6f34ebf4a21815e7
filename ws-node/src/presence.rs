//! Who is in a room, as one node sees it: its own members' users (counted per connection)
//! and the users other nodes report, merged into one view where each user counts once.
//! Every change that makes a user appear or vanish from that view is one presence event.

use std::collections::HashMap;
use std::sync::Arc;

use shared::ids::UserId;
use shared::protocol::PresenceEvent;

/// A user in the merged view: how many holders (this node, other nodes) have it, and the
/// `info` its token carried, when any.
#[derive(Debug, Clone, PartialEq)]
pub struct Present {
    pub holders: u32,
    pub info: Option<Arc<str>>,
}

/// The merged view, cheap to clone (a persistent map), so a `welcome` is a snapshot taken in
/// O(1) and serialized by the joiner's own session.
pub type Everyone = imbl::OrdMap<UserId, Present>;

/// A presence change for the members of this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event: PresenceEvent,
    pub user: UserId,
    pub info: Option<Arc<str>>,
}

#[derive(Debug, Default, Clone)]
pub struct Presence {
    /// This node's users with their connection count.
    local: HashMap<UserId, (u32, Option<Arc<str>>)>,
    /// Users other nodes hold, as they last reported, per node.
    remote: HashMap<String, HashMap<UserId, Option<Arc<str>>>>,
    everyone: Everyone,
}

impl Presence {
    pub fn everyone(&self) -> &Everyone {
        &self.everyone
    }

    /// This node's users with their `info`, for a sync to other nodes.
    pub fn local_users(&self) -> Vec<(UserId, Option<Arc<str>>)> {
        self.local.iter().map(|(u, (_, i))| (u.clone(), i.clone())).collect()
    }

    /// Nodes that reported users.
    pub fn remote_nodes(&self) -> impl Iterator<Item = &String> {
        self.remote.keys()
    }

    /// A connection of `user` joined here. Returns whether it is the user's first on this
    /// node (other nodes must hear of it) and the change for this node's members.
    pub fn join_local(&mut self, user: &UserId, info: Option<Arc<str>>) -> (bool, Option<Change>) {
        let e = self.local.entry(user.clone()).or_insert((0, None));
        e.0 += 1;
        if info.is_some() {
            e.1 = info.clone();
        }
        if e.0 > 1 {
            return (false, None);
        }
        (true, self.add(user, info))
    }

    /// A connection of `user` left here: whether it was the user's last on this node, and
    /// the change for this node's members.
    pub fn leave_local(&mut self, user: &UserId) -> (bool, Option<Change>) {
        let Some(e) = self.local.get_mut(user) else { return (false, None) };
        e.0 -= 1;
        if e.0 > 0 {
            return (false, None);
        }
        self.local.remove(user);
        (true, self.remove(user))
    }

    /// Node `node` says `user` is (or is no longer) there. Idempotent: hearing it twice
    /// changes nothing, which is what keeps presence counted once.
    pub fn set_remote(
        &mut self,
        node: &str,
        user: &UserId,
        present: bool,
        info: Option<Arc<str>>,
    ) -> Option<Change> {
        let users = self.remote.entry(node.to_owned()).or_default();
        if present {
            if users.insert(user.clone(), info.clone()).is_some() {
                return None;
            }
            self.add(user, info)
        } else {
            users.remove(user)?;
            if users.is_empty() {
                self.remote.remove(node);
            }
            self.remove(user)
        }
    }

    /// Replaces what `node` holds with a full list (its sync).
    pub fn replace_remote(
        &mut self,
        node: &str,
        users: Vec<(UserId, Option<Arc<str>>)>,
    ) -> Vec<Change> {
        let mut changes = self.drop_remote(node);
        for (u, info) in users {
            changes.extend(self.set_remote(node, &u, true, info));
        }
        // A user that left and came back within the swap is no change at all.
        let mut net: Vec<Change> = Vec::new();
        for c in changes {
            match net.iter().position(|n| n.user == c.user && n.event != c.event) {
                Some(i) => {
                    net.remove(i);
                }
                None => net.push(c),
            }
        }
        net
    }

    /// Forgets every user of `node` (it left the room or died).
    pub fn drop_remote(&mut self, node: &str) -> Vec<Change> {
        let Some(users) = self.remote.remove(node) else { return Vec::new() };
        users.into_keys().filter_map(|u| self.remove(&u)).collect()
    }

    fn add(&mut self, user: &UserId, info: Option<Arc<str>>) -> Option<Change> {
        match self.everyone.get_mut(user) {
            Some(p) => {
                p.holders += 1;
                if info.is_some() {
                    p.info = info;
                }
                None
            }
            None => {
                self.everyone.insert(user.clone(), Present { holders: 1, info: info.clone() });
                Some(Change { event: PresenceEvent::Join, user: user.clone(), info })
            }
        }
    }

    fn remove(&mut self, user: &UserId) -> Option<Change> {
        let p = self.everyone.get_mut(user)?;
        p.holders -= 1;
        if p.holders > 0 {
            return None;
        }
        self.everyone.remove(user);
        Some(Change { event: PresenceEvent::Leave, user: user.clone(), info: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_user_on_two_nodes_and_two_tabs_joins_and_leaves_once() {
        let mut p = Presence::default();
        assert!(p.join_local(&u("ann"), None).1.is_some());
        assert_eq!(p.join_local(&u("ann"), None), (false, None));
        assert_eq!(p.set_remote("b", &u("ann"), true, None), None);
        assert_eq!(p.leave_local(&u("ann")), (false, None));
        assert_eq!(p.leave_local(&u("ann")), (true, None));
        let gone = p.set_remote("b", &u("ann"), false, None).unwrap();
        assert_eq!(gone.event, PresenceEvent::Leave);
        assert!(p.everyone().is_empty());
    }

    #[test]
    fn a_sync_and_a_presence_event_for_the_same_user_count_once() {
        let mut p = Presence::default();
        assert!(p.set_remote("b", &u("bob"), true, None).is_some());
        let c = p.replace_remote("b", vec![(u("bob"), None), (u("cy"), None)]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].user, u("cy"));
        assert_eq!(p.everyone().get(&u("bob")).unwrap().holders, 1);
        assert_eq!(p.drop_remote("b").len(), 2);
    }
}
