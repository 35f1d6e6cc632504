//! The room registry: room id -> `Arc<Room>` in a sharded concurrent map.
//!
//! Lookups clone the `Arc` and drop the shard guard at once, so no guard is ever held across an
//! `.await` and the send path never contends on a global lock.
//!
//! `rooms_max` is enforced with an atomic count reserved *before* the map entry is taken, so
//! concurrent opens can never overshoot it (a check of the map's length outside the entry could).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::{Room, RoomSummary};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

pub struct Registry {
    rooms: DashMap<String, Arc<Room>>,
    /// Rooms registered plus opens in progress; never above `rooms_max`.
    reserved: AtomicUsize,
    rooms_max: usize,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(rooms_max: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            rooms: DashMap::new(),
            reserved: AtomicUsize::new(0),
            rooms_max,
            metrics,
        }
    }

    /// Registers a new live room; fails if the id is taken or the node is full.
    pub fn open(&self, room: Room) -> Result<Arc<Room>> {
        let reserved = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.rooms_max).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(Error::TooManyRooms);
        }
        match self.rooms.entry(room.id.clone()) {
            Entry::Occupied(_) => {
                self.reserved.fetch_sub(1, Ordering::AcqRel);
                Err(Error::RoomExists(room.id))
            }
            Entry::Vacant(v) => {
                let room = Arc::new(room);
                v.insert(room.clone());
                self.metrics.rooms.inc();
                Ok(room)
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Room>> {
        self.rooms.get(id).map(|r| r.value().clone())
    }

    /// Removes `room` if it is still the one registered under its id.
    pub fn remove(&self, room: &Arc<Room>) {
        if self
            .rooms
            .remove_if(&room.id, |_, r| Arc::ptr_eq(r, room))
            .is_some()
        {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rooms.dec();
        }
    }

    /// Every live room, cloned out of the map so callers may take their time.
    pub fn all(&self) -> Vec<Arc<Room>> {
        self.rooms.iter().map(|r| r.value().clone()).collect()
    }

    pub fn summaries(&self) -> Vec<RoomSummary> {
        let mut list: Vec<RoomSummary> = self.all().iter().map(|r| r.summary()).collect();
        list.sort_by(|a, b| b.viewers.cmp(&a.viewers).then_with(|| a.room.cmp(&b.room)));
        list
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoomsConfig;
    use crate::fanout::LocalFanout;

    #[test]
    fn open_get_remove() {
        let m = Arc::new(Metrics::new());
        let reg = Registry::new(2, m.clone());
        let cfg = RoomsConfig::default();
        let a = reg
            .open(Room::new("a", "s", "t", &cfg, m.clone(), &LocalFanout))
            .unwrap();
        assert!(matches!(
            reg.open(Room::new("a", "s", "t", &cfg, m.clone(), &LocalFanout)),
            Err(Error::RoomExists(_))
        ));
        reg.open(Room::new("b", "s", "t", &cfg, m.clone(), &LocalFanout))
            .unwrap();
        assert_eq!(
            reg.open(Room::new("c", "s", "t", &cfg, m.clone(), &LocalFanout))
                .err(),
            Some(Error::TooManyRooms)
        );
        assert!(Arc::ptr_eq(&reg.get("a").unwrap(), &a));
        reg.remove(&a);
        assert!(reg.get("a").is_none());
        assert_eq!(m.rooms.get(), 1);
        // The slot freed by the removal is usable again.
        reg.open(Room::new("c", "s", "t", &cfg, m.clone(), &LocalFanout))
            .unwrap();
    }

    /// Many threads opening distinct rooms at once never register more than `rooms_max`.
    #[test]
    fn concurrent_opens_never_overshoot_rooms_max() {
        let m = Arc::new(Metrics::new());
        let reg = Arc::new(Registry::new(5, m.clone()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (reg, m) = (reg.clone(), m.clone());
                std::thread::spawn(move || {
                    let cfg = RoomsConfig::default();
                    let mut opened = 0;
                    for i in 0..50 {
                        let id = format!("r{t}-{i}");
                        if reg
                            .open(Room::new(&id, "s", "t", &cfg, m.clone(), &LocalFanout))
                            .is_ok()
                        {
                            opened += 1;
                        }
                    }
                    opened
                })
            })
            .collect();
        let opened: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(opened, 5);
        assert_eq!(reg.len(), 5);
        assert_eq!(m.rooms.get(), 5);
    }
}
