//! Criterion microbenchmarks of room-event encoding (`giftd::protocol::server::Event::encode`).
//! Every room event is encoded exactly once, under the room's lock, and the single frame is
//! shared by every member, so this cost is paid once per event whatever the room's size.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use giftd::protocol::server::{EventKind, PaidView, QuestionView};
use giftd::protocol::Event;

fn bench_encode(c: &mut Criterion) {
    let gift = EventKind::Gift {
        gift_id: "g123456".into(),
        from: "viewer-0042".into(),
        sticker: "rose".into(),
        sticker_name: "Rose".into(),
        price_coins: 1,
        combo: None,
    };
    let viewers = EventKind::Viewers { count: 10_000 };
    let question = EventKind::Question(QuestionView {
        question_id: 77,
        from: "viewer-0042".into(),
        text: "What is the name of the song playing right now? It is \"great\"!".into(),
        created_ms: 1_700_000_000_000,
        paid: Some(PaidView {
            gift_id: "g99".into(),
            sticker: "coffee".into(),
            price_coins: 100,
        }),
        pinned_until_ms: Some(1_700_000_060_000),
        answered: false,
    });
    let mut g = c.benchmark_group("event_encode");
    for (name, kind) in [
        ("gift", &gift),
        ("viewers", &viewers),
        ("paid_question", &question),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                Event::encode(
                    black_box("room-1"),
                    black_box("9f2c4e1ab7d03366"),
                    black_box(123_456),
                    black_box(kind),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
