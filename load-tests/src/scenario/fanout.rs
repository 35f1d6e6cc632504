//! `fanout`: rooms full of viewers and a steady stream of gifts. Every viewer verifies its room's
//! sequence (zero loss, no gaps, no reordering) and times every gift from its sender's send to
//! its own receipt; the report gives per-delivery latency, gift-to-last-viewer latency and
//! deliveries per second.

use std::time::Duration;

use anyhow::Result;

use super::{analyse_rooms, check_positive, report_room_events, run_rooms, Ctx, RoomsPlan};
use crate::actors::Mix;
use crate::cli::FanoutArgs;
use crate::stats::Check;
use crate::Outcome;

pub(crate) async fn run(ctx: &mut Ctx, args: &FanoutArgs) -> Result<Outcome> {
    check_positive("rooms", args.rooms)?;
    check_positive("senders-per-room", args.senders_per_room)?;
    let params = serde_json::json!({
        "rooms": args.rooms,
        "viewers": args.viewers,
        "gifts_per_sec": args.gifts_per_sec,
        "duration_secs": args.duration_secs,
        "senders_per_room": args.senders_per_room,
        "sticker": args.sticker,
        "pipeline": args.pipeline,
        "goal_coins": args.goal_coins,
        "pk": args.pk,
        "conns_per_worker": ctx.common.conns_per_worker,
        "nodes": ctx.targets.len(),
        "wait_viewer_count_secs": args.wait_viewer_count_secs,
    });
    let mut report = ctx.report("fanout", params);
    let plan = RoomsPlan {
        rooms: args.rooms,
        viewers: args.viewers,
        senders_per_room: args.senders_per_room,
        rate_per_sec: args.gifts_per_sec,
        pipeline: args.pipeline.max(1),
        duration: Duration::from_secs(args.duration_secs),
        catch_up: Duration::from_secs(args.catch_up_secs),
        mix: Mix::Gifts,
        sticker: args.sticker.clone(),
        thank_every: 0,
        goal_coins: args.goal_coins,
        pk: args.pk,
        wait_viewer_count: Duration::from_secs(args.wait_viewer_count_secs),
    };
    let run = run_rooms(ctx, &plan).await?;
    let d = analyse_rooms(&run, &mut report);
    if let Some(h) = run.senders.commands.get("send_gift") {
        report.latency("receipt", h);
    }
    report.latency("delivery (each viewer)", &d.delivery);
    report.latency("gift to last viewer", &d.last_viewer);
    report.latency("receipt to last viewer", &d.receipt_to_last_viewer);
    report.latency("viewer connect", &d.connect);
    // The room mechanics the streamers saw (goal and PK events), when any run.
    if args.goal_coins > 0 || args.pk {
        report_room_events(&run, &mut report);
    }
    let p99_ms = d.last_viewer.summary().latency_us_p99 as f64 / 1000.0;
    report.checks.push(Check::at_most(
        "gift_to_last_viewer_latency_ms_p99",
        p99_ms,
        args.target_p99_ms,
    ));
    if args.target_deliveries_per_sec > 0.0 {
        let v = report
            .metrics
            .get("gift_deliveries_per_sec")
            .copied()
            .unwrap_or(0.0);
        report.checks.push(Check::at_least(
            "gift_deliveries_per_sec",
            v,
            args.target_deliveries_per_sec,
        ));
    }
    let mut plots = vec![
        ("delivery (each viewer)".to_owned(), d.delivery),
        ("gift to last viewer".to_owned(), d.last_viewer),
    ];
    if let Some(h) = run.senders.commands.get("send_gift") {
        plots.push(("receipt (sender)".to_owned(), h.clone()));
    }
    Ok(Outcome {
        report,
        plots,
        title: format!(
            "giftd fanout: {} room(s) x {} viewers, {} gifts/s",
            args.rooms, args.viewers, args.gifts_per_sec
        ),
    })
}
