//! Who may hold the report port's slots. A connection starts *unproven*; its first valid report
//! makes it *proven*. The rules:
//! - at most [`SlotLimits::per_address`] unproven connections per source address: a newcomer
//!   from an address that already holds that many pushes out that address's oldest unproven
//!   connection (so strangers sharing an agent's address, behind NAT or on its host, cannot keep
//!   the agent out by holding connections: the agent's own connection gets in, and stays until
//!   `per_address` newer ones from that address arrive before its first report);
//! - when every slot is taken, a new connection pushes out the oldest unproven one; a proven
//!   connection is never pushed out (when all slots are proven, the newcomer is refused).
//!
//! Pure bookkeeping behind a short lock; the connection task watches its [`Slot::evicted`] token.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    /// Report connections at most, proven or not.
    pub total: usize,
    /// Unproven report connections at most per source address.
    pub per_address: usize,
}

/// Why a new report connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("all {0} slots hold agents that report")]
    AllProven(usize),
}

struct Entry {
    addr: IpAddr,
    proven: bool,
    evicted: CancellationToken,
}

struct Table {
    limits: SlotLimits,
    next_id: u64,
    /// Keyed by admission order: the first unproven entry is the oldest.
    entries: BTreeMap<u64, Entry>,
}

#[derive(Clone)]
pub struct Slots(Arc<Mutex<Table>>);

/// One admitted connection's slot; released on drop.
pub struct Slot {
    slots: Slots,
    id: u64,
    /// Cancelled when a newcomer pushed this (unproven) connection out.
    pub evicted: CancellationToken,
}

impl Slots {
    pub fn new(limits: SlotLimits) -> Self {
        Self(Arc::new(Mutex::new(Table {
            limits,
            next_id: 0,
            entries: BTreeMap::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn admit(&self, addr: IpAddr) -> Result<Slot, Refused> {
        let mut t = self.lock();
        let unproven_here = t
            .entries
            .values()
            .filter(|e| !e.proven && e.addr == addr)
            .count();
        let make_room = if unproven_here >= t.limits.per_address {
            t.oldest_unproven(Some(addr))
        } else if t.entries.len() >= t.limits.total {
            Some(
                t.oldest_unproven(None)
                    .ok_or(Refused::AllProven(t.limits.total))?,
            )
        } else {
            None
        };
        if let Some(e) = make_room.and_then(|id| t.entries.remove(&id)) {
            tracing::warn!(peer = %e.addr, "report slot of a connection that never reported given to a newcomer");
            e.evicted.cancel();
        }
        let id = t.next_id;
        t.next_id += 1;
        let evicted = CancellationToken::new();
        t.entries.insert(
            id,
            Entry {
                addr,
                proven: false,
                evicted: evicted.clone(),
            },
        );
        Ok(Slot {
            slots: self.clone(),
            id,
            evicted,
        })
    }

    /// (proven, unproven) connections held now.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        let proven = t.entries.values().filter(|e| e.proven).count();
        (proven, t.entries.len() - proven)
    }
}

impl Table {
    /// The oldest unproven entry, from `addr` only when given.
    fn oldest_unproven(&self, addr: Option<IpAddr>) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, e)| !e.proven && addr.is_none_or(|a| a == e.addr))
            .map(|(&id, _)| id)
    }
}

impl Slot {
    /// The connection delivered a valid report: it can no longer be pushed out.
    pub fn prove(&self) {
        if let Some(e) = self.slots.lock().entries.get_mut(&self.id) {
            e.proven = true;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_unproven_slots() {
        let slots = Slots::new(SlotLimits {
            total: 10,
            per_address: 3,
        });
        let held: Vec<Slot> = (0..3).map(|_| slots.admit(ip(1)).unwrap()).collect();
        // Another address is not affected.
        let other = slots.admit(ip(2)).unwrap();
        // A fourth from the full address pushes out that address's oldest, not another's.
        let fourth = slots.admit(ip(1)).unwrap();
        assert!(held[0].evicted.is_cancelled());
        assert!(!held[1].evicted.is_cancelled() && !other.evicted.is_cancelled());
        assert_eq!(
            slots.counts(),
            (0, 4),
            "the evicted slot is released at once"
        );
        // A proven connection frees its address's share and is never pushed out.
        held[1].prove();
        let _fifth = slots.admit(ip(1)).unwrap();
        assert!(!held[1].evicted.is_cancelled() && !held[2].evicted.is_cancelled());
        assert!(!fourth.evicted.is_cancelled());
        assert_eq!(slots.counts(), (1, 4));
        drop(held);
        assert_eq!(slots.counts(), (0, 3));
    }

    #[test]
    fn a_stranger_holding_an_address_cannot_keep_its_agent_out() {
        let slots = Slots::new(SlotLimits {
            total: 64,
            per_address: 8,
        });
        let strangers: Vec<Slot> = (0..80).map(|_| slots.admit(ip(1)).unwrap()).collect();
        assert_eq!(slots.counts(), (0, 8));
        let agent = slots.admit(ip(1)).expect("the agent gets a slot");
        assert!(
            strangers[72].evicted.is_cancelled(),
            "the oldest held one went"
        );
        assert!(strangers[73..].iter().all(|s| !s.evicted.is_cancelled()));
        agent.prove();
        // Proven, it stays whatever the address opens next.
        let _more: Vec<Slot> = (0..20).map(|_| slots.admit(ip(1)).unwrap()).collect();
        assert!(!agent.evicted.is_cancelled());
        assert_eq!(slots.counts(), (1, 8));
    }

    #[test]
    fn newcomers_push_out_the_oldest_unproven_never_a_proven_one() {
        let slots = Slots::new(SlotLimits {
            total: 3,
            per_address: 3,
        });
        let agent = slots.admit(ip(9)).unwrap();
        agent.prove();
        let a = slots.admit(ip(1)).unwrap();
        let b = slots.admit(ip(2)).unwrap();
        let c = slots.admit(ip(3)).unwrap();
        assert!(a.evicted.is_cancelled(), "the oldest unproven goes");
        assert!(!b.evicted.is_cancelled() && !agent.evicted.is_cancelled());
        let _d = slots.admit(ip(4)).unwrap();
        assert!(b.evicted.is_cancelled());
        assert!(!c.evicted.is_cancelled() && !agent.evicted.is_cancelled());
        // All proven: the newcomer is refused.
        c.prove();
        _d.prove();
        assert_eq!(slots.admit(ip(5)).err(), Some(Refused::AllProven(3)));
        assert_eq!(slots.counts(), (3, 0));
    }
}
