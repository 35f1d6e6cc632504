//! Criterion microbenchmarks of the room registry and room membership
//! (`giftd::room::registry::Registry`, `giftd::room::Room::join/leave`): lookups in a node with
//! many rooms, and join/leave on one busy room, alone and under contention from other threads
//! (joins and leaves of one room serialize on the room's mutex).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use giftd::auth::Role;
use giftd::config::RoomsConfig;
use giftd::fanout::LocalFanout;
use giftd::metrics::Metrics;
use giftd::outbox::Outbox;
use giftd::room::registry::Registry;
use giftd::room::Room;

const ROOMS: usize = 10_000;

fn registry_with_rooms(n: usize) -> (Registry, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let reg = Registry::new(n + 1, metrics.clone());
    let cfg = RoomsConfig::default();
    for i in 0..n {
        reg.open(Room::new(
            &format!("room-{i}"),
            &format!("s{i}"),
            "t",
            &cfg,
            metrics.clone(),
            &LocalFanout,
        ))
        .expect("room opens");
    }
    (reg, metrics)
}

fn bench_lookup(c: &mut Criterion) {
    let (reg, _) = registry_with_rooms(ROOMS);
    let ids: Vec<String> = (0..ROOMS).map(|i| format!("room-{i}")).collect();
    let mut g = c.benchmark_group("registry");
    let mut i = 0usize;
    g.bench_function("get_hit_10k_rooms", |b| {
        b.iter(|| {
            i = (i + 7919) % ROOMS;
            reg.get(black_box(&ids[i]))
        })
    });
    g.bench_function("get_miss_10k_rooms", |b| {
        b.iter(|| reg.get(black_box("no-such-room")))
    });
    let reg = Arc::new(reg);
    let ids = Arc::new(ids);
    for threads in [2usize, 4] {
        g.bench_function(format!("get_hit_contended_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                contended(threads, iters, {
                    let (reg, ids) = (reg.clone(), ids.clone());
                    move |t, k| {
                        black_box(reg.get(&ids[(t * 104_729 + k as usize * 7919) % ROOMS]));
                    }
                })
            })
        });
    }
    g.finish();
}

fn bench_join_leave(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let cfg = RoomsConfig {
        members_max: 1_000_000,
        ..RoomsConfig::default()
    };
    let room = Arc::new(Room::new("busy", "star", "t", &cfg, metrics, &LocalFanout));
    // A room that already holds 10,000 members, as in the big fanout benchmark.
    let mut keep = Vec::new();
    for conn in 0..10_000u64 {
        let (outbox, rx) = Outbox::new(8, 1 << 20);
        let (_, ring) = room.join(conn, Role::Viewer, "u", outbox).expect("join");
        keep.push((rx, ring));
    }
    let mut g = c.benchmark_group("room");
    let next = Arc::new(AtomicU64::new(1_000_000));
    g.bench_function("join_leave_10k_members", |b| {
        b.iter(|| {
            let conn = next.fetch_add(1, Ordering::Relaxed);
            let (outbox, _rx) = Outbox::new(8, 1 << 20);
            let joined = room.join(conn, Role::Viewer, "u", outbox).expect("join");
            room.leave(conn);
            joined
        })
    });
    for threads in [2usize, 4] {
        g.bench_function(format!("join_leave_contended_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                contended(threads, iters, {
                    let (room, next) = (room.clone(), next.clone());
                    move |_, _| {
                        let conn = next.fetch_add(1, Ordering::Relaxed);
                        let (outbox, _rx) = Outbox::new(8, 1 << 20);
                        black_box(room.join(conn, Role::Viewer, "u", outbox).expect("join"));
                        room.leave(conn);
                    }
                })
            })
        });
    }
    g.finish();
    drop(keep);
}

/// Runs `op` `iters` times on each of `threads` threads started together; returns the wall time
/// divided by `threads`, so the figure is per operation as seen by the whole machine.
fn contended<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Send + Sync + Clone + 'static,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, op) = (barrier.clone(), op.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for k in 0..iters {
                    op(t, k);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed() / threads as u32
}

criterion_group!(benches, bench_lookup, bench_join_leave);
criterion_main!(benches);
