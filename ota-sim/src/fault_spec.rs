//! Faults written as text, for `ota-sim serve --fault` and the `/status` page: every
//! [`Fault`] has a name, and a spec may name a device and how many times it applies.

use crate::faults::{Fault, Times};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The grammar, with an example per fault (shown by `ota-sim serve --help`).
pub const FAULT_GRAMMAR: &str = "\
Fault specs (--fault, repeatable): [DEVICE:]FAULT[@TIMES]
  DEVICE  a device name (dev0001, ...); without it the fault is set for every device
  TIMES   once (default), always, or a count: how many applicable responses it acts on
Firmware server (HTTP):
  cut:100000            close the connection after 100000 body bytes
  ignore-range          answer a ranged request with 200 and the whole file
  status:500            answer 500 (also 403, 404, any 400-599) with an OSS-like XML body
  expire:100000         the URL expires mid-download: cut after 100000 bytes, then answer
                        the next request 403 AccessDenied (the device needs a fresh URL)
  corrupt:4096          flip every bit of the file's byte at offset 4096
  stall:65536:5         after 65536 bytes send nothing for 5 seconds, then close
  rate:200000           send at most 200000 bytes per second
MQTT-channel block replies:
  drop-reply            send no reply
  delay-reply:1500      send the reply 1500 ms late
  duplicate-reply       send the reply twice
  reorder-reply         hold the reply back until after the next one
  corrupt-block         flip a data byte, keeping the CRC of the true data
  wrong-offset          announce bOffset one past the requested offset
Examples: --fault dev0002:cut:100000   --fault status:404@always   --fault drop-reply@3";

/// One `--fault` argument, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// The device name it is for; `None`: every device.
    pub device: Option<String>,
    /// The faults to set.
    pub faults: Vec<Fault>,
    /// How many responses each applies to.
    pub times: Times,
}

/// A fault name, and whether it takes 0, 1 or 2 numbers.
const NAMES: [(&str, usize); 13] = [
    ("cut", 1),
    ("ignore-range", 0),
    ("status", 1),
    ("expire", 1),
    ("corrupt", 1),
    ("stall", 2),
    ("rate", 1),
    ("drop-reply", 0),
    ("delay-reply", 1),
    ("duplicate-reply", 0),
    ("reorder-reply", 0),
    ("corrupt-block", 0),
    ("wrong-offset", 0),
];

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<FaultSpec, String> {
        let bad = |why: String| format!("bad --fault {text:?}: {why}");
        let (body, times) = match text.rsplit_once('@') {
            Some((body, t)) => (body, parse_times(t).map_err(bad)?),
            None => (text, Times::Once),
        };
        let mut parts: Vec<&str> = body.split(':').collect();
        let known = |p: &str| NAMES.iter().any(|(n, _)| *n == p);
        let device = match parts.first() {
            Some(first) if !known(first) && parts.len() > 1 => {
                if first.is_empty() {
                    return Err(bad("empty device name".into()));
                }
                Some(parts.remove(0).to_owned())
            }
            _ => None,
        };
        let name = parts.remove(0);
        let Some(&(_, arity)) = NAMES.iter().find(|(n, _)| *n == name) else {
            return Err(bad(format!("unknown fault {name:?}")));
        };
        if parts.len() != arity {
            return Err(bad(format!("{name} takes {arity} number(s)")));
        }
        let num = |i: usize| -> Result<u64, String> {
            parts[i]
                .parse::<u64>()
                .map_err(|_| bad(format!("{:?} is not a whole number", parts[i])))
        };
        let faults = match name {
            "cut" => vec![Fault::CutAfter(num(0)?)],
            "ignore-range" => vec![Fault::IgnoreRange],
            "status" => match num(0)? {
                code @ 400..=599 => vec![Fault::Status(code as u16)],
                code => return Err(bad(format!("status {code} is not 400-599"))),
            },
            "expire" => vec![Fault::ExpireAfter(num(0)?)],
            "corrupt" => vec![Fault::CorruptByte(num(0)?)],
            "stall" => vec![Fault::Stall {
                after: num(0)?,
                duration: seconds(parts[1]).map_err(bad)?,
            }],
            "rate" => match num(0)? {
                0 => return Err(bad("rate must be at least 1 byte per second".into())),
                r => vec![Fault::RateLimit(r)],
            },
            "drop-reply" => vec![Fault::DropReply],
            "delay-reply" => vec![Fault::DelayReply(Duration::from_millis(num(0)?))],
            "duplicate-reply" => vec![Fault::DuplicateReply],
            "reorder-reply" => vec![Fault::ReorderReply],
            "corrupt-block" => vec![Fault::CorruptBlock],
            _ => vec![Fault::WrongOffset],
        };
        Ok(FaultSpec {
            device,
            faults,
            times,
        })
    }
}

fn parse_times(t: &str) -> Result<Times, String> {
    match t {
        "once" => Ok(Times::Once),
        "always" => Ok(Times::Always),
        n => match n.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!("times {n:?} is not once, always or a count >= 1")),
            Ok(n) => Ok(Times::Count(n)),
        },
    }
}

/// Seconds, fractions allowed, at most a day.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a number of seconds (0 to 86400)")),
    }
}

/// The fault in the spec grammar, as `/status` shows it.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CutAfter(n) => write!(f, "cut:{n}"),
            Fault::ExpireAfter(n) => write!(f, "expire:{n}"),
            Fault::IgnoreRange => f.write_str("ignore-range"),
            Fault::Status(c) => write!(f, "status:{c}"),
            Fault::CorruptByte(k) => write!(f, "corrupt:{k}"),
            Fault::Stall { after, duration } => {
                write!(f, "stall:{after}:{}", duration.as_secs_f64())
            }
            Fault::RateLimit(r) => write!(f, "rate:{r}"),
            Fault::DropReply => f.write_str("drop-reply"),
            Fault::DelayReply(d) => write!(f, "delay-reply:{}", d.as_millis()),
            Fault::DuplicateReply => f.write_str("duplicate-reply"),
            Fault::ReorderReply => f.write_str("reorder-reply"),
            Fault::CorruptBlock => f.write_str("corrupt-block"),
            Fault::WrongOffset => f.write_str("wrong-offset"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_of_the_grammar_parses_and_prints_back() {
        let examples: Vec<&str> = FAULT_GRAMMAR
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| !w.chars().all(|c| c.is_ascii_uppercase()))
            .collect();
        assert_eq!(examples.len(), NAMES.len(), "{examples:?}");
        for e in examples {
            let spec: FaultSpec = e.parse().unwrap();
            assert_eq!((spec.device.as_ref(), spec.times), (None, Times::Once));
            assert_eq!(spec.faults[0].to_string(), e);
        }
    }

    #[test]
    fn devices_times_and_errors() {
        let s: FaultSpec = "dev0002:cut:100000@3".parse().unwrap();
        assert_eq!(s.device.as_deref(), Some("dev0002"));
        assert_eq!(
            (s.faults.as_slice(), s.times),
            (&[Fault::CutAfter(100000)][..], Times::Count(3))
        );
        let s: FaultSpec = "dev1:expire:10@always".parse().unwrap();
        assert_eq!(s.faults, [Fault::ExpireAfter(10)]);
        assert_eq!(s.times, Times::Always);
        for (bad, says) in [
            ("cut", "takes 1"),
            ("cut:x", "not a whole number"),
            ("dev1:bogus:1", "unknown fault"),
            ("status:200", "400-599"),
            ("rate:0", "at least 1"),
            ("stall:1:-1", "seconds"),
            ("drop-reply@0", "times"),
            (":cut:1", "empty device"),
            ("", "unknown fault"),
        ] {
            let err = bad.parse::<FaultSpec>().unwrap_err();
            assert!(err.contains(says) && !err.contains('\n'), "{bad}: {err}");
        }
    }
}
