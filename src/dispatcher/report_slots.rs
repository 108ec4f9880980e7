//! Who may hold the report port's slots. A connection starts *unproven*; its first valid report
//! makes it *proven*. The rules:
//! - at most [`SlotLimits::per_address`] unproven connections per source address: more from that
//!   address are refused at once;
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
    #[error("{0} connections from this address have not reported yet")]
    AddressFull(usize),
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
        if unproven_here >= t.limits.per_address {
            return Err(Refused::AddressFull(unproven_here));
        }
        if t.entries.len() >= t.limits.total {
            let oldest = t
                .entries
                .iter()
                .find(|(_, e)| !e.proven)
                .map(|(&id, _)| id)
                .ok_or(Refused::AllProven(t.limits.total))?;
            if let Some(e) = t.entries.remove(&oldest) {
                tracing::warn!(peer = %e.addr, "report slot of a connection that never reported given to a newcomer");
                e.evicted.cancel();
            }
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
        assert_eq!(slots.admit(ip(1)).err(), Some(Refused::AddressFull(3)));
        // Another address is not affected, and a proven connection frees its address's share.
        let _other = slots.admit(ip(2)).unwrap();
        held[0].prove();
        let _again = slots.admit(ip(1)).unwrap();
        assert_eq!(slots.counts(), (1, 4));
        drop(held);
        assert_eq!(slots.counts(), (0, 2));
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
