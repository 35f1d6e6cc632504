//! `mixed`: streamers, passive viewers and active senders doing a realistic mix (gifts of several
//! stickers, which form combos, paid and free questions, leaderboard reads, balance and ping),
//! with streamers answering every question, thanking some gifts, keeping a goal running and
//! fighting PK battles in pairs of rooms.
//! Reports each command's ack latency, the viewers' delivery checks, and the room events by kind
//! (combo ends, goals, leaderboard updates), so the mechanics at work show.

use std::time::Duration;

use anyhow::Result;

use super::{
    analyse_rooms, audit_into, check_positive, report_room_events, run_rooms, Ctx, RoomsPlan,
};
use crate::actors::Mix;
use crate::cli::MixedArgs;
use crate::stats::Hist;
use crate::Outcome;

pub(crate) async fn run(ctx: &mut Ctx, args: &MixedArgs) -> Result<Outcome> {
    check_positive("rooms", args.rooms)?;
    check_positive("senders-per-room", args.senders_per_room)?;
    let params = serde_json::json!({
        "rooms": args.rooms,
        "viewers": args.viewers,
        "senders_per_room": args.senders_per_room,
        "commands_per_sec": args.commands_per_sec,
        "duration_secs": args.duration_secs,
        "thank_every": args.thank_every,
        "goal_coins": args.goal_coins,
        "pk": args.pk,
    });
    let mut report = ctx.report("mixed", params);
    let plan = RoomsPlan {
        rooms: args.rooms,
        viewers: args.viewers,
        senders_per_room: args.senders_per_room,
        rate_per_sec: args.commands_per_sec,
        pipeline: 8,
        duration: Duration::from_secs(args.duration_secs),
        catch_up: Duration::from_secs(args.catch_up_secs),
        mix: Mix::Mixed,
        sticker: "rose".into(),
        thank_every: args.thank_every,
        goal_coins: args.goal_coins,
        pk: args.pk,
        wait_viewer_count: Duration::ZERO,
    };
    let run = run_rooms(ctx, &plan).await?;
    let d = analyse_rooms(&run, &mut report);
    let mut plots = Vec::new();
    for (name, h) in &run.senders.commands {
        report.latency(&format!("ack {name}"), h);
        plots.push((format!("ack {name}"), h.clone()));
    }
    let mut streamer_cmds: std::collections::BTreeMap<&str, Hist> = Default::default();
    for s in &run.streamers {
        for (name, h) in &s.commands {
            streamer_cmds.entry(name).or_default().merge(h);
        }
    }
    for (name, h) in &streamer_cmds {
        report.latency(&format!("ack {name} (streamer)"), h);
    }
    // The room mechanics at work: combos that ended, goals set and reached, leaderboards, PK
    // battles.
    report_room_events(&run, &mut report);
    report.metric(
        "private_messages_received",
        run.senders.private_messages as f64,
    );
    report.latency("delivery (each viewer)", &d.delivery);
    report.latency("gift to last viewer", &d.last_viewer);
    plots.push(("gift delivery (each viewer)".into(), d.delivery));
    audit_into(ctx, &args.audit, &run.senders.gift_ids, &mut report)?;
    Ok(Outcome {
        report,
        plots,
        title: format!(
            "giftd mixed: {} rooms, {} viewers, {} commands/s",
            args.rooms, args.viewers, args.commands_per_sec
        ),
    })
}
