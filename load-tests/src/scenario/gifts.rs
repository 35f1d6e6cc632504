//! `gifts`: durable gift throughput. Many senders in many small rooms send gifts closed-loop (or
//! at a set rate); each receipt is timed from send to ack, which giftd sends only after the
//! ledger committed the gift. Optionally audits the ledger afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::mpsc;

use super::{audit_into, check_positive, funded_senders, per_sec, sender_problems, Ctx};
use crate::actors::{Mix, Sender, SenderOut, SenderPlan, Streamer, StreamerPlan};
use crate::cli::GiftsArgs;
use crate::stats::{Check, Hist};
use crate::Outcome;

pub(crate) async fn run(ctx: &mut Ctx, args: &GiftsArgs) -> Result<Outcome> {
    check_positive("rooms", args.rooms)?;
    check_positive("senders-per-room", args.senders_per_room)?;
    let senders_n = args.rooms * args.senders_per_room;
    let params = serde_json::json!({
        "rooms": args.rooms,
        "senders_per_room": args.senders_per_room,
        "senders": senders_n,
        "gifts_per_sec": args.gifts_per_sec,
        "pipeline": args.pipeline,
        "duration_secs": args.duration_secs,
        "gifts_max": args.gifts_max,
        "sticker": args.sticker,
    });
    let mut report = ctx.report("gifts", params);

    let mut streamers = Vec::new();
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("load-{}-g{r}", ctx.run_id))
        .collect();
    for (r, room) in rooms.iter().enumerate() {
        let plan = StreamerPlan {
            target: ctx.target,
            user: format!("st-{}-{r}", ctx.run_id),
            room: room.clone(),
            answer_questions: false,
            thank_every: 0,
            goal_coins: 0,
            pk_challenge: None,
        };
        streamers.push(Streamer::open(plan, &ctx.minter).await?);
    }
    let users = funded_senders(ctx, senders_n).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let per_sender_max = if args.gifts_max > 0 {
        args.gifts_max.div_ceil(senders_n as u64)
    } else {
        u64::MAX
    };
    let bar = ctx.bar(senders_n as u64, "senders");
    let mut senders = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let plan = SenderPlan {
            target: ctx.targets[ctx.node_of(i)],
            index: i,
            user: user.clone(),
            room: rooms[i % args.rooms].clone(),
            rate_per_sec: args.gifts_per_sec / senders_n as f64,
            pipeline: args.pipeline.max(1),
            duration: Duration::from_secs(args.duration_secs),
            commands_max: per_sender_max,
            sticker: args.sticker.clone(),
            mix: Mix::Gifts,
            key_prefix: format!("k-{}", ctx.run_id),
            drain: Duration::from_secs(10),
            acked: acked.clone(),
        };
        senders.push(Sender::connect(plan, &ctx.minter).await?);
        bar.inc(1);
    }
    bar.finish();

    // Nobody needs the per-gift send times here; the channel is drained and dropped.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let bar = ctx.bar(args.duration_secs.max(1), "gifting");
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| tokio::spawn(s.run(tx.clone())))
        .collect();
    drop(tx);
    let ticker = {
        let (bar, acked) = (bar.clone(), acked.clone());
        let duration = Duration::from_secs(args.duration_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let secs = started.elapsed().min(duration).as_secs();
                bar.set_position(secs);
                let a = acked.load(Ordering::Relaxed);
                let rate = a as f64 / started.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!("{a} receipts, {rate:.0}/s"));
            }
        })
    };
    let mut out = SenderOut::default();
    for t in tasks {
        out.merge(&t.await?);
    }
    ticker.abort();
    bar.finish();
    let _ = drain.await;
    for s in streamers {
        let st = s.close().await?;
        if let Some(c) = st.closed_early {
            report.problem(format!("a streamer disconnected: {c}"));
        }
    }

    let receipts = out.commands.get("send_gift").cloned().unwrap_or_default();
    let secs = if out.last_ack_us > out.first_send_us {
        (out.last_ack_us - out.first_send_us) as f64 / 1e6
    } else {
        0.0
    };
    let per_sec = per_sec(receipts.len() as f64, secs);
    report.metric("senders", senders_n as f64);
    report.metric("gifts_sent", out.sent as f64);
    report.metric("gifts_committed", receipts.len() as f64);
    report.metric("gifts_per_sec", per_sec);
    report.metric("window_secs", secs);
    report.metric("sender_room_events", out.seq.events as f64);
    report.latency("receipt", &receipts);
    report.checks.push(Check::at_least(
        "gifts_per_sec",
        per_sec,
        args.target_gifts_per_sec,
    ));
    report.checks.push(Check::at_most(
        "receipt_latency_ms_p99",
        receipts.summary().latency_us_p99 as f64 / 1000.0,
        args.target_p99_ms,
    ));
    sender_problems(&out, &mut report);
    audit_into(ctx, &args.audit, &out.gift_ids, &mut report)?;
    let plots: Vec<(String, Hist)> = vec![("receipt (send to committed ack)".into(), receipts)];
    Ok(Outcome {
        report,
        plots,
        title: format!(
            "giftd gifts: {senders_n} senders in {} rooms, receipt latency",
            args.rooms
        ),
    })
}
