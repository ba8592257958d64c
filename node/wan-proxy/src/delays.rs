//! The delay table a proxy reads from its JSON file, and the delay of one chunk.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::Instant;

/// Which way a chunk goes on a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the application in this namespace towards the destination.
    Forward,
    /// From the destination back to the application.
    Back,
}

/// One namespace's delays: per destination address, the one-way delay of each direction
/// (ms), plus jitter and "loss" (a chunk held back by a retransmission's time; a TCP proxy
/// cannot drop bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Delays {
    pub table: HashMap<Ipv4Addr, (f64, f64)>,
    pub jitter_ms: f64,
    pub loss: f64,
    pub retransmit_ms: f64,
}

impl Delays {
    /// `{"table": {"10.213.1.1": [forward_ms, back_ms], ...}, "jitter_ms": 0, "loss": 0,
    /// "retransmit_ms": 200}`; anything else is an error naming what is wrong.
    pub fn parse(text: &str) -> Result<Delays, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let ms = |x: &serde_json::Value, what: &str| -> Result<f64, String> {
            match x.as_f64() {
                Some(f) if f.is_finite() && (0.0..=60_000.0).contains(&f) => Ok(f),
                _ => Err(format!(
                    "{what} must be a number of ms in 0..=60000, not {x}"
                )),
            }
        };
        let mut table = HashMap::new();
        let entries = v["table"]
            .as_object()
            .ok_or("\"table\" must be an object of address: [forward_ms, back_ms]")?;
        for (ip, pair) in entries {
            let addr: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
            let pair = pair
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or(format!("{ip}: want [forward_ms, back_ms]"))?;
            table.insert(addr, (ms(&pair[0], ip)?, ms(&pair[1], ip)?));
        }
        let optional = |key: &str, default: f64| match v.get(key) {
            None => Ok(default),
            Some(x) => ms(x, key),
        };
        let loss = v
            .get("loss")
            .map_or(Some(0.0), |x| x.as_f64())
            .unwrap_or(-1.0);
        if !(0.0..=1.0).contains(&loss) {
            return Err("\"loss\" must be a share in 0..=1".into());
        }
        Ok(Delays {
            table,
            jitter_ms: optional("jitter_ms", 0.0)?,
            loss,
            retransmit_ms: optional("retransmit_ms", 200.0)?,
        })
    }

    /// The link's one-way delay (ms) towards or back from `dst`; 0 for an unknown address.
    pub fn base_ms(&self, dst: Ipv4Addr, direction: Direction) -> f64 {
        let (forward, back) = self.table.get(&dst).copied().unwrap_or((0.0, 0.0));
        match direction {
            Direction::Forward => forward,
            Direction::Back => back,
        }
    }

    /// A connection's handshake costs one round trip.
    pub fn handshake(&self, dst: Ipv4Addr) -> Duration {
        let ms = self.base_ms(dst, Direction::Forward) + self.base_ms(dst, Direction::Back);
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// One chunk's delay: the link's, plus up to `jitter_ms`, plus `retransmit_ms` for a
    /// "lost" one. `uniform` and `coin` are draws in [0, 1).
    pub fn chunk_delay(
        &self,
        dst: Ipv4Addr,
        direction: Direction,
        uniform: f64,
        coin: f64,
    ) -> Duration {
        let mut ms = self.base_ms(dst, direction) + self.jitter_ms * uniform;
        if coin < self.loss {
            ms += self.retransmit_ms;
        }
        Duration::from_secs_f64(ms / 1000.0)
    }
}

/// When a chunk read at `now` leaves: after its delay, and never before the chunk ahead of it
/// (jitter or a lowered delay must not reorder a byte stream).
pub fn next_due(now: Instant, delay: Duration, last_due: Instant) -> Instant {
    (now + delay).max(last_due)
}

/// A small xorshift generator: jitter and loss need no more, and no seed has to replay.
pub struct Draws(u64);

impl Draws {
    pub fn new(seed: u64) -> Draws {
        Draws(seed | 1)
    }

    /// A draw in [0, 1).
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"table": {"10.213.1.1": [20, 20.5], "10.213.0.2": [0.1, 0.1]}}"#;

    #[test]
    fn parses_the_table_with_defaults() {
        let d = Delays::parse(ONE).unwrap();
        let far: Ipv4Addr = "10.213.1.1".parse().unwrap();
        assert_eq!(d.base_ms(far, Direction::Forward), 20.0);
        assert_eq!(d.base_ms(far, Direction::Back), 20.5);
        assert_eq!(d.base_ms("10.9.9.9".parse().unwrap(), Direction::Back), 0.0);
        assert_eq!(d.handshake(far), Duration::from_micros(40_500));
        assert_eq!((d.jitter_ms, d.loss, d.retransmit_ms), (0.0, 0.0, 200.0));
    }

    #[test]
    fn bad_tables_are_errors_naming_the_fault() {
        for (text, says) in [
            ("[]", "\"table\""),
            ("{", "not JSON"),
            (r#"{"table": {"host": [1, 1]}}"#, "not an IPv4"),
            (r#"{"table": {"10.0.0.1": [1]}}"#, "[forward_ms, back_ms]"),
            (r#"{"table": {"10.0.0.1": [-1, 1]}}"#, "0..=60000"),
            (r#"{"table": {}, "loss": 2}"#, "loss"),
            (r#"{"table": {}, "jitter_ms": "x"}"#, "jitter_ms"),
        ] {
            let err = Delays::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn jitter_and_loss_add_to_the_link_delay() {
        let mut d = Delays::parse(ONE).unwrap();
        let far: Ipv4Addr = "10.213.1.1".parse().unwrap();
        assert_eq!(
            d.chunk_delay(far, Direction::Forward, 0.9, 0.5),
            Duration::from_millis(20)
        );
        d.jitter_ms = 10.0;
        d.loss = 0.25;
        assert_eq!(
            d.chunk_delay(far, Direction::Forward, 0.5, 0.5),
            Duration::from_millis(25)
        );
        assert_eq!(
            d.chunk_delay(far, Direction::Forward, 0.0, 0.2),
            Duration::from_millis(220)
        );
    }

    #[test]
    fn a_chunk_never_leaves_before_the_one_ahead_of_it() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_due(now, ms(20), now), now + ms(20));
        assert_eq!(next_due(now, ms(1), now + ms(30)), now + ms(30));
    }

    #[test]
    fn draws_are_spread_over_zero_to_one() {
        let mut d = Draws::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| d.next()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.1).count();
        assert!((800..1200).contains(&below), "{below}");
    }
}
