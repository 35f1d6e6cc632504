//! Criterion microbenchmarks of the revenue split (`giftd::gift::split`): the exact three-way
//! split with largest-remainder rounding, run inside the ledger's write transaction for every
//! gift, and the spending plan that picks which channel's coins pay.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use giftd::config::StoreFees;
use giftd::gift::split::{apportion, draw, split};
use giftd::gift::Channel;

const FEES: StoreFees = StoreFees {
    ios: 3000,
    android: 3000,
    web: 0,
};

fn bench_split(c: &mut Criterion) {
    let mut g = c.benchmark_group("split");
    g.bench_function("one_channel_rose", |b| {
        b.iter(|| split(black_box([1, 0, 0]), black_box(FEES), black_box(5000)))
    });
    g.bench_function("one_channel_castle", |b| {
        b.iter(|| split(black_box([0, 0, 50_000]), black_box(FEES), black_box(5000)))
    });
    g.bench_function("three_channels", |b| {
        b.iter(|| {
            split(
                black_box([333, 3_333, 6_334]),
                black_box(FEES),
                black_box(7000),
            )
        })
    });
    g.finish();
}

fn bench_apportion_and_draw(c: &mut Criterion) {
    c.bench_function("apportion/3_parts", |b| {
        let mut out = [0u64; 3];
        b.iter(|| {
            apportion(
                black_box(1_000),
                black_box(&[3_500_000, 3_500_000, 3_000_000]),
                &mut out,
            );
            out
        })
    });
    let order = [Channel::Web, Channel::Android, Channel::Ios];
    c.bench_function("draw/spend_order", |b| {
        b.iter(|| draw(black_box([10, 10, 10]), black_box(25), black_box(&order)))
    });
}

criterion_group!(benches, bench_split, bench_apportion_and_draw);
criterion_main!(benches);
