//! The sticker catalog: what can be sent and what it costs.
//!
//! Loaded from config (or the built-in defaults) once at start and shared read-only.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The highest price a sticker may have. It keeps every product in the split arithmetic far
/// inside `u128`.
pub const PRICE_COINS_MAX: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticker {
    /// Stable id used on the wire, `[a-z0-9_-]{1,32}`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Price in coins (1 coin = 1 US cent at list price).
    pub price_coins: u64,
}

/// The built-in catalog, from one coin to 50,000 coins.
pub fn builtin() -> Vec<Sticker> {
    [
        ("rose", "Rose", 1),
        ("heart", "Heart", 5),
        ("clap", "Clap", 10),
        ("coffee", "Coffee", 100),
        ("star", "Star", 500),
        ("cake", "Cake", 1_000),
        ("rocket", "Rocket", 5_000),
        ("yacht", "Yacht", 20_000),
        ("castle", "Castle", 50_000),
    ]
    .into_iter()
    .map(|(id, name, price_coins)| Sticker {
        id: id.into(),
        name: name.into(),
        price_coins,
    })
    .collect()
}

#[derive(Debug, Clone)]
pub struct Catalog {
    by_id: HashMap<String, Sticker>,
    ordered: Vec<Sticker>,
}

impl Catalog {
    pub fn new(stickers: Vec<Sticker>) -> Result<Catalog, String> {
        if stickers.is_empty() {
            return Err("the catalog is empty".into());
        }
        let mut by_id = HashMap::new();
        for s in &stickers {
            let id_ok = !s.id.is_empty()
                && s.id.len() <= crate::bounds::STICKER_ID_BYTES_MAX
                && s.id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !id_ok {
                return Err(format!(
                    "sticker id `{}` must match [a-z0-9_-]{{1,{}}}",
                    s.id,
                    crate::bounds::STICKER_ID_BYTES_MAX
                ));
            }
            if s.price_coins == 0 || s.price_coins > PRICE_COINS_MAX {
                return Err(format!(
                    "sticker `{}` price_coins must be between 1 and {PRICE_COINS_MAX}",
                    s.id
                ));
            }
            if by_id.insert(s.id.clone(), s.clone()).is_some() {
                return Err(format!("sticker id `{}` appears twice", s.id));
            }
        }
        Ok(Catalog {
            by_id,
            ordered: stickers,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Sticker> {
        self.by_id.get(id)
    }

    pub fn all(&self) -> &[Sticker] {
        &self.ordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_spans_one_to_fifty_thousand_coins() {
        let c = Catalog::new(builtin()).unwrap();
        let prices: Vec<u64> = c.all().iter().map(|s| s.price_coins).collect();
        assert_eq!(prices.iter().min(), Some(&1));
        assert!(prices.iter().max().copied().unwrap() >= 50_000);
    }

    #[test]
    fn rejects_bad_entries() {
        let s = |id: &str, p| Sticker {
            id: id.into(),
            name: "x".into(),
            price_coins: p,
        };
        assert!(Catalog::new(vec![s("ok", 0)]).is_err());
        assert!(Catalog::new(vec![s("Bad Id", 1)]).is_err());
        assert!(Catalog::new(vec![s("a", 1), s("a", 2)]).is_err());
        assert!(Catalog::new(vec![]).is_err());
    }
}
