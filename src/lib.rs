//! giftd: a live-streaming gift and tipping server.
//!
//! Streamers open rooms; viewers join over WebSocket, ask questions and send paid stickers. Each
//! gift is committed to a double-entry ledger before anyone hears of it, split exactly between
//! the app store, the streamer and the platform, and fanned out to the room as one encoded frame.
//!
//! The modules, roughly in the order a request meets them: [`server`] accepts, [`http`] routes
//! and upgrades, [`connection`] runs a WebSocket, [`session`] executes commands decoded by
//! [`protocol`], [`gifting`] moves money through the [`ledger`] and publishes to a [`room`].

pub mod app;
pub mod auth;
pub mod bounds;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod demo;
pub mod error;
pub mod fanout;
pub mod gift;
pub mod gifting;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod question;
pub mod ratelimit;
pub mod readiness;
pub mod red_packets;
pub mod room;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod telemetry;
pub mod throttle;
pub mod websocket;
