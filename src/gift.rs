//! Gifts: the sticker catalog, the revenue split and the cut of red packets.
//!
//! Everything here is pure and synchronous. The ledger calls it inside its write transaction, so
//! the arithmetic that decides who gets which coin lives in one place with property tests
//! (`gift/split.rs`), apart from any I/O.

pub mod catalog;
pub mod red_packet;
pub mod split;

use serde::{Deserialize, Serialize};

/// The store channel through which coins were bought. Each channel has its own store fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Ios,
    Android,
    Web,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Ios, Channel::Android, Channel::Web];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Ios => "ios",
            Channel::Android => "android",
            Channel::Web => "web",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Coins per channel, indexed by [`Channel::index`].
pub type ChannelCoins = [u64; 3];

/// The store fee of each purchase channel, in basis points (1/100 of a percent).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreFees {
    pub ios: u32,
    pub android: u32,
    pub web: u32,
}

impl StoreFees {
    pub fn bps(&self, channel: Channel) -> u32 {
        match channel {
            Channel::Ios => self.ios,
            Channel::Android => self.android,
            Channel::Web => self.web,
        }
    }
}
